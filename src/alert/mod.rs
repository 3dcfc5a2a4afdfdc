//! Alert rules and their state machine. Pure: fed snapshots and the time. How they behave is
//! in docs/alerts.md; their keys in docs/contract.md ("Alert rule keys").
//!
//! Each rule is evaluated per (campaign, channel) on its window's sums. An alert goes
//! inactive → pending (condition true) → firing (held for `for`) → resolved. Three things keep
//! it from paging people for nothing:
//!
//! - **volume guards** (`min_ad_spend`, `min_orders`, `min_visits`): a key whose window holds
//!   less is not evaluated, so a campaign with three orders cannot page anyone;
//! - **`for`**: the condition must hold that long;
//! - **hysteresis**: a firing alert resolves only once the value is past the threshold by a
//!   margin (ROAS < 2 resolves at ROAS ≥ 2.1 with the default 5 %), so a value hovering at
//!   the threshold does not flap. The guards of a firing alert get the same margin (spend ≥ 95
//!   instead of 100), so spend hovering at `min_ad_spend` does not flap it either.
//!
//! Drop rules compare the window with the preceding window of the same length: "ROAS fell by
//! 30 % hour over hour" fires when this hour's ROAS ≤ 0.7 × last hour's.
//!
//! The generated Prometheus rules (`crate::read::rules`) evaluate the same conditions on the
//! exported series, and `/metrics` has no series for a window without data. So here too a
//! window without data is not evaluated, rather than read as zero orders: otherwise
//! `orders < 1` would fire here for ever for every campaign that ended, and never in
//! Prometheus.

pub mod notify;
mod view;

pub use view::AlertView;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::config::AlertRuleConfig;
use crate::pure::condition::{Condition, Severity, drop_factors, without_noise};
use crate::pure::key::Key;
use crate::pure::kpi::{ClvAssumptions, Kpi, Sums};
use crate::pure::window::Windows;
use crate::state::store::Snapshot;

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kpi: Kpi,
    pub condition: Condition,
    /// Index into the configured windows.
    pub window: usize,
    pub window_label: Arc<str>,
    /// The window's length.
    pub window_ms: i64,
    pub for_ms: i64,
    pub severity: Severity,
    pub min_ad_spend: f64,
    pub min_orders: u64,
    pub min_visits: u64,
    pub hysteresis: f64,
}

impl Rule {
    /// The engine's form of a configured rule.
    pub fn from_config(c: &AlertRuleConfig, windows: &Windows) -> Rule {
        Rule {
            name: c.name.clone(),
            kpi: c.kpi,
            condition: c.condition,
            window: c.window,
            window_label: windows.specs()[c.window].label.clone(),
            window_ms: windows.specs()[c.window].length_ms,
            for_ms: c.for_.as_millis() as i64,
            severity: c.severity,
            min_ad_spend: c.min_ad_spend,
            min_orders: c.min_orders,
            min_visits: c.min_visits,
            hysteresis: c.hysteresis,
        }
    }

    /// The volume a window must hold for the rule to be evaluated on it. A firing alert's
    /// guards are relaxed by the hysteresis, like its threshold, so that spend wobbling around
    /// `min_ad_spend` does not resolve and re-fire it; an alert not firing yet needs the full
    /// amount, so a guard still means "enough volume to judge" before anyone is paged.
    pub fn guards(&self, firing: bool) -> Guards {
        let bar = |min: f64| {
            if firing {
                without_noise(min * (1.0 - self.hysteresis))
            } else {
                min
            }
        };
        Guards {
            ad_spend: bar(self.min_ad_spend),
            orders: bar(self.min_orders as f64),
            visits: bar(self.min_visits as f64),
        }
    }

    /// Evaluates the rule on one key's window (and preceding window, for drops). `firing`
    /// says whether the rule's alert for the key is firing now: it relaxes the guards.
    pub fn check(
        &self,
        current: &Sums,
        previous: &Sums,
        clv: &ClvAssumptions,
        firing: bool,
    ) -> Check {
        let drop = matches!(self.condition, Condition::Drop { .. });
        // An empty window has no series in /metrics, so the generated PromQL cannot fire on
        // it; reading it as zero orders here would fire `orders < 1` for ever once a
        // campaign ended.
        if current.is_empty() || (drop && previous.is_empty()) {
            return Check::NotEvaluated(Skip::NoData);
        }
        let guards = self.guards(firing);
        if !guards.pass(current) || (drop && !guards.pass(previous)) {
            return Check::NotEvaluated(Skip::Guard);
        }
        let Some(value) = self.kpi.of(current, &current.kpis(clv)) else {
            return Check::NotEvaluated(Skip::NoData);
        };
        match self.condition {
            Condition::Threshold { op, threshold } => Check::Value {
                value,
                threshold,
                breached: op.holds(value, threshold),
                holds: op.holds(value, op.resolve_at(threshold, self.hysteresis)),
            },
            Condition::Drop { fraction } => match self.kpi.of(previous, &previous.kpis(clv)) {
                Some(before) if before > 0.0 => {
                    let (enter, stay) = drop_factors(fraction, self.hysteresis);
                    let threshold = before * enter;
                    Check::Value {
                        value,
                        threshold,
                        breached: value <= threshold,
                        holds: value <= before * stay,
                    }
                }
                // Nothing to fall from (the PromQL asks for a positive preceding value too).
                _ => Check::NotEvaluated(Skip::NoData),
            },
        }
    }

    /// Human description of the condition, for annotations and logs.
    pub fn describe(&self) -> String {
        match self.condition {
            Condition::Threshold { op, threshold } => {
                format!(
                    "{} {} {} over {}",
                    self.kpi.name(),
                    op.symbol(),
                    threshold,
                    self.window_label
                )
            }
            Condition::Drop { fraction } => format!(
                "{} fell by {:.0} % or more against the preceding {}",
                self.kpi.name(),
                fraction * 100.0,
                self.window_label
            ),
        }
    }
}

/// The least volume a window must hold for a rule to be evaluated on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guards {
    pub ad_spend: f64,
    pub orders: f64,
    pub visits: f64,
}

impl Guards {
    fn pass(&self, s: &Sums) -> bool {
        s.ad_spend() >= self.ad_spend
            && s.orders as f64 >= self.orders
            && s.visits as f64 >= self.visits
    }
}

/// Why a rule was not evaluated on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The window (or, for a drop, the preceding one) is empty, or the KPI has no value
    /// there (a zero denominator): where PromQL has no series.
    NoData,
    /// A volume guard is not met.
    Guard,
}

/// Why an alert ended, sent with its resolution: a campaign that went quiet is not one that
/// recovered, and whoever was paged should not have to guess which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedReason {
    /// The condition no longer holds, hysteresis included.
    Recovered,
    /// A volume guard is no longer met: too little volume left to judge (a paused campaign's
    /// spend runs out of the window).
    Guard,
    /// No data to judge: the window emptied, the KPI lost its denominator, or the key left
    /// this instance (its partition moved).
    NoData,
    /// The window is not whole (it fills after a configuration change): a pending alert is
    /// not carried on partial numbers.
    Incomplete,
}

impl ResolvedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedReason::Recovered => "recovered",
            ResolvedReason::Guard => "guard",
            ResolvedReason::NoData => "no_data",
            ResolvedReason::Incomplete => "incomplete",
        }
    }
}

impl fmt::Display for ResolvedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Skip> for ResolvedReason {
    fn from(skip: Skip) -> ResolvedReason {
        match skip {
            Skip::NoData => ResolvedReason::NoData,
            Skip::Guard => ResolvedReason::Guard,
        }
    }
}

/// The result of evaluating a rule on one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// No data or guards not met: as if the condition were false.
    NotEvaluated(Skip),
    Value {
        value: f64,
        /// The value compared with (for drops: the preceding window's value × (1 − drop)).
        threshold: f64,
        /// The condition is true: an inactive alert becomes pending.
        breached: bool,
        /// The condition with hysteresis: a firing alert stays firing.
        holds: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        })
    }
}

/// A pending or firing alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: usize,
    pub name: String,
    pub severity: Severity,
    pub key: Key,
    pub window: Arc<str>,
    pub phase: Phase,
    pub value: f64,
    pub threshold: f64,
    /// When the condition started to hold (became pending).
    pub active_since_ms: i64,
    pub firing_since_ms: Option<i64>,
    /// Rule description, for annotations.
    pub condition: String,
}

/// A change of an alert's phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub at_ms: i64,
    /// The alert as of the transition (for `Resolved`, its last firing state).
    pub alert: Alert,
    /// Why it ended, for transitions to `Resolved` (and to `Inactive`, a pending alert that
    /// stopped); `None` for the others.
    pub resolved_reason: Option<ResolvedReason>,
}

/// The rules and the alerts they hold.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<Rule>,
    clv: ClvAssumptions,
    active: BTreeMap<(usize, Key), Alert>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, clv: ClvAssumptions) -> Engine {
        Engine {
            rules,
            clv,
            active: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Pending and firing alerts, by rule then key.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    /// Evaluates every rule on every key of `snapshot` at `now_ms`; returns the transitions.
    /// Alerts of keys no longer in the snapshot (their partitions moved away) end.
    pub fn evaluate(&mut self, snapshot: &Snapshot, now_ms: i64) -> Vec<Transition> {
        self.evaluate_complete(snapshot, now_ms, &|_, _| true)
    }

    /// As `evaluate`, for the rules whose window `complete(window, preceding)` says is whole
    /// (with its preceding window, for drop rules). A rule on a window that is still filling
    /// (after a configuration change it could not be rebuilt for) is not evaluated: nothing
    /// new is raised on partial numbers (a pending alert goes back to inactive, as it does in
    /// the generated Prometheus rules, whose `for` cannot pause), and a firing alert stays
    /// firing until its window is whole again and it can be judged.
    pub fn evaluate_complete(
        &mut self,
        snapshot: &Snapshot,
        now_ms: i64,
        complete: &dyn Fn(usize, bool) -> bool,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for (r, rule) in self.rules.iter().enumerate() {
            let drop = matches!(rule.condition, Condition::Drop { .. });
            if !complete(rule.window, drop) {
                let pending: Vec<(usize, Key)> = self
                    .active
                    .iter()
                    .filter(|((rr, _), a)| *rr == r && a.phase == Phase::Pending)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in pending {
                    let alert = self.active.remove(&id).expect("present");
                    transitions.push(end(alert, now_ms, ResolvedReason::Incomplete));
                }
                continue;
            }
            for (key, row) in &snapshot.rows {
                let id = (r, key.clone());
                let firing = self
                    .active
                    .get(&id)
                    .is_some_and(|a| a.phase == Phase::Firing);
                let check = rule.check(
                    &row.windows[rule.window],
                    &row.previous[rule.window],
                    &self.clv,
                    firing,
                );
                match (self.active.get_mut(&id), check) {
                    (
                        None,
                        Check::Value {
                            value,
                            threshold,
                            breached: true,
                            ..
                        },
                    ) => {
                        let firing = rule.for_ms == 0;
                        let alert = Alert {
                            rule: r,
                            name: rule.name.clone(),
                            severity: rule.severity,
                            key: key.clone(),
                            window: rule.window_label.clone(),
                            phase: if firing {
                                Phase::Firing
                            } else {
                                Phase::Pending
                            },
                            value,
                            threshold,
                            active_since_ms: now_ms,
                            firing_since_ms: firing.then_some(now_ms),
                            condition: rule.describe(),
                        };
                        transitions.push(Transition {
                            from: Phase::Inactive,
                            to: alert.phase,
                            at_ms: now_ms,
                            alert: alert.clone(),
                            resolved_reason: None,
                        });
                        self.active.insert(id, alert);
                    }
                    (None, _) => {}
                    (
                        Some(alert),
                        Check::Value {
                            value,
                            threshold,
                            breached: true,
                            ..
                        },
                    ) if alert.phase == Phase::Pending => {
                        alert.value = value;
                        alert.threshold = threshold;
                        if now_ms - alert.active_since_ms >= rule.for_ms {
                            alert.phase = Phase::Firing;
                            alert.firing_since_ms = Some(now_ms);
                            transitions.push(Transition {
                                from: Phase::Pending,
                                to: Phase::Firing,
                                at_ms: now_ms,
                                alert: alert.clone(),
                                resolved_reason: None,
                            });
                        }
                    }
                    (
                        Some(alert),
                        Check::Value {
                            value,
                            threshold,
                            holds: true,
                            ..
                        },
                    ) if alert.phase == Phase::Firing => {
                        alert.value = value;
                        alert.threshold = threshold;
                    }
                    (Some(_), check) => {
                        let reason = match check {
                            Check::NotEvaluated(skip) => skip.into(),
                            Check::Value { .. } => ResolvedReason::Recovered,
                        };
                        let alert = self.active.remove(&id).expect("present");
                        transitions.push(end(alert, now_ms, reason));
                    }
                }
            }
        }
        // Keys that left (partition revoked, or no longer in any window's data).
        let rules = &self.rules;
        let gone: Vec<(usize, Key)> = self
            .active
            .keys()
            .filter(|(r, key)| {
                let drop = matches!(rules[*r].condition, Condition::Drop { .. });
                !snapshot.rows.contains_key(key) && complete(rules[*r].window, drop)
            })
            .cloned()
            .collect();
        for id in gone {
            let alert = self.active.remove(&id).expect("present");
            transitions.push(end(alert, now_ms, ResolvedReason::NoData));
        }
        transitions
    }
}

/// The transition that ends an alert: pending → inactive, firing → resolved.
fn end(alert: Alert, now_ms: i64, reason: ResolvedReason) -> Transition {
    let to = if alert.phase == Phase::Firing {
        Phase::Resolved
    } else {
        Phase::Inactive
    };
    Transition {
        from: alert.phase,
        to,
        at_ms: now_ms,
        alert,
        resolved_reason: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pure::condition::Op;
    use crate::state::store::Row;
    use std::time::Duration;

    const T0: i64 = 1_795_334_400_000;
    const MIN: i64 = 60_000;
    const CLV: ClvAssumptions = ClvAssumptions {
        purchases_per_year: 4.0,
        lifetime_years: 3.0,
    };

    fn windows() -> Windows {
        Windows::with_previous(&["5m", "1h"], 60, &["1h"])
    }

    fn rule(toml: &str) -> Rule {
        let config = Config::from_toml(&format!(
            "[windows]\nlengths = [\"5m\", \"1h\"]\n\n[[alerts]]\n{toml}"
        ))
        .unwrap();
        Rule::from_config(&config.alerts[0], &windows())
    }

    fn roas_below(threshold: f64, for_: &str, guard: f64) -> Rule {
        rule(&format!(
            "name = \"RoasBelow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = {threshold}\nwindow = \"1h\"\nfor = \"{for_}\"\nseverity = \"warning\"\nmin_ad_spend = {guard}\n"
        ))
    }

    fn money(units: f64) -> u128 {
        (units * 1e6) as u128
    }

    /// A snapshot with one key whose 1h window has this GMV and spend (and the previous hour).
    fn snap(gmv: f64, spend: f64, prev: Option<(f64, f64)>) -> Snapshot {
        let mut row = Row::new(2);
        row.windows[1] = Sums {
            orders: 10,
            gmv_micros: money(gmv),
            ad_spend_micros: money(spend),
            ..Sums::default()
        };
        if let Some((g, s)) = prev {
            row.previous[1] = Sums {
                orders: 10,
                gmv_micros: money(g),
                ad_spend_micros: money(s),
                ..Sums::default()
            };
        }
        let mut snapshot = Snapshot::default();
        snapshot.rows.insert(Key::new("spring", "social"), row);
        snapshot
    }

    fn phases(t: &[Transition]) -> Vec<(Phase, Phase)> {
        t.iter().map(|t| (t.from, t.to)).collect()
    }

    /// While a rule's window is not whole, nothing new is raised (a pending alert goes back
    /// to inactive) and a firing alert stays firing; judging resumes once it is whole.
    #[test]
    fn an_incomplete_window_raises_nothing_and_resolves_nothing() {
        let mut e = Engine::new(
            vec![roas_below(2.0, "0s", 100.0), roas_below(1.0, "5m", 100.0)],
            CLV,
        );
        let whole = |_: usize, _: bool| true;
        let filling = |_: usize, _: bool| false;
        // ROAS 0.5: the first rule fires at once, the second is pending.
        let bad = snap(100.0, 200.0, None);
        let t = e.evaluate_complete(&bad, T0, &whole);
        assert_eq!(
            phases(&t),
            [
                (Phase::Inactive, Phase::Firing),
                (Phase::Inactive, Phase::Pending)
            ]
        );
        // The window stops being whole: the pending alert ends, the firing one stays, even
        // on numbers that would resolve it.
        let good = snap(600.0, 200.0, None);
        let t = e.evaluate_complete(&good, T0 + MIN, &filling);
        assert_eq!(phases(&t), [(Phase::Pending, Phase::Inactive)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::Incomplete));
        assert_eq!(
            phases(&e.evaluate_complete(&bad, T0 + 10 * MIN, &filling)),
            []
        );
        assert_eq!(e.active().count(), 1);
        assert_eq!(e.active().next().unwrap().phase, Phase::Firing);
        // Whole again: judged, resolved.
        let t = e.evaluate_complete(&good, T0 + 11 * MIN, &whole);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let mut e = Engine::new(vec![roas_below(2.0, "5m", 100.0)], CLV);
        assert_eq!(phases(&e.evaluate(&snap(400.0, 100.0, None), T0)), []);
        // ROAS 1.5: pending at once, firing five minutes later.
        let t = e.evaluate(&snap(300.0, 200.0, None), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Inactive, Phase::Pending)]);
        assert_eq!(t[0].alert.value, 1.5);
        assert_eq!(t[0].alert.threshold, 2.0);
        assert_eq!(
            phases(&e.evaluate(&snap(300.0, 200.0, None), T0 + 5 * MIN)),
            []
        );
        let t = e.evaluate(&snap(300.0, 200.0, None), T0 + 6 * MIN);
        assert_eq!(phases(&t), [(Phase::Pending, Phase::Firing)]);
        assert_eq!(t[0].alert.active_since_ms, T0 + MIN);
        assert_eq!(t[0].alert.firing_since_ms, Some(T0 + 6 * MIN));
        assert_eq!(e.active().count(), 1);
        // Back to ROAS 3: resolved.
        let t = e.evaluate(&snap(600.0, 200.0, None), T0 + 7 * MIN);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
        assert_eq!(e.active().count(), 0);
    }

    #[test]
    fn a_pending_alert_that_stops_holding_goes_back_to_inactive() {
        let mut e = Engine::new(vec![roas_below(2.0, "5m", 0.0)], CLV);
        e.evaluate(&snap(300.0, 200.0, None), T0);
        let t = e.evaluate(&snap(500.0, 200.0, None), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Pending, Phase::Inactive)]);
        // And starts counting `for` from scratch next time.
        e.evaluate(&snap(300.0, 200.0, None), T0 + 2 * MIN);
        assert_eq!(
            phases(&e.evaluate(&snap(300.0, 200.0, None), T0 + 6 * MIN)),
            []
        );
        assert_eq!(
            phases(&e.evaluate(&snap(300.0, 200.0, None), T0 + 7 * MIN)),
            [(Phase::Pending, Phase::Firing)]
        );
    }

    #[test]
    fn zero_for_fires_at_once() {
        let mut e = Engine::new(vec![roas_below(2.0, "0s", 0.0)], CLV);
        assert_eq!(
            phases(&e.evaluate(&snap(300.0, 200.0, None), T0)),
            [(Phase::Inactive, Phase::Firing)]
        );
    }

    #[test]
    fn hysteresis_keeps_a_firing_alert_until_clearly_recovered() {
        let mut e = Engine::new(vec![roas_below(2.0, "0s", 0.0)], CLV);
        e.evaluate(&snap(390.0, 200.0, None), T0); // 1.95: fires
        // 2.05 is above the threshold but within 5 %: still firing.
        assert_eq!(phases(&e.evaluate(&snap(410.0, 200.0, None), T0 + MIN)), []);
        assert_eq!(e.active().next().unwrap().value, 2.05);
        // 2.1 is 5 % above: resolved.
        assert_eq!(
            phases(&e.evaluate(&snap(420.0, 200.0, None), T0 + 2 * MIN)),
            [(Phase::Firing, Phase::Resolved)]
        );
        // Hovering just below/above the threshold without hysteresis would flap; with it,
        // one firing and one resolution for a value oscillating 1.99 <-> 2.02.
        let mut flaps = 0;
        for i in 0..20 {
            let gmv = if i % 2 == 0 { 398.0 } else { 404.0 };
            flaps += e
                .evaluate(&snap(gmv, 200.0, None), T0 + (3 + i) * MIN)
                .len();
        }
        assert_eq!(flaps, 1, "fires once and stays firing");
    }

    #[test]
    fn volume_guards_keep_small_campaigns_quiet() {
        let mut e = Engine::new(vec![roas_below(2.0, "0s", 100.0)], CLV);
        // ROAS 0.5 on 50 of spend: below the guard, not evaluated.
        assert_eq!(phases(&e.evaluate(&snap(25.0, 50.0, None), T0)), []);
        let orders = rule(
            "name = \"R\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"info\"\nmin_orders = 11\n",
        );
        let mut e = Engine::new(vec![orders], CLV);
        assert_eq!(phases(&e.evaluate(&snap(100.0, 500.0, None), T0)), []);
        // A firing alert whose guard stops passing (spend paused) resolves, saying why.
        let mut e = Engine::new(vec![roas_below(2.0, "0s", 100.0)], CLV);
        e.evaluate(&snap(100.0, 200.0, None), T0);
        let t = e.evaluate(&snap(10.0, 20.0, None), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::Guard));
    }

    #[test]
    fn guards_have_the_hysteresis_of_the_threshold() {
        // ROAS 1.5 throughout; only the spend moves around the guard of 100.
        let at_spend = |spend: f64| snap(1.5 * spend, spend, None);
        let mut e = Engine::new(vec![roas_below(2.0, "0s", 100.0)], CLV);
        assert_eq!(
            phases(&e.evaluate(&at_spend(100.0), T0)),
            [(Phase::Inactive, Phase::Firing)]
        );
        // Spend wobbling between 96 and 101 (above the relaxed guard, 95): fired once, stays
        // firing, and keeps its value up to date.
        for i in 1..20 {
            let spend = if i % 2 == 0 { 101.0 } else { 96.0 };
            assert_eq!(phases(&e.evaluate(&at_spend(spend), T0 + i * MIN)), []);
        }
        assert_eq!(e.active().next().unwrap().phase, Phase::Firing);
        // Exactly at the relaxed guard still counts; below it the alert resolves, saying so.
        assert_eq!(e.rules()[0].guards(true).ad_spend, 95.0);
        assert_eq!(phases(&e.evaluate(&at_spend(95.0), T0 + 20 * MIN)), []);
        let t = e.evaluate(&at_spend(94.0), T0 + 21 * MIN);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::Guard));
        assert_eq!(t[0].alert.value, 1.5);
        // An alert that is not firing needs the full guard: 96 does not start one ...
        assert_eq!(phases(&e.evaluate(&at_spend(96.0), T0 + 22 * MIN)), []);
        // ... and a pending one goes back to inactive below it, as before it had fired.
        let mut e = Engine::new(vec![roas_below(2.0, "5m", 100.0)], CLV);
        assert_eq!(
            phases(&e.evaluate(&at_spend(100.0), T0)),
            [(Phase::Inactive, Phase::Pending)]
        );
        let t = e.evaluate(&at_spend(96.0), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Pending, Phase::Inactive)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::Guard));
    }

    #[test]
    fn relaxed_count_guards_are_whole_numbers_where_they_should_be() {
        let r = rule(
            "name = \"R\"\nkpi = \"clv_cac\"\nop = \"<\"\nthreshold = 3.0\nwindow = \"1h\"\nseverity = \"info\"\nmin_orders = 20\nmin_visits = 7\nmin_ad_spend = 500.0\n",
        );
        let relaxed = r.guards(true);
        assert_eq!(
            (relaxed.ad_spend, relaxed.orders, relaxed.visits),
            (475.0, 19.0, 6.65)
        );
        let full = r.guards(false);
        assert_eq!(
            (full.ad_spend, full.orders, full.visits),
            (500.0, 20.0, 7.0)
        );
    }

    #[test]
    fn bars_are_the_numbers_the_promql_prints() {
        let cvr = rule(
            "name = \"CvrLow\"\nkpi = \"cvr\"\nop = \"<\"\nthreshold = 0.1\nwindow = \"1h\"\nseverity = \"info\"\n",
        );
        let mut e = Engine::new(vec![cvr], CLV);
        let at = |orders: u64| {
            let mut row = Row::new(2);
            row.windows[1] = Sums {
                visits: 200,
                orders,
                ..Sums::default()
            };
            let mut snapshot = Snapshot::default();
            snapshot.rows.insert(Key::new("spring", "social"), row);
            snapshot
        };
        assert_eq!(
            phases(&e.evaluate(&at(10), T0)),
            [(Phase::Inactive, Phase::Firing)]
        );
        // 21 / 200 is 0.105, which the PromQL compares with `< 0.105`: resolved in both
        // (0.1 + 0.1 x 0.05 would be 0.10500000000000001, and kept it firing here).
        assert_eq!(Op::Lt.resolve_at(0.1, 0.05), 0.105);
        let t = e.evaluate(&at(21), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::Recovered));
        assert_eq!(drop_factors(0.3, 0.05), (0.7, 0.715));
    }

    /// `orders < 1` over the 5m window.
    fn no_orders() -> Rule {
        rule(
            "name = \"NoOrders\"\nkpi = \"orders\"\nop = \"<\"\nthreshold = 1.0\nwindow = \"5m\"\nseverity = \"warning\"\n",
        )
    }

    /// One key whose 5m window holds these sums.
    fn snap_5m(sums: Sums) -> Snapshot {
        let mut row = Row::new(2);
        row.windows[0] = sums;
        // The longer window still remembers the campaign: the key stays in the snapshot.
        row.windows[1] = Sums {
            visits: 500,
            ..Sums::default()
        };
        let mut snapshot = Snapshot::default();
        snapshot.rows.insert(Key::new("ended", "email"), row);
        snapshot
    }

    #[test]
    fn an_empty_window_is_not_evaluated_as_in_promql() {
        let mut e = Engine::new(vec![no_orders()], CLV);
        // Visits but no orders: /metrics exports `ecom_orders 0`, so both paths fire.
        let visits_only = Sums {
            visits: 50,
            ..Sums::default()
        };
        let t = e.evaluate(&snap_5m(visits_only), T0);
        assert_eq!(phases(&t), [(Phase::Inactive, Phase::Firing)]);
        assert_eq!(t[0].alert.value, 0.0);
        // The campaign ended and its 5m window emptied: no series in /metrics, no alert.
        let t = e.evaluate(&snap_5m(Sums::default()), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::NoData));
        for i in 2..10 {
            assert_eq!(
                phases(&e.evaluate(&snap_5m(Sums::default()), T0 + i * MIN)),
                [],
                "an empty window never fires"
            );
        }
        // Nor does it start a drop rule that had a preceding window.
        let drop = rule(
            "name = \"OrdersDrop\"\nkpi = \"orders\"\ndrop = 0.5\nwindow = \"1h\"\nseverity = \"warning\"\n",
        );
        assert_eq!(
            drop.check(
                &Sums::default(),
                &Sums {
                    orders: 40,
                    ..Sums::default()
                },
                &CLV,
                false
            ),
            Check::NotEvaluated(Skip::NoData)
        );
        assert_eq!(
            drop.check(
                &Sums {
                    visits: 3,
                    ..Sums::default()
                },
                &Sums {
                    orders: 40,
                    ..Sums::default()
                },
                &CLV,
                false
            ),
            Check::Value {
                value: 0.0,
                threshold: 20.0,
                breached: true,
                holds: true
            },
            "a window with data and no orders did drop"
        );
        // A ratio without its denominator has no value either.
        assert_eq!(
            roas_below(2.0, "0s", 0.0).check(
                &Sums {
                    orders: 3,
                    gmv_micros: money(30.0),
                    ..Sums::default()
                },
                &Sums::default(),
                &CLV,
                false
            ),
            Check::NotEvaluated(Skip::NoData)
        );
    }

    #[test]
    fn a_recovery_says_so() {
        let mut e = Engine::new(vec![roas_below(2.0, "0s", 100.0)], CLV);
        e.evaluate(&snap(300.0, 200.0, None), T0);
        let t = e.evaluate(&snap(600.0, 200.0, None), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Firing, Phase::Resolved)]);
        assert_eq!(t[0].resolved_reason, Some(ResolvedReason::Recovered));
        // Transitions that start or escalate an alert carry no reason.
        let t = e.evaluate(&snap(300.0, 200.0, None), T0 + 2 * MIN);
        assert_eq!(t[0].resolved_reason, None);
    }

    #[test]
    fn drop_rules_compare_with_the_preceding_window() {
        let drop = rule(
            "name = \"RoasDrop\"\nkpi = \"roas\"\ndrop = 0.3\nwindow = \"1h\"\nseverity = \"warning\"\nmin_ad_spend = 100.0\n",
        );
        let mut e = Engine::new(vec![drop], CLV);
        // Last hour ROAS 4, this hour 3: a 25 % drop, no alert.
        assert_eq!(
            phases(&e.evaluate(&snap(600.0, 200.0, Some((800.0, 200.0))), T0)),
            []
        );
        // This hour 2.8: a 30 % drop, fires (threshold 4 x 0.7 = 2.8).
        let t = e.evaluate(&snap(560.0, 200.0, Some((800.0, 200.0))), T0 + MIN);
        assert_eq!(phases(&t), [(Phase::Inactive, Phase::Firing)]);
        assert!((t[0].alert.threshold - 2.8).abs() < 1e-12);
        // Back to a 29 % drop (2.84): still firing; with 5 % hysteresis it resolves once the
        // drop is under 28.5 % (above 2.86).
        assert_eq!(
            phases(&e.evaluate(&snap(568.0, 200.0, Some((800.0, 200.0))), T0 + 2 * MIN)),
            []
        );
        assert_eq!(
            phases(&e.evaluate(&snap(600.0, 200.0, Some((800.0, 200.0))), T0 + 3 * MIN)),
            [(Phase::Firing, Phase::Resolved)]
        );
        // No previous hour (or below its guard): not evaluated.
        assert_eq!(
            phases(&e.evaluate(&snap(100.0, 200.0, None), T0 + 4 * MIN)),
            []
        );
        assert_eq!(
            phases(&e.evaluate(&snap(100.0, 200.0, Some((80.0, 20.0))), T0 + 5 * MIN)),
            []
        );
    }

    #[test]
    fn alerts_of_keys_that_left_end() {
        let mut e = Engine::new(
            vec![roas_below(2.0, "0s", 0.0), roas_below(3.0, "5m", 0.0)],
            CLV,
        );
        e.evaluate(&snap(300.0, 200.0, None), T0);
        assert_eq!(e.active().count(), 2);
        let t = e.evaluate(&Snapshot::default(), T0 + MIN);
        let mut p = phases(&t);
        p.sort();
        assert_eq!(
            p,
            [
                (Phase::Pending, Phase::Inactive),
                (Phase::Firing, Phase::Resolved)
            ]
        );
        assert!(
            t.iter()
                .all(|t| t.resolved_reason == Some(ResolvedReason::NoData))
        );
    }

    #[test]
    fn every_kpi_is_readable_and_named() {
        let s = Sums {
            visits: 100,
            orders: 10,
            new_customers: 5,
            gmv_micros: money(500.0),
            ad_spend_micros: money(100.0),
        };
        let k = s.kpis(&CLV);
        for kpi in Kpi::ALL {
            assert_eq!(Kpi::parse(kpi.name()), Some(kpi));
            assert!(kpi.of(&s, &k).is_some(), "{}", kpi.name());
        }
        assert_eq!(Kpi::Roas.of(&s, &k), Some(5.0));
        assert_eq!(Kpi::ClvCac.of(&s, &k), Some(600.0 / 20.0));
        let _ = Duration::ZERO;
    }
}

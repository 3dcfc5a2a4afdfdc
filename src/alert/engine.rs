//! The alerts' state machine: inactive → pending → firing → resolved per rule and key, fed
//! snapshots and the time, and the transitions it reports.

use crate::pure::condition::{Condition, Severity};
use crate::pure::key::Key;
use crate::pure::kpi::ClvAssumptions;
use crate::state::store::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::rule::{Check, Rule, Skip};

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

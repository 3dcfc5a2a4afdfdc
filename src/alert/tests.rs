//! Tests of the rules and the engine: conditions, guards, hysteresis, `for`, drops, and
//! windows without data.

use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::pure::condition::{Op, drop_factors};
use crate::pure::key::Key;
use crate::pure::kpi::{ClvAssumptions, Kpi, Sums};
use crate::pure::window::Windows;
use crate::state::store::{Row, Snapshot};

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

//! Tests of the per-message step, the partition state and the store together.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::pure::decode::{Decoder, Reason};
use crate::pure::key::Key;
use crate::pure::key_state::*;
use crate::pure::kpi::Sums;
use crate::pure::limits::*;
use crate::pure::partition::*;
use crate::pure::pipeline::*;
use crate::pure::window::Windows;
use crate::state::store::*;

const T0: i64 = 1_763_798_400_000;
const MIN: i64 = 60_000;

fn pipeline() -> Pipeline {
    Pipeline {
        decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
        windows: Windows::from_labels(&["5m", "1h", "24h"], 60),
        max_future_skew_ms: MIN,
        dedup_horizon_ms: 15 * MIN,
        dedup_max_ids: 100_000,
        limits: Default::default(),
    }
}

/// The test pipeline, with the hour window's predecessor kept.
fn pipeline_keeping_the_hour_before() -> Pipeline {
    Pipeline {
        windows: Windows::with_previous(&["5m", "1h", "24h"], 60, &["1h"]),
        ..pipeline()
    }
}

fn visit(id: &str, ts: i64, campaign: &str) -> String {
    format!(
        r#"{{"type":"visit","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"email"}}"#
    )
}

/// Saved counters without a series (no build writes that, but a restore must not trust
/// the bytes) get empty rings of their own; the other keys' rings are kept.
#[test]
fn counters_saved_without_a_series_get_rings_of_their_own() {
    let p = pipeline();
    let mut st = p.new_partition();
    for i in 0..10 {
        p.process(&mut st, visit(&format!("v{i}"), T0, "a").as_bytes(), T0, T0);
    }
    let saved = SavedKeyRef {
        visits: &None,
        orders: &None,
        ad_spend: &None,
        totals: Sums {
            visits: 5,
            ..Sums::default()
        },
    };
    let ghost: KeyState = postcard::from_bytes(&postcard::to_stdvec(&saved).unwrap()).unwrap();
    st.keys.insert(Key::new("ghost", "email"), ghost);
    let layout = SavedLayout::Rings(p.windows.layout());
    assert!(st.reconfigure(&p, &layout, T0).kept_all());
    let (a, ghost) = (
        &st.keys[&Key::new("a", "email")],
        &st.keys[&Key::new("ghost", "email")],
    );
    assert_eq!(a.window_sums(&p.windows, 0, T0).visits, 10);
    assert_eq!(ghost.totals().visits, 5);
    assert_eq!(ghost.window_sums(&p.windows, 2, T0), Sums::default());
    // And it counts from there.
    let st_ghost = st.keys.get_mut(&Key::new("ghost", "email")).unwrap();
    let json = visit("g", T0, "ghost");
    let event = p.decoder.decode(json.as_bytes(), T0).unwrap();
    st_ghost.add(&p.windows, &event, T0, T0);
    assert_eq!(st_ghost.totals().visits, 6);
    assert_eq!(st_ghost.window_sums(&p.windows, 0, T0).visits, 1);
}

fn order(id: &str, ts: i64, campaign: &str, amount: &str, new: bool) -> String {
    format!(
        r#"{{"type":"order","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"email","amount":{amount},"new_customer":{new}}}"#
    )
}

fn spend(id: &str, ts: i64, campaign: &str, amount: &str) -> String {
    format!(
        r#"{{"type":"ad_spend","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"email","amount":{amount}}}"#
    )
}

#[test]
fn windows_and_totals_accumulate_per_key() {
    let p = pipeline();
    let mut st = p.new_partition();
    let msgs = [
        visit("v1", T0, "a"),
        visit("v2", T0 - 10 * MIN, "a"),
        order("o1", T0, "a", "40", true),
        order("o2", T0 - 2 * 60 * MIN, "a", "\"10.5\"", false),
        spend("s1", T0, "a", "20"),
        visit("v3", T0, "b"),
    ];
    for m in &msgs {
        assert!(
            matches!(
                p.process(&mut st, m.as_bytes(), T0, T0),
                Outcome::Accepted { .. }
            ),
            "{m}"
        );
    }
    let store = Store::default();
    let tp = TopicPartition::new("t", 0);
    *store.get_or_insert(&tp, || p.new_partition()).write() = st;
    let snap = store.snapshot(&p.windows, T0);
    let a = &snap.rows[&Key::new("a", "email")];
    assert_eq!(
        a.windows[0],
        Sums {
            visits: 1,
            orders: 1,
            new_customers: 1,
            gmv_micros: 40_000_000,
            ad_spend_micros: 20_000_000
        }
    );
    assert_eq!(a.windows[1].visits, 2);
    assert_eq!(a.windows[1].orders, 1);
    assert_eq!(a.windows[2].orders, 2);
    assert_eq!(a.windows[2].gmv_micros, 50_500_000);
    assert_eq!(a.totals, a.windows[2]);
    assert_eq!(snap.rows[&Key::new("b", "email")].totals.visits, 1);
}

/// The snapshot reads a partition's keys a few at a time (their series first, then
/// their sums): every key of every partition must come out once, with its own sums and
/// preceding windows, whatever the key counts are against that group size, and whether
/// a key's row is made by the first partition read or a later one.
#[test]
fn a_snapshot_reads_every_key_of_every_partition() {
    let p = pipeline_keeping_the_hour_before();
    let store = Store::default();
    let send = |partition: i32, id: String, ts: i64, k: usize| {
        let state = store.get_or_insert(&TopicPartition::new("t", partition), || p.new_partition());
        let m = visit(&id, ts, &format!("c{k:02}"));
        assert!(matches!(
            p.process(&mut state.write(), m.as_bytes(), ts, T0),
            Outcome::Accepted { .. }
        ));
    };
    // Partition 0: keys 0..=20, key k with k + 1 visits now. Partition 1: keys 14..=33
    // (seven shared, thirteen of its own), one visit now and one 90 minutes ago, which
    // is in the hour before the last one.
    for k in 0..=20 {
        for n in 0..=k {
            send(0, format!("0-{k}-{n}"), T0, k);
        }
    }
    for k in 14..=33 {
        send(1, format!("1-{k}-now"), T0, k);
        send(1, format!("1-{k}-old"), T0 - 90 * MIN, k);
    }
    let snap = store.snapshot(&p.windows, T0);
    assert_eq!(snap.rows.len(), 34);
    for k in 0..=33 {
        let row = &snap.rows[&Key::new(&format!("c{k:02}"), "email")];
        let (first, second) = (if k <= 20 { k as u64 + 1 } else { 0 }, u64::from(k >= 14));
        let visits = |sums: &[Sums]| sums.iter().map(|s| s.visits).collect::<Vec<_>>();
        assert_eq!(
            visits(&row.windows),
            [first + second, first + second, first + 2 * second],
            "key {k}"
        );
        assert_eq!(visits(&row.previous), [0, second, 0], "key {k}");
        assert_eq!(row.totals.visits, first + 2 * second, "key {k}");
    }
}

#[test]
fn duplicates_count_once() {
    let p = pipeline();
    let mut st = p.new_partition();
    let m = order("o1", T0, "a", "40", true);
    assert!(matches!(
        p.process(&mut st, m.as_bytes(), T0, T0),
        Outcome::Accepted { .. }
    ));
    assert_eq!(
        p.process(&mut st, m.as_bytes(), T0, T0 + MIN),
        Outcome::Duplicate
    );
    assert_eq!(st.keys().next().unwrap().1.totals().orders, 1);
}

#[test]
fn too_late_and_too_early_are_rejected_without_effect() {
    let p = pipeline();
    let mut st = p.new_partition();
    let old = visit("old", T0 - 24 * 60 * MIN, "a");
    let future = visit("future", T0 + 2 * MIN, "a");
    let skewed = visit("skewed", T0 + 30_000, "a");
    let reason = |o: Outcome| match o {
        Outcome::Rejected(r) => Some(r.reason),
        _ => None,
    };
    assert_eq!(
        reason(p.process(&mut st, old.as_bytes(), T0, T0)),
        Some(Reason::TooLate)
    );
    assert_eq!(
        reason(p.process(&mut st, future.as_bytes(), T0, T0)),
        Some(Reason::TooEarly)
    );
    assert_eq!(st.keys().count(), 0);
    // Within the skew: accepted and counted now, in the 5m window at once.
    assert!(matches!(
        p.process(&mut st, skewed.as_bytes(), T0, T0),
        Outcome::Accepted { .. }
    ));
    let (_, ks) = st.keys().next().unwrap();
    assert_eq!(ks.window_sums(&p.windows, 0, T0).visits, 1);
}

/// The longest window starts at its oldest bucket, up to one bucket width (24 min for
/// 24h) later than `now - 24h`: an event between the two is in no window, so it is
/// `too_late` rather than counted in the counters alone.
#[test]
fn too_late_means_in_no_window() {
    let p = pipeline();
    let mut st = p.new_partition();
    let now = T0 + 30_000; // T0 starts a 24-minute bucket
    let start = T0 - 59 * 24 * MIN; // the 24h window's oldest bucket at `now`
    let before = visit("before", start - 1, "a");
    let reason = |o: Outcome| match o {
        Outcome::Rejected(r) => Some(r.reason),
        _ => None,
    };
    assert!(
        start - 1 > now - 24 * 60 * MIN,
        "newer than the window length"
    );
    assert_eq!(
        reason(p.process(&mut st, before.as_bytes(), now, now)),
        Some(Reason::TooLate)
    );
    let first = visit("first", start, "a");
    assert!(matches!(
        p.process(&mut st, first.as_bytes(), now, now),
        Outcome::Accepted { late: 0b011, .. }
    ));
    let (_, ks) = st.keys().next().unwrap();
    assert_eq!(ks.totals().visits, 1);
    assert_eq!(ks.window_sums(&p.windows, 2, now).visits, 1);
}

/// An amount that would saturate a window bucket is refused, so a window never holds
/// less than the counter says; its id stays free.
#[test]
fn a_bucket_never_saturates_while_the_counter_goes_on() {
    let p = pipeline();
    let mut st = p.new_partition();
    let big = |id: &str, ts: i64| order(id, ts, "a", "1e12", false);
    // 10^12 units is 10^18 micro-units: eighteen fill a bucket's u64 (1.8·10^19) ...
    for i in 0..18 {
        let m = big(&format!("o{i}"), T0);
        assert!(matches!(
            p.process(&mut st, m.as_bytes(), T0, T0),
            Outcome::Accepted { .. }
        ));
    }
    // ... and a nineteenth would overflow it.
    let reason = |o: Outcome| match o {
        Outcome::Rejected(r) => Some(r.reason),
        _ => None,
    };
    let m = big("o18", T0);
    assert_eq!(
        reason(p.process(&mut st, m.as_bytes(), T0, T0)),
        Some(Reason::InvalidValue)
    );
    let (_, ks) = st.keys().next().unwrap();
    assert_eq!(ks.totals().orders, 18);
    for w in 0..3 {
        assert_eq!(ks.window_sums(&p.windows, w, T0), ks.totals(), "window {w}");
    }
    // A small order still fits, and the refused id was not remembered: in the next
    // 24-minute bucket (all fresh) it counts.
    let small = order("small", T0, "a", "1", false);
    assert!(matches!(
        p.process(&mut st, small.as_bytes(), T0, T0),
        Outcome::Accepted { .. }
    ));
    let later = T0 + 24 * MIN;
    let m = big("o18", later);
    assert!(matches!(
        p.process(&mut st, m.as_bytes(), later, later),
        Outcome::Accepted { .. }
    ));
    let (_, ks) = st.keys().next().unwrap();
    assert_eq!(ks.totals().orders, 20);
    assert_eq!(ks.window_sums(&p.windows, 2, later), ks.totals());
}

#[test]
fn late_events_are_flagged_per_window_and_move_no_watermark_back() {
    let p = pipeline();
    let mut st = p.new_partition();
    assert_eq!(st.watermark_ms(), None);
    let on_time = visit("a", T0, "x");
    let late_for_5m = visit("b", T0 - 10 * MIN, "x");
    let late_for_1h = visit("c", T0 - 2 * 60 * MIN, "x");
    let late = |o: Outcome| match o {
        Outcome::Accepted { late, .. } => late,
        other => panic!("{other:?}"),
    };
    assert_eq!(late(p.process(&mut st, on_time.as_bytes(), T0, T0)), 0);
    assert_eq!(
        late(p.process(&mut st, late_for_5m.as_bytes(), T0, T0)),
        0b001
    );
    assert_eq!(
        late(p.process(&mut st, late_for_1h.as_bytes(), T0, T0)),
        0b011
    );
    assert_eq!(st.watermark_ms(), Some(T0));
    st.applied(41, T0, T0);
    st.applied(7, T0, T0);
    assert_eq!(st.next_offset(), 42, "offsets only move forward");
}

#[test]
fn rejected_events_do_not_consume_their_id() {
    let p = pipeline();
    let mut st = p.new_partition();
    let bad = r#"{"type":"order","event_id":"o1","amount":-1}"#;
    assert!(matches!(
        p.process(&mut st, bad.as_bytes(), T0, T0),
        Outcome::Rejected(_)
    ));
    let good = order("o1", T0, "a", "1", false);
    assert!(matches!(
        p.process(&mut st, good.as_bytes(), T0, T0),
        Outcome::Accepted { .. }
    ));
}

#[test]
fn grouping_sums_then_divides() {
    let mut snap = Snapshot::default();
    let row = |orders, gmv| Row {
        previous: vec![Sums::default()],
        windows: vec![Sums {
            orders,
            gmv_micros: gmv,
            ..Sums::default()
        }],
        totals: Sums::default(),
    };
    snap.rows.insert(Key::new("a", "x"), row(1, 100_000_000));
    snap.rows.insert(Key::new("a", "y"), row(3, 100_000_000));
    snap.rows.insert(Key::new("b", "x"), row(4, 0));
    let by_campaign = snap.grouped(GroupBy::Campaign);
    let a = &by_campaign[&(Some("a".into()), None)];
    assert_eq!(a.windows[0].orders, 4);
    assert_eq!(a.windows[0].gmv(), 200.0); // AOV 50, not the mean of 100 and 33.3
    let all = snap.grouped(GroupBy::All);
    assert_eq!(all.len(), 1);
    assert_eq!(all[&(None, None)].windows[0].orders, 8);
    assert_eq!(snap.grouped(GroupBy::Channel).len(), 2);
}

#[test]
fn the_current_snapshot_is_the_full_one_without_preceding_windows() {
    let p = pipeline_keeping_the_hour_before();
    let store = Store::default();
    let shared = store.get_or_insert(&TopicPartition::new("visits", 0), || p.new_partition());
    // One visit in the preceding hour, two in the current one.
    for (i, age) in [90 * MIN, 30 * MIN, MIN].into_iter().enumerate() {
        let m = visit(&format!("v{i}"), T0 - age, "a");
        p.process(&mut shared.write(), m.as_bytes(), T0 - age, T0);
    }
    let full = store.snapshot(&p.windows, T0);
    let current = store.snapshot_current(&p.windows, T0);
    let (f, c) = (
        &full.rows[&Key::new("a", "email")],
        &current.rows[&Key::new("a", "email")],
    );
    assert_eq!(f.previous[1].visits, 1);
    assert!(c.previous.is_empty());
    assert_eq!((&f.windows, &f.totals), (&c.windows, &c.totals));
    assert_eq!(c.windows[1].visits, 2);
}

#[test]
fn names_lose_control_characters_and_are_cut_at_a_character_boundary() {
    assert!(matches!(clean_label("spring_sale", 128), Cow::Borrowed(_)));
    assert!(matches!(
        clean_label("Été \"50%\" \\", 128),
        Cow::Borrowed(_)
    ));
    assert_eq!(clean_label("a\nb\u{1b}[31mc\u{85}", 128), "ab[31mc");
    // 'é' is two bytes: a cut never splits it.
    assert_eq!(clean_label("ééé", 5), "éé");
    assert_eq!(clean_label(&"x".repeat(300), 128).len(), 128);
    assert_eq!(clean_label("\n\t", 128), "(none)");
}

#[test]
fn keys_beyond_the_limit_fold_into_other_and_nothing_is_lost() {
    let p = Pipeline {
        limits: Limits {
            max_keys: 3,
            max_label_bytes: 16,
        },
        ..pipeline()
    };
    let mut state = p.new_partition();
    let mut folded = 0;
    for i in 0..100 {
        let m = visit(&format!("v{i}"), T0, &format!("campaign-{}", i % 10));
        match p.process(&mut state, m.as_bytes(), T0, T0) {
            Outcome::Accepted { folded: f, .. } => folded += usize::from(f),
            other => panic!("{other:?}"),
        }
    }
    // campaign-0..2 keep their keys; the 70 events of the others count under "(other)".
    assert_eq!(folded, 70);
    let keys: Vec<(String, u64)> = state
        .keys()
        .map(|(k, ks)| (k.campaign.to_string(), ks.totals().visits))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(
        keys,
        [
            ("(other)".to_string(), 70),
            ("campaign-0".to_string(), 10),
            ("campaign-1".to_string(), 10),
            ("campaign-2".to_string(), 10),
        ]
    );
    // A flood of made-up channels stays bounded too.
    for i in 0..1000 {
        let m = format!(
            r#"{{"type":"visit","event_id":"c{i}","timestamp":{T0},"campaign":"x{i}","channel":"ch{i}"}}"#
        );
        p.process(&mut state, m.as_bytes(), T0, T0);
    }
    assert!(state.keys().count() <= 3 + OTHER_CHANNELS + 1);
    let visits: u64 = state.keys().map(|(_, ks)| ks.totals().visits).sum();
    assert_eq!(visits, 1100);
}

#[test]
fn idle_keys_are_evicted_and_their_place_freed() {
    let p = Pipeline {
        limits: Limits {
            max_keys: 2,
            max_label_bytes: 128,
        },
        ..pipeline()
    };
    let mut state = p.new_partition();
    p.process(&mut state, visit("a", T0, "old").as_bytes(), T0, T0);
    let later = T0 + 23 * 60 * MIN;
    p.process(
        &mut state,
        visit("b", later, "recent").as_bytes(),
        later,
        later,
    );
    // Within the 24h window of its event, the old key stays.
    assert_eq!(state.evict_idle(&p.windows, &p.limits, later), 0);
    let next_day = T0 + 25 * 60 * MIN;
    // Below the limit, idle keys stay: evicting costs their counters.
    let roomy = Limits {
        max_keys: 3,
        ..p.limits
    };
    assert_eq!(state.evict_idle(&p.windows, &roomy, next_day), 0);
    assert_eq!(state.evict_idle(&p.windows, &p.limits, next_day), 1);
    let campaigns: Vec<&str> = state.keys().map(|(k, _)| &*k.campaign).collect();
    assert_eq!(campaigns, ["recent"]);
    // The freed place goes to a new key rather than to "(other)".
    let outcome = p.process(
        &mut state,
        visit("c", next_day, "new").as_bytes(),
        next_day,
        next_day,
    );
    assert!(
        matches!(outcome, Outcome::Accepted { folded: false, .. }),
        "{outcome:?}"
    );
}

#[test]
fn removing_a_partition_removes_its_series() {
    let p = pipeline();
    let store = Store::default();
    for (part, campaign) in [(0, "a"), (1, "b")] {
        let tp = TopicPartition::new("visits", part);
        let shared = store.get_or_insert(&tp, || p.new_partition());
        let m = visit(&format!("v{part}"), T0, campaign);
        p.process(&mut shared.write(), m.as_bytes(), T0, T0);
    }
    let g = store.generation();
    assert_eq!(store.snapshot(&p.windows, T0).rows.len(), 2);
    store.remove(&[TopicPartition::new("visits", 0)]);
    assert!(store.generation() > g);
    let snap = store.snapshot(&p.windows, T0);
    assert_eq!(
        snap.rows.keys().map(|k| &*k.campaign).collect::<Vec<_>>(),
        ["b"]
    );
}

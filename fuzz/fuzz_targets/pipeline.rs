//! The whole per-message path on arbitrary input: the bytes split at newlines are messages of
//! one partition, applied with a clock that moves on; then what a scrape, the API and a
//! checkpoint do with the state. No panic anywhere, and a checkpoint reads back the same.
#![no_main]

use ecom_pulse::pure::decode::Decoder;
use ecom_pulse::pure::kpi::ClvAssumptions;
use ecom_pulse::pure::window::Windows;
use ecom_pulse::read::metrics::render_kpis;
use ecom_pulse::pure::limits::Limits;
use ecom_pulse::pure::pipeline::Pipeline;
use ecom_pulse::state::store::{Store, TopicPartition};
use ecom_pulse::state::checkpoint;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_795_334_400_000;

fuzz_target!(|data: &[u8]| {
    let pipeline = Pipeline {
        decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
        windows: Windows::with_previous(&["5m", "1h", "24h"], 60, &["1h"]),
        max_future_skew_ms: 60_000,
        dedup_horizon_ms: 900_000,
        dedup_max_ids: 1000,
        // Small, so that inputs reach the folding into "(other)".
        limits: Limits {
            max_keys: 4,
            max_label_bytes: 16,
        },
    };
    let mut state = pipeline.new_partition();
    let mut now = NOW;
    for (offset, message) in data.split(|b| *b == b'\n').enumerate() {
        // A little under a second between messages: buckets roll over, dedup generations too.
        now = NOW + 997 * offset as i64;
        pipeline.process(&mut state, message, now - 1000, now);
        state.applied(offset as i64, now, now - 1000);
    }
    state.evict_idle(&pipeline.windows, &pipeline.limits, now);

    let bytes = checkpoint::encode(&state, &pipeline.windows);
    let (mut restored, layout) = checkpoint::decode(&bytes).expect("a checkpoint reads back");
    assert!(restored.reconfigure(&pipeline, &layout, now).kept_all());
    assert!(restored.same_aggregates(&state));
    assert_eq!(restored.dedup().len(), state.dedup().len());
    assert_eq!(restored.next_offset(), state.next_offset());

    let store = Store::default();
    store.install(TopicPartition::new("visits", 0), state);
    let snapshot = store.snapshot(&pipeline.windows, now);
    // The restored state reads the same (its windows' running totals are rebuilt).
    let again = Store::default();
    again.install(TopicPartition::new("visits", 0), restored);
    assert_eq!(again.snapshot(&pipeline.windows, now).rows, snapshot.rows);
    let mut text = String::new();
    let clv = ClvAssumptions {
        purchases_per_year: 4.0,
        lifetime_years: 3.0,
    };
    render_kpis(&mut text, &snapshot, &pipeline.windows, &clv);
    for line in text.lines() {
        assert!(!line.is_empty() && !line.contains('\r'), "{line:?}");
    }
});

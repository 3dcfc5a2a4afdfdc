//! Decode + validate + de-duplicate + aggregate, on one core, with ~20,000 keys.
//!
//! `cargo bench --bench pipeline`. The state is warmed with every key first, so the figure
//! is the steady state of a running service rather than the cost of creating keys.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ecom_pulse::aggregate::{Outcome, Pipeline};
use ecom_pulse::decode::Decoder;
use ecom_pulse::generate::synthetic;
use ecom_pulse::window::Windows;

/// Keys: campaign x channel pairs.
const KEYS: usize = 20_000;
const BATCH: usize = 100_000;
const NOW: i64 = 1_795_334_400_000;

fn pipeline() -> Pipeline {
    Pipeline {
        decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
        windows: Windows::from_labels(&["5m", "1h", "24h"], 60),
        max_future_skew_ms: 60_000,
        dedup_horizon_ms: 15 * 60_000,
        dedup_max_ids: 1_000_000,
    }
}

/// The synthetic load of `ecom_pulse::generate::synthetic`, stamped as producers do: within
/// the last two seconds, 1 % up to four minutes late.
fn messages(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let ts = if i % 100 == 0 {
                NOW - (i as i64 % 240_000)
            } else {
                NOW - (i as i64 % 2_000)
            };
            synthetic(i, KEYS, ts, tag).2.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let p = pipeline();
    // Warm: every key exists, as in a running service.
    let mut warm = p.new_partition();
    for m in messages("warm", KEYS * 3) {
        p.process(&mut warm, &m, NOW, NOW);
    }
    let batch = messages("bench", BATCH);

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            batch
                .iter()
                .filter(|m| p.decoder.decode(m, NOW).is_ok())
                .count()
        })
    });
    group.bench_function("decode+dedup+aggregate (20k keys)", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |state| {
                let mut accepted = 0;
                for m in &batch {
                    if let Outcome::Accepted { .. } = p.process(state, m, NOW, NOW) {
                        accepted += 1;
                    }
                }
                assert_eq!(accepted, BATCH);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);

//! Decode + validate + de-duplicate + aggregate, on one core, with ~20,000 keys.
//!
//! `cargo bench --bench pipeline`. The state is warmed with every key first, so the figure
//! is the steady state of a running service rather than the cost of creating keys.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ecom_pulse::aggregate::{Outcome, Pipeline};
use ecom_pulse::decode::Decoder;
use ecom_pulse::window::Windows;

const CAMPAIGNS: usize = 2_000;
const CHANNELS: [&str; 10] = [
    "paid_social",
    "paid_search",
    "email",
    "display",
    "affiliate",
    "organic",
    "referral",
    "video",
    "sms",
    "push",
];
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

/// A realistic mix: 90 % visits, 6 % orders, 4 % spend; both timestamp and amount forms.
fn messages(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let key = i.wrapping_mul(2_654_435_761) % (CAMPAIGNS * CHANNELS.len());
            let campaign = format!("campaign_{:04}", key / CHANNELS.len());
            let channel = CHANNELS[key % CHANNELS.len()];
            // As producers stamp them: within the last two seconds, 1 % up to four minutes late.
            let ts = if i % 100 == 0 { NOW - (i as i64 % 240_000) } else { NOW - (i as i64 % 2_000) };
            let json = match i % 50 {
                0..=2 => format!(
                    r#"{{"type":"order","event_id":"{tag}-{i}","timestamp":{ts},"order_id":"o-{i}","customer_id":"c-{i}","amount":"49.90","currency":"USD","new_customer":true,"campaign":"{campaign}","channel":"{channel}"}}"#
                ),
                3 => format!(
                    r#"{{"type":"ad_spend","event_id":"{tag}-{i}","timestamp":"2026-11-22T07:59:05Z","campaign":"{campaign}","channel":"{channel}","amount":12.5,"currency":"EUR"}}"#
                ),
                4..=5 => format!(
                    r#"{{"type":"ad_spend","event_id":"{tag}-{i}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}","amount":12.5}}"#
                ),
                _ => format!(
                    r#"{{"type":"visit","event_id":"{tag}-{i}","timestamp":{ts},"visitor_id":"u-{i}","campaign":"{campaign}","channel":"{channel}","device":"mobile"}}"#
                ),
            };
            json.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let p = pipeline();
    // Warm: every key exists, as in a running service.
    let mut warm = p.new_partition();
    for m in messages("warm", CAMPAIGNS * CHANNELS.len() * 3) {
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

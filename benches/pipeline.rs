//! Decode + validate + de-duplicate + aggregate, on one core, with ~20,000 keys.
//!
//! `cargo bench --bench pipeline`. The state is warmed with every key first, so the figure
//! is the steady state of a running service rather than the cost of creating keys.

use std::collections::VecDeque;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ecom_pulse::pure::decode::Decoder;
use ecom_pulse::pure::kpi::ClvAssumptions;
use ecom_pulse::pure::limits::Limits;
use ecom_pulse::pure::pipeline::{Outcome, Pipeline};
use ecom_pulse::pure::window::Windows;
use ecom_pulse::read::metrics::render_kpis;
use ecom_pulse::state::store::{Store, TopicPartition};
use ecom_pulse::tools::generate::synthetic;

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
        // Room for every key: the measured path is that of known keys, none folded.
        limits: Limits {
            max_keys: 100_000,
            ..Limits::default()
        },
    }
}

/// The synthetic load of `ecom_pulse::tools::generate::synthetic`, stamped as producers do: within
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

/// A scrape's work with 10,000 keys, three windows full of data and each key's three event
/// types on three partitions (as the default topics place them): reading the sums out of the
/// partitions, and writing the exposition text.
fn scrape(c: &mut Criterion) {
    const SCRAPE_KEYS: usize = 10_000;
    let p = pipeline();
    let store = Store::default();
    // One event of each type per key every 24 minutes over the last day and every minute
    // over the last hour: every bucket of every window holds data.
    let ages = (0..60)
        .map(|i| 86_400_000 - i * 1_440_000 - 1)
        .chain((0..60).map(|i| i * 60_000));
    let mut seq = 0;
    for age in ages {
        let ts = NOW - age;
        for k in 0..SCRAPE_KEYS {
            let (campaign, channel) = (format!("campaign_{:05}", k / 10), k % 10);
            for topic in ["visits", "orders", "ad-spend"] {
                seq += 1;
                let json = match topic {
                    "visits" => format!(
                        r#"{{"type":"visit","event_id":"s{seq}","timestamp":{ts},"campaign":"{campaign}","channel":"ch{channel}"}}"#
                    ),
                    "orders" => format!(
                        r#"{{"type":"order","event_id":"s{seq}","timestamp":{ts},"campaign":"{campaign}","channel":"ch{channel}","amount":49.9,"new_customer":true}}"#
                    ),
                    _ => format!(
                        r#"{{"type":"ad_spend","event_id":"s{seq}","timestamp":{ts},"campaign":"{campaign}","channel":"ch{channel}","amount":12.5}}"#
                    ),
                };
                let state = store
                    .get_or_insert(&TopicPartition::new(topic, (k % 6) as i32), || {
                        p.new_partition()
                    });
                p.process(&mut state.write(), json.as_bytes(), ts, NOW);
            }
        }
    }
    let clv = ClvAssumptions {
        purchases_per_year: 4.0,
        lifetime_years: 3.0,
    };
    let snapshot = store.snapshot_current(&p.windows, NOW);
    let mut body = String::new();
    render_kpis(&mut body, &snapshot, &p.windows, &clv);
    let mut group = c.benchmark_group("scrape");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("snapshot (10k keys x 3 windows)", |b| {
        b.iter(|| store.snapshot_current(&p.windows, NOW).rows.len())
    });
    group.bench_function("render (10k keys x 3 windows)", |b| {
        b.iter(|| {
            body.clear();
            render_kpis(&mut body, &snapshot, &p.windows, &clv);
            body.len()
        })
    });
    group.finish();
}

/// Ingestion into a store of 10,000 keys on 3 topics x 6 partitions, as the consumer does it
/// (a partition's lock tried per message; while a reader has it, that partition's messages
/// are held and the others go on), alone, while another core only computes (a control), and
/// while another thread scrapes back to back (snapshot and text, as `/metrics` does). With a
/// core each, the difference is what a scrape costs the consumer besides CPU: caches, memory
/// bandwidth, and copies of the messages held.
fn ingest_while_scraped(c: &mut Criterion) {
    use std::hash::{Hash, Hasher};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const STORE_KEYS: usize = 10_000;
    let p = pipeline();
    let store = Store::default();
    let route = |i: usize, ts: i64, tag: &str| {
        let (stream, campaign, json) = synthetic(i, STORE_KEYS, ts, tag);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        campaign.hash(&mut h);
        let tp = TopicPartition::new(&format!("{stream:?}"), (h.finish() % 6) as i32);
        let part = store.get_or_insert(&tp, || p.new_partition());
        (tp, part, json.into_bytes())
    };
    for i in 0..STORE_KEYS * 3 {
        let (_, part, json) = route(i, NOW - (i as i64 % 2_000), "warm");
        p.process(&mut part.write(), &json, NOW, NOW);
    }
    let warm: Vec<_> = store
        .partitions()
        .into_iter()
        .map(|(_, part)| {
            let state = part.read().clone();
            (part, state)
        })
        .collect();
    // librdkafka hands messages over in per-partition runs (a fetch response per partition);
    // every message from another partition than the last is the worst case for locking.
    let interleaved: Vec<_> = (0..BATCH)
        .map(|i| route(i, NOW - (i as i64 % 2_000), "bench"))
        .collect();
    let mut in_runs = interleaved.clone();
    for block in in_runs.chunks_mut(18_000) {
        block.sort_by(|a, b| a.0.cmp(&b.0)); // stable: runs of ~1,000 in offset order
    }
    let clv = ClvAssumptions {
        purchases_per_year: 4.0,
        lifetime_years: 3.0,
    };
    // As the consumer does it: a partition whose lock a reader holds gets its messages held
    // (copied) while the others go on; they are applied, in order, once the lock is free.
    let slot = |part: &ecom_pulse::state::store::SharedPartition| {
        warm.iter()
            .position(|(p, _)| std::sync::Arc::ptr_eq(p, part))
            .unwrap()
    };
    let interleaved: Vec<_> = interleaved
        .into_iter()
        .map(|(tp, part, json)| (tp, slot(&part), part, json))
        .collect();
    let in_runs: Vec<_> = in_runs
        .into_iter()
        .map(|(tp, part, json)| (tp, slot(&part), part, json))
        .collect();
    let apply = |state: &mut ecom_pulse::pure::partition::PartitionState,
                 held: &mut VecDeque<Box<[u8]>>,
                 json: Option<&[u8]>| {
        let accepted = |o| assert!(matches!(o, Outcome::Accepted { .. }));
        for m in held.drain(..) {
            accepted(p.process(state, &m, NOW, NOW));
        }
        if let Some(json) = json {
            accepted(p.process(state, json, NOW, NOW));
        }
    };
    // Each iteration starts from the warm state (not timed), so every event is new.
    let ingest = |batch: &[(
        TopicPartition,
        usize,
        ecom_pulse::state::store::SharedPartition,
        Vec<u8>,
    )],
                  iters: u64| {
        let mut took = Duration::ZERO;
        let mut held: Vec<VecDeque<Box<[u8]>>> = vec![VecDeque::new(); warm.len()];
        for _ in 0..iters {
            for (part, state) in &warm {
                *part.write() = state.clone();
            }
            let start = Instant::now();
            for (_, slot, part, json) in batch {
                match part.try_write() {
                    Some(mut state) => apply(&mut state, &mut held[*slot], Some(json)),
                    None => held[*slot].push_back(json.as_slice().into()),
                }
            }
            for ((part, _), held) in warm.iter().zip(&mut held) {
                apply(&mut part.write(), held, None);
            }
            took += start.elapsed();
        }
        took
    };
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, batch) in [("in runs", &in_runs), ("interleaved", &interleaved)] {
        group.bench_function(format!("{name}, alone"), |b| {
            b.iter_custom(|iters| ingest(batch, iters))
        });
    }
    let (stop, scrapes) = (AtomicBool::new(false), AtomicUsize::new(0));
    let measured_while_scraped = AtomicBool::new(false);
    // Control: another thread that only computes in registers. What ingestion loses to it
    // is what this machine loses to any busy second core (shared caches, clocks, a
    // hypervisor's scheduling), not what a scrape costs.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        });
        for (name, batch) in [("in runs", &in_runs), ("interleaved", &interleaved)] {
            group.bench_function(format!("{name}, while another core spins"), |b| {
                b.iter_custom(|iters| ingest(batch, iters))
            });
        }
        stop.store(true, Ordering::Relaxed);
    });
    stop.store(false, Ordering::Relaxed);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut body = String::new();
            while !stop.load(Ordering::Relaxed) {
                let snapshot = store.snapshot_current(&p.windows, NOW);
                body.clear();
                render_kpis(&mut body, &snapshot, &p.windows, &clv);
                scrapes.fetch_add(1, Ordering::Relaxed);
            }
        });
        for (name, batch) in [("in runs", &in_runs), ("interleaved", &interleaved)] {
            group.bench_function(format!("{name}, while scraped back to back"), |b| {
                b.iter_custom(|iters| {
                    measured_while_scraped.store(true, Ordering::Relaxed);
                    ingest(batch, iters)
                })
            });
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Unless a filter skipped those benchmarks, the scraper must have run beside them.
    assert!(!measured_while_scraped.into_inner() || scrapes.load(Ordering::Relaxed) > 0);
    group.finish();
}

/// A checkpoint of one partition as `bench/run.sh` leaves it on Tansu: 1,000,000 events over
/// 18 partitions, so ~55,000 de-duplication ids and 1,000 keys' rings each. The consumer's
/// process writes one every `checkpoint.interval` for every partition that changed.
fn checkpoint(c: &mut Criterion) {
    let p = pipeline();
    let mut state = p.new_partition();
    for i in 0..55_000 {
        let ts = NOW - 15 * 60_000 + i as i64 * 16;
        p.process(
            &mut state,
            synthetic(i, 1_000, ts, "ck").2.as_bytes(),
            ts,
            NOW,
        );
    }
    let mut scratch = ecom_pulse::state::checkpoint::Scratch::default();
    ecom_pulse::state::checkpoint::encode_into(&state, &p.windows, &mut scratch);
    let mut group = c.benchmark_group("checkpoint");
    group.throughput(Throughput::Elements(state.dedup().len() as u64));
    group.bench_function("encode (55k ids, 1k keys)", |b| {
        b.iter(|| {
            ecom_pulse::state::checkpoint::encode_into(&state, &p.windows, &mut scratch);
            scratch.payload().len()
        })
    });
    let saved = scratch.payload().to_vec();
    group.bench_function("decode (55k ids, 1k keys)", |b| {
        b.iter(|| {
            ecom_pulse::state::checkpoint::decode(&saved)
                .unwrap()
                .0
                .next_offset()
        })
    });
    group.finish();
}

/// librdkafka's statistics report, which the consuming thread reads every second: as rdkafka's
/// typed `Statistics` (what the service did before) and as the few fields it uses. Reports of
/// a consumer of 3 topics with 6 partitions each (`bench/run.sh` on Tansu) and with 96 each
/// (on the mock cluster).
fn statistics(c: &mut Criterion) {
    use ecom_pulse::source::stats::{Stats, sample_report};
    let mut group = c.benchmark_group("statistics");
    for partitions in [6, 96] {
        let json = sample_report(partitions);
        let what = format!("{} partitions, {} KiB", 3 * partitions, json.len() / 1024);
        group.bench_function(format!("typed ({what})"), |b| {
            b.iter(|| {
                serde_json::from_slice::<rdkafka::statistics::Statistics>(&json)
                    .unwrap()
                    .topics
                    .len()
            })
        });
        group.bench_function(format!("lean ({what})"), |b| {
            b.iter(|| Stats::parse(&json).unwrap().topics.len())
        });
    }
    group.finish();
}

/// De-duplication alone, one partition at a steady rate of event time: ids new but for 1 % sent
/// again from ten minutes earlier, 1 % stamped four minutes late. Each iteration feeds one
/// generation's worth of ids (a quarter of the 15-minute horizon) into a memory that already
/// holds the horizon, so the per-id figure includes the work done when a generation closes.
/// 800 ids/s is what the earlier default cap of 917,504 ids held; 5,000 ids/s holds 5.6 M.
fn dedup(c: &mut Criterion) {
    use ecom_pulse::pure::dedup::Dedup;
    const HORIZON: i64 = 15 * 60_000;
    let id = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
    let mut group = c.benchmark_group("dedup");
    group.sample_size(10);
    for rate in [800i64, 5_000] {
        let at = |i: u64| NOW - 2 * HORIZON + i as i64 * 1000 / rate;
        let mut warm = Dedup::new(HORIZON, 6_000_000);
        let warm_ids = (rate * 3 * HORIZON / 2 / 1000) as u64;
        for i in 0..warm_ids {
            warm.insert(id(i), at(i));
        }
        let batch: Vec<(u64, i64)> = (warm_ids..warm_ids + (rate * HORIZON / 4 / 1000) as u64)
            .map(|i| match i % 100 {
                0 => (id(i - (rate * 600) as u64), at(i - (rate * 600) as u64)),
                1 => (id(i), at(i) - 240_000),
                _ => (id(i), at(i)),
            })
            .collect();
        let held = warm.len() as f64 / 1e6;
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.bench_function(format!("insert {rate}/s ({held:.1} M held)"), |b| {
            b.iter_batched_ref(
                || warm.clone(),
                |d| {
                    let new = batch.iter().filter(|(id, ts)| d.insert(*id, *ts)).count();
                    assert_eq!(new, batch.len() - batch.len().div_ceil(100));
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, scrape, ingest_while_scraped, checkpoint, statistics, dedup
}
criterion_main!(benches);

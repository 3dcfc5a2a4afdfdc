//! Tests of the de-duplication memory: the promise (a re-send within the horizon is caught,
//! a new id never is), the memory bound, and checkpoints of it.

use super::*;
use proptest::prelude::*;

const MIN: i64 = 60_000;
const T0: i64 = 1_763_798_400_000;
const H: i64 = 15 * MIN;
/// A generation at the 15-minute horizon.
const G: i64 = H / 4;

fn id(i: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
}

/// Feeds `count` distinct ids at `rate` per second of event time from `start`, each checked
/// to be new; returns the event time after the last.
fn stream(d: &mut Dedup, from: u64, count: u64, rate: i64, start: i64) -> i64 {
    for i in from..from + count {
        assert!(
            d.insert(id(i), start + i as i64 * 1000 / rate),
            "id {i} taken for a duplicate"
        );
    }
    start + (from + count) as i64 * 1000 / rate
}

#[test]
fn a_repeated_id_is_a_duplicate() {
    let mut d = Dedup::new(H, 1000);
    assert!(d.insert(1, T0));
    assert!(!d.insert(1, T0));
    assert!(!d.insert(1, T0 + 5 * MIN));
    assert!(d.insert(2, T0));
    assert_eq!(d.len(), 2);
}

#[test]
fn ids_are_remembered_for_at_least_the_horizon() {
    let mut d = Dedup::new(H, 1000);
    assert!(d.insert(1, T0));
    // Newer traffic moves event time on; the id is still known 15 minutes later.
    assert!(d.insert(2, T0 + 15 * MIN));
    assert!(!d.insert(1, T0));
    // Well past the horizon plus one generation, it has been forgotten.
    assert!(d.insert(3, T0 + 21 * MIN));
    assert!(d.insert(1, T0));
}

#[test]
fn out_of_order_arrivals_are_still_recognised() {
    let mut d = Dedup::new(H, 1000);
    assert!(d.insert(7, T0 - 10 * MIN));
    assert!(d.insert(8, T0));
    assert!(!d.insert(7, T0 - 10 * MIN));
}

/// Ids in all three places (buffer, `recent`, `sealed`) are found, and generations close
/// with the runs in use.
#[test]
fn ids_are_found_wherever_they_are_held() {
    let mut d = Dedup::with_buffer(H, 1_000_000, 100);
    // 40 ids a second for two horizons and half a generation: 9,000 a generation, merged
    // 100 at a time.
    let n = 76_550;
    let end = stream(&mut d, 0, n, 40, T0);
    assert!(d.sealed.len() > 0 && d.recent.len() > 0 && !d.buffer.is_empty());
    // Every id of the last horizon is known; the oldest were forgotten.
    for i in (n - 36_000..n).step_by(7) {
        assert!(!d.insert(id(i), T0 + i as i64 * 25), "id {i} forgotten");
    }
    assert!(d.insert(id(0), T0));
    assert_eq!(d.evicted(), 0);
    assert_eq!(d.horizon_ms(), H);
    assert!(end > T0);
}

#[test]
fn memory_is_bounded_and_evictions_counted() {
    let mut d = Dedup::new(H, 1000);
    for i in 0..5000u64 {
        // 50 ids per second of event time: 5000 ids span 100 s.
        d.insert(i, T0 + (i as i64) * 20);
        assert!(d.len() <= 1000);
    }
    assert!(d.evicted() >= 4000, "evicted {}", d.evicted());
    // The most recent ids are still known.
    assert!(!d.insert(4999, T0 + 4999 * 20));
}

#[test]
fn the_newest_generation_alone_over_the_cap_is_cleared_not_grown() {
    let mut d = Dedup::new(H, 1000);
    for i in 0..1500u64 {
        d.insert(i, T0);
    }
    assert!(d.len() <= 1000);
    assert_eq!(d.evicted() + d.len() as u64, 1500);
    // Everything up to the newest event time may have been forgotten: a horizon of nothing,
    // which grows back as event time moves on with every id kept.
    assert_eq!(d.horizon_ms(), 0);
    d.insert(5000, T0 + 30_000);
    assert_eq!(d.horizon_ms(), 30_000 - 1);
}

/// Tags are generations modulo 8: across their wrap, the ids of the last horizon are known
/// and older ones are not.
#[test]
fn generations_are_told_apart_across_the_tag_wrap() {
    // Generation numbers around a multiple of 8, where the tags wrap.
    let base = 7 * G;
    let mut d = Dedup::with_buffer(H, 1000, 3);
    for step in 0..20i64 {
        let ts = base + step * G;
        assert!(d.insert(100 + step as u64, ts), "step {step}");
        for back in 0..=step {
            let known = !d.insert(100 + (step - back) as u64, base + (step - back) * G);
            assert_eq!(known, back <= 4, "step {step}, {back} generations back");
        }
    }
}

#[test]
fn a_passed_burst_gives_its_memory_back() {
    let mut d = Dedup::new(H, 1_000_000);
    for i in 0..300_000u64 {
        d.insert(id(i), T0);
    }
    let burst = d.table_bytes();
    // Quiet traffic for two horizons: the burst's ids are forgotten and their memory freed.
    for i in 0..100u64 {
        d.insert(id(1_000_000 + i), T0 + 30 * MIN + i as i64 * 20_000);
    }
    assert!(
        d.table_bytes() * 100 < burst,
        "{} of {burst}",
        d.table_bytes()
    );
}

/// A steady stream's memory is the same at the same point of every generation once the
/// horizon has filled: nothing accumulates.
#[test]
fn a_steady_stream_holds_steady_memory() {
    let mut d = Dedup::with_buffer(H, 1_000_000, 4096);
    let mut at_advance = Vec::new();
    // 100 ids per second of event time for four hours.
    for i in 0..4 * 3600 * 100u64 {
        let generation = d.newest;
        assert!(
            d.insert(id(i), T0 + i as i64 * 10),
            "id {i} taken for a duplicate"
        );
        if d.newest != generation {
            at_advance.push((d.len(), d.table_bytes()));
        }
    }
    let settled = at_advance[8];
    assert!(
        at_advance[8..].iter().all(|&s| s == settled),
        "(ids, bytes) at each new generation: {at_advance:?}"
    );
}

/// A backlog that arrives behind the newest id (the two hours before it, oldest first) is
/// held under the oldest live generation; once the stream is steady again, memory is what the
/// steady stream alone takes.
#[test]
fn memory_grown_by_a_late_backlog_settles_at_the_steady_size() {
    let steady = |d: &mut Dedup| {
        for i in 0..2 * 3600 * 100u64 {
            d.insert(id(i), T0 + i as i64 * 10);
        }
    };
    let mut plain = Dedup::new(H, 1_000_000);
    steady(&mut plain);
    let mut late = Dedup::new(H, 1_000_000);
    late.insert(id(u64::MAX), T0);
    for i in 0..2 * 3600 * 100u64 {
        late.insert(id(u64::MAX / 2 + i), T0 - 2 * 60 * MIN + i as i64 * 10);
    }
    let grown = late.table_bytes();
    steady(&mut late);
    assert!(
        grown > 2 * plain.table_bytes(),
        "{grown} bytes after the backlog"
    );
    assert_eq!(late.len(), plain.len());
    assert!(
        late.table_bytes() <= plain.table_bytes() * 17 / 16,
        "{} against {}",
        late.table_bytes(),
        plain.table_bytes()
    );
}

/// The buffer is merged when it holds what one hashbrown table of 2^18 slots holds, so it
/// never grows into a table twice that size.
#[test]
fn the_buffer_fills_one_table_and_no_more() {
    let table = HashTable::<u64>::with_capacity(BUFFER_IDS);
    assert_eq!(table.capacity(), BUFFER_IDS);
    assert!(
        HashTable::<u64>::with_capacity(BUFFER_IDS + 1).allocation_size() > table.allocation_size()
    );
    let mut d = Dedup::new(H, 10_000_000);
    for i in 0..3 * BUFFER_IDS as u64 {
        d.insert(id(i), T0);
        assert!(d.buffer.allocation_size() <= table.allocation_size());
    }
    assert_eq!(d.recent.len(), 3 * BUFFER_IDS);
}

/// Ids re-sent from anywhere in the last horizon are duplicates at a rate that just fits
/// the cap, and nothing is evicted.
#[test]
fn ids_resent_within_the_horizon_are_duplicates_up_to_the_cap() {
    // 190 ids a second: at most 1.25 × 900 × 190 = 213,750 held, under 220,000.
    let (rate, cap) = (190i64, 220_000);
    let mut d = Dedup::with_buffer(H, cap, 8192);
    let at = |i: u64| T0 + i as i64 * 1000 / rate;
    let mut lcg = 1u64;
    let total = 3 * 900 * rate as u64;
    for i in 0..total {
        assert!(d.insert(id(i), at(i)), "id {i} taken for a duplicate");
        if i % 10 == 0 && i > 0 {
            lcg = lcg
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Any id of the last horizon (of event time) back from this one.
            let back = (lcg >> 33) % (900 * rate as u64).min(i);
            let j = i - back;
            assert!(!d.insert(id(j), at(j)), "id {j} forgotten at {i}");
        }
        assert!(d.len() <= cap);
    }
    assert_eq!(d.evicted(), 0);
    assert_eq!(d.horizon_ms(), H);
}

/// Past the cap, the oldest generation is forgotten early: evictions are counted, the
/// horizon kept is shorter than the configured one by whole generations, and ids within it
/// are still duplicates.
#[test]
fn past_the_cap_the_horizon_kept_shrinks() {
    // 200 ids a second needs 225,000 for the horizon; the cap holds 500 s of them.
    let (rate, cap) = (200i64, 100_000);
    let mut d = Dedup::with_buffer(H, cap, 8192);
    let at = |i: u64| T0 + i as i64 * 1000 / rate;
    let total = 3 * 900 * rate as u64;
    let mut shortest = H;
    for i in 0..total {
        assert!(d.insert(id(i), at(i)), "id {i} taken for a duplicate");
        assert!(d.len() <= cap);
        if i > 900 * rate as u64 {
            shortest = shortest.min(d.horizon_ms());
            // At most the cap's 500 s, at least one whole generation.
            assert!(
                (G..=500_000).contains(&d.horizon_ms()),
                "{} ms at {i}",
                d.horizon_ms()
            );
        }
        if i % 1000 == 999 {
            // The oldest id the horizon kept promises, and the newest.
            let span = (d.horizon_ms() * rate / 1000) as u64;
            for j in [(i + 1).saturating_sub(span), i] {
                assert!(!d.insert(id(j), at(j)), "id {j} forgotten at {i}");
            }
        }
    }
    assert!(d.evicted() > 0);
    // Just after a generation is evicted, only one whole one and part of the next are left.
    assert!(shortest < 2 * G, "shortest {shortest} ms");
    // Right after an eviction, the horizon is the newest time less the start of the oldest
    // generation kept.
    let mut d = Dedup::new(H, 1000);
    for i in 0..1000u64 {
        d.insert(id(i), T0 + i as i64 * 1000);
    }
    assert_eq!(d.horizon_ms(), H);
    d.insert(id(5000), T0 + 1000 * 1000);
    let oldest_kept = i64::from(d.oldest_kept) * d.generation_ms;
    assert_eq!(d.horizon_ms(), T0 + 1000 * 1000 - oldest_kept);
    assert!(d.horizon_ms() < H);
}

/// 5.6 M ids at 5,000 a second (15 minutes and a generation): under 7 bytes an id in memory at
/// the peak of a generation, and under 8 in a checkpoint; at 50 a second, under 1 MiB. (The
/// figures are printed: `cargo test --release --lib dedup::tests::memory -- --nocapture`.)
#[test]
fn memory_at_5000_events_per_second_is_under_7_bytes_an_id() {
    let rate = 5_000i64;
    let mut d = Dedup::new(H, 6_000_000);
    let at = |i: u64| T0 + i as i64 * 1000 / rate;
    let mut i = 0u64;
    // Five whole generations, up to the last id before the next: the peak.
    let first = d.generation(at(0));
    while d.generation(at(i)) < first + 5 {
        assert!(d.insert(id(i), at(i)));
        i += 1;
    }
    let (ids, bytes) = (d.len(), d.table_bytes());
    let per_id = bytes as f64 / ids as f64;
    println!("{ids} ids in {bytes} bytes: {per_id:.2} bytes an id");
    assert!(ids > 5_500_000, "{ids} ids");
    assert!(per_id < 7.0, "{per_id:.2} bytes an id");
    let saved = postcard::to_allocvec(&d).unwrap();
    let saved_per_id = saved.len() as f64 / d.len() as f64;
    println!(
        "checkpoint: {} bytes for {} ids: {saved_per_id:.2} an id",
        saved.len(),
        d.len()
    );
    assert!(
        saved_per_id < 8.0,
        "{saved_per_id:.2} bytes an id in a checkpoint"
    );
    let mut back: Dedup = postcard::from_bytes(&saved).unwrap();
    for j in (i - 900 * rate as u64..i).step_by(997) {
        assert!(!back.insert(id(j), at(j)), "id {j} forgotten");
    }
    assert!(back.insert(id(u64::MAX), at(i)));

    // A partition at 50 events/s pays for its own ids, not for the cap's.
    let mut d = Dedup::new(H, 6_000_000);
    let at = |i: u64| T0 + i as i64 * 20;
    let mut i = 0u64;
    while d.generation(at(i)) < first + 5 {
        d.insert(id(i), at(i));
        i += 1;
    }
    println!("50/s: {} ids in {} bytes", d.len(), d.table_bytes());
    assert!(d.table_bytes() < 1 << 20, "{} bytes", d.table_bytes());
}

#[test]
fn a_checkpointed_memory_reads_back_the_same() {
    let mut d = Dedup::with_buffer(H, 100_000, 500);
    // Ids in the buffer, `recent` and `sealed`.
    let end = stream(&mut d, 0, 30_000, 20, T0);
    let bytes = postcard::to_allocvec(&d).unwrap();
    let mut back: Dedup = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.len(), d.len());
    assert_eq!(
        (
            back.horizon_ms(),
            back.evicted(),
            back.newest,
            back.oldest_kept
        ),
        (d.horizon_ms(), d.evicted(), d.newest, d.oldest_kept)
    );
    for i in (0..30_000u64).chain(1_000_000..1_001_000) {
        let ts = (T0 + i as i64 * 50).min(end);
        assert_eq!(back.insert(id(i), ts), d.insert(id(i), ts), "id {i}");
    }
}

/// The buffer is saved in chunks of `PER_CHUNK` words: a buffer of several, the last one
/// partial, reads back whole.
#[test]
fn a_buffer_of_several_chunks_reads_back_whole() {
    let mut d = Dedup::new(H, 100_000);
    let ids = 2 * PER_CHUNK as u64 + 808;
    for i in 0..ids {
        assert!(d.insert(id(i), T0));
    }
    let bytes = postcard::to_allocvec(&d).unwrap();
    // Eight bytes an id, plus a few of lengths and fields.
    assert!(bytes.len() < ids as usize * 8 + 96, "{} bytes", bytes.len());
    let mut back: Dedup = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.len(), ids as usize);
    for i in 0..ids {
        assert!(!back.insert(id(i), T0));
    }
    assert_eq!(back.len(), ids as usize);
}

/// A memory saved under a higher cap (before an upgrade lowered the default, say) comes down
/// to the running cap at once.
#[test]
fn a_memory_restored_under_a_lower_cap_comes_down_to_it() {
    let mut d = Dedup::with_buffer(H, 4000, 256);
    for i in 0..3000u64 {
        d.insert(id(i), T0 + i as i64 * 600);
    }
    let bytes = postcard::to_allocvec(&d).unwrap();
    let mut back: Dedup = postcard::from_bytes(&bytes).unwrap();
    back.reconfigure(H, 1792);
    assert!(back.len() <= 1792, "{} ids", back.len());
    assert!(back.evicted() > 0);
    assert!(back.horizon_ms() < H);
    // The newest ids are still known.
    assert!(!back.insert(id(2999), T0 + 2999 * 600));
    for i in 3000..9000u64 {
        back.insert(id(i), T0 + i as i64 * 600);
        assert!(back.len() <= 1792);
    }
    // Another horizon starts the memory over.
    back.reconfigure(2 * H, 1792);
    assert!(back.is_empty());
    assert_eq!(back.horizon_ms(), 2 * H);
}

/// Format 4's memory as its build serialised it: chunks of packed (56-bit key, 8-bit
/// generation) words, then the scalars.
fn format_4(
    words: &[u64],
    chunk: usize,
    generation_ms: i64,
    newest: u32,
    oldest_kept: u32,
    evicted: u64,
) -> Vec<u8> {
    struct Bytes(Vec<u8>);
    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    #[derive(Serialize)]
    struct V4 {
        seen: Vec<Bytes>,
        generation_ms: i64,
        max_ids: usize,
        newest: u32,
        oldest_kept: u32,
        evicted: u64,
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    postcard::to_allocvec(&V4 {
        seen: bytes.chunks(chunk).map(|c| Bytes(c.to_vec())).collect(),
        generation_ms,
        max_ids: 917_504,
        newest,
        oldest_kept,
        evicted,
    })
    .unwrap()
}

/// Format 4's ids convert: the live ones are remembered, expired ones (not yet swept then)
/// are not, and an early eviction it recorded shows in the horizon kept.
#[test]
fn a_memory_of_format_4_converts() {
    let newest = 7_839_104u32;
    let (g, oldest_kept) = (G, newest - 4);
    // Generation `newest - 6` (expired), then each live one.
    let generations: Vec<u32> = (0..5000u32).map(|i| newest - 6 + i % 7).collect();
    let words: Vec<u64> = (0..5000u64)
        .map(|i| (id(i) << 8) | u64::from(generations[i as usize] & 0xFF))
        .collect();
    let bytes = format_4(&words, 4096 * 8, g, newest, oldest_kept, 0);
    let mut d: Dedup = postcard::from_bytes(&bytes).unwrap();
    let live = generations.iter().filter(|&&g| g >= oldest_kept).count();
    assert_eq!(d.len(), live);
    assert_eq!(d.horizon_ms(), H);
    let now = i64::from(newest) * g;
    for i in 0..5000u64 {
        let expired = generations[i as usize] < oldest_kept;
        assert_eq!(d.insert(id(i), now), expired, "id {i}");
    }
    // Evictions then: ids from the start of the oldest generation kept are remembered.
    let bytes = format_4(&words, 4096 * 8, g, newest, newest - 2, 10);
    let d: Dedup = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(d.horizon_ms(), 2 * g);
    // A chunk of a torn length is an error.
    let torn = format_4(&words[..3], 7, g, newest, oldest_kept, 0);
    assert!(postcard::from_bytes::<Dedup>(&torn).is_err());
    // So is a memory cut short.
    assert!(postcard::from_bytes::<Dedup>(&bytes[..bytes.len() - 3]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Streams with late ids, re-sends from any time and a cap that may be too small, over
    /// small buffers (so all three places are used), saved and restored at some point:
    /// a new id is never a duplicate, an id re-sent within the horizon kept (from the newest
    /// event time back) always is, the cap holds, and with nothing evicted the horizon kept
    /// is the configured one.
    #[test]
    fn new_ids_are_new_and_ids_within_the_horizon_kept_are_duplicates(
        ops in proptest::collection::vec((0u8..100, 0i64..3_000, 0i64..120_000, any::<u32>()), 1..1500),
        cap in 50usize..2_000,
        buffer in 2usize..64,
        restore_at in 0usize..1500,
    ) {
        let h = 60_000;
        let mut d = Dedup::with_buffer(h, cap, buffer);
        let mut now = T0;
        let mut sent: Vec<(u64, i64)> = Vec::new();
        let mut fresh = 0u64;
        for (n, (kind, step, late, pick)) in ops.into_iter().enumerate() {
            if n == restore_at {
                d = postcard::from_bytes(&postcard::to_allocvec(&d).unwrap()).unwrap();
                d.buffer_ids = buffer;
            }
            now += step;
            if kind < 70 || sent.is_empty() {
                fresh += 1;
                let ts = if kind < 60 { now } else { now - late };
                prop_assert!(d.insert(id(fresh), ts), "new id {} taken for a duplicate", fresh);
                sent.push((id(fresh), ts));
            } else {
                let (again, ts) = sent[pick as usize % sent.len()];
                let within = d.newest_ms != i64::MIN && ts >= d.newest_ms - d.horizon_ms();
                let new = d.insert(again, ts);
                prop_assert!(!(within && new), "id sent at {} forgotten (newest {}, horizon {})", ts, d.newest_ms, d.horizon_ms());
            }
            prop_assert!(d.len() <= cap);
            let tags: u32 = (0..8).map(|t| d.buffer_tags[t] + d.recent.tags()[t] + d.sealed.tags()[t]).sum();
            prop_assert_eq!(tags as usize, d.len());
            prop_assert!((0..=h).contains(&d.horizon_ms()));
            if d.evicted() == 0 {
                prop_assert_eq!(d.horizon_ms(), h);
            }
        }
    }
}

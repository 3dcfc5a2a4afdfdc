//! The hot path allocates nothing per event once an event's campaign and channel are known:
//! decode, validate, de-duplicate and aggregate run on memory the state already holds.
//!
//! A counting global allocator (this test binary only) counts the allocations made by this
//! thread while it processes events; the state is warmed first, as in a running service, so
//! that every key exists and the de-duplication table has reached its steady size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use ecom_pulse::pure::decode::Decoder;
use ecom_pulse::pure::limits::Limits;
use ecom_pulse::pure::pipeline::{Outcome, Pipeline};
use ecom_pulse::pure::window::Windows;
use ecom_pulse::tools::generate::synthetic;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: usize = 20_000;
const T0: i64 = 1_795_334_400_000;
/// A short de-duplication horizon, so that a test in a debug build covers several of them.
const HORIZON_MS: i64 = 60_000;

/// Event `i` of the synthetic load, one event per millisecond of event time, 1 % of them up
/// to four minutes late: it crosses bucket boundaries of every window and dedup generations.
fn message(i: usize) -> (i64, Vec<u8>) {
    let now = T0 + i as i64;
    let ts = if i.is_multiple_of(100) {
        now - (i as i64 * 7919 % 240_000)
    } else {
        now - (i as i64 % 2_000)
    };
    (now, synthetic(i, KEYS, ts, "alloc").2.into_bytes())
}

#[test]
fn processing_an_event_of_a_known_key_allocates_nothing() {
    let pipeline = Pipeline {
        decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
        windows: Windows::from_labels(&["5m", "1h", "24h"], 60),
        max_future_skew_ms: 60_000,
        dedup_horizon_ms: HORIZON_MS,
        dedup_max_ids: 1_000_000,
        // Room for every key: the measured path is that of known keys, none folded.
        limits: Limits {
            max_keys: 100_000,
            ..Limits::default()
        },
    };
    let mut state = pipeline.new_partition();
    // Warm-up: every key, three horizons of ids (the table's size oscillates within a horizon).
    let warm = (3 * HORIZON_MS) as usize;
    let measured = (2 * HORIZON_MS) as usize;
    let messages: Vec<(i64, Vec<u8>)> = (0..warm + measured).map(message).collect();
    let mut accepted = 0;
    for (now, m) in &messages[..warm] {
        if let Outcome::Accepted { .. } = pipeline.process(&mut state, m, *now, *now) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, warm);

    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut accepted = 0;
    for (now, m) in &messages[warm..] {
        if let Outcome::Accepted { folded: false, .. } = pipeline.process(&mut state, m, *now, *now)
        {
            accepted += 1;
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    COUNTING.with(|c| c.set(false));

    // The count is real: the same allocator sees an allocation made on purpose.
    COUNTING.with(|c| c.set(true));
    let probe = ALLOCATIONS.load(Ordering::Relaxed);
    drop(std::hint::black_box(vec![0u8; 16]));
    let probed = ALLOCATIONS.load(Ordering::Relaxed) - probe;
    COUNTING.with(|c| c.set(false));
    assert_eq!(probed, 1);

    assert_eq!(accepted, measured);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for {measured} events of known keys"
    );
}

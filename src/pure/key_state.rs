//! One key's state within one partition: a series per event type it has seen.

use serde::{Deserialize, Serialize};

use crate::pure::cells::*;
use crate::pure::decode::{Event, EventType};
use crate::pure::kpi::Sums;
use crate::pure::window::{Cell, RingLayout, Series, Windows};

/// One key's state within one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    // Boxed: a key's entry in the partition's hash table stays small (72 bytes with its
    // key), so probing it touches few cache lines. Each series also holds its event type's
    // monotonic counters (the `*_total` metrics), in the cache line a write touches anyway.
    visits: Option<Box<Series<VisitCell>>>,
    orders: Option<Box<Series<OrderCell>>>,
    ad_spend: Option<Box<Series<SpendCell>>>,
}

/// A key's state as checkpoints hold it: the series, then the monotonic counters as one
/// `Sums` (the format from before the counters moved into the series, kept so that
/// checkpoints stay readable across the change).
#[derive(Serialize)]
pub(crate) struct SavedKeyRef<'a> {
    pub(crate) visits: &'a Option<Box<Series<VisitCell>>>,
    pub(crate) orders: &'a Option<Box<Series<OrderCell>>>,
    pub(crate) ad_spend: &'a Option<Box<Series<SpendCell>>>,
    pub(crate) totals: Sums,
}

#[derive(Deserialize)]
struct SavedKey {
    visits: Option<Box<Series<VisitCell>>>,
    orders: Option<Box<Series<OrderCell>>>,
    ad_spend: Option<Box<Series<SpendCell>>>,
    totals: Sums,
}

impl Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SavedKeyRef {
            visits: &self.visits,
            orders: &self.orders,
            ad_spend: &self.ad_spend,
            totals: self.totals(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let SavedKey {
            mut visits,
            mut orders,
            mut ad_spend,
            totals: t,
        } = SavedKey::deserialize(deserializer)?;
        // Counters without a series (never written so, but the bytes are not ours to trust)
        // get one with no rings: it fits no geometry, so the restore gives it empty rings
        // and keeps the counters.
        fn restore<C: Cell>(series: &mut Option<Box<Series<C>>>, all_time: C::Total) {
            if series.is_none() && all_time != C::Total::default() {
                *series = Some(Box::new(Series::without_rings()));
            }
            if let Some(s) = series {
                s.set_all_time(all_time);
            }
        }
        restore(&mut visits, t.visits);
        restore(
            &mut orders,
            OrderTotal {
                orders: t.orders,
                new_customers: t.new_customers,
                gmv_micros: t.gmv_micros,
            },
        );
        restore(&mut ad_spend, t.ad_spend_micros);
        Ok(KeyState {
            visits,
            orders,
            ad_spend,
        })
    }
}

fn order_cell(event: &Event<'_>) -> OrderCell {
    OrderCell {
        orders: 1,
        new_customers: u32::from(event.new_customer),
        gmv_micros: event.amount_micros,
    }
}

/// True when the series (if any) takes `cell` at `at_ms` without a bucket saturating.
fn has_room_for<C: Cell>(
    series: &Option<Box<Series<C>>>,
    windows: &Windows,
    at_ms: i64,
    now_ms: i64,
    cell: C,
) -> bool {
    series
        .as_ref()
        .is_none_or(|s| s.has_room_for(windows, at_ms, now_ms, &cell))
}

impl KeyState {
    /// Counts the event and returns the windows it was too late for.
    pub(crate) fn add(
        &mut self,
        windows: &Windows,
        event: &Event<'_>,
        at_ms: i64,
        now_ms: i64,
    ) -> u32 {
        match event.kind {
            EventType::Visit => count(&mut self.visits, windows, at_ms, now_ms, VisitCell(1)),
            EventType::Order => count(&mut self.orders, windows, at_ms, now_ms, order_cell(event)),
            EventType::AdSpend => {
                let cell = SpendCell(event.amount_micros);
                count(&mut self.ad_spend, windows, at_ms, now_ms, cell)
            }
        }
    }

    /// True when `add` would saturate no bucket (see [`Series::has_room_for`]).
    pub(crate) fn has_room_for(
        &self,
        windows: &Windows,
        event: &Event<'_>,
        at_ms: i64,
        now_ms: i64,
    ) -> bool {
        match event.kind {
            EventType::Visit => has_room_for(&self.visits, windows, at_ms, now_ms, VisitCell(1)),
            EventType::Order => {
                has_room_for(&self.orders, windows, at_ms, now_ms, order_cell(event))
            }
            EventType::AdSpend => {
                let cell = SpendCell(event.amount_micros);
                has_room_for(&self.ad_spend, windows, at_ms, now_ms, cell)
            }
        }
    }

    /// The series this key has, whatever their cell types.
    fn series(&self) -> impl Iterator<Item = &dyn SeriesRead> {
        let visits = self.visits.as_deref().map(|s| s as &dyn SeriesRead);
        let orders = self.orders.as_deref().map(|s| s as &dyn SeriesRead);
        let spend = self.ad_spend.as_deref().map(|s| s as &dyn SeriesRead);
        [visits, orders, spend].into_iter().flatten()
    }

    /// Sums `f` reads from each track's series.
    fn sum(&self, f: impl Fn(&dyn SeriesRead, &mut Sums)) -> Sums {
        let mut sums = Sums::default();
        for s in self.series() {
            f(s, &mut sums);
        }
        sums
    }

    /// Reads the lines of each series that reading `windows` windows touches; see
    /// `Store::snapshot_with`.
    pub(crate) fn touch_heads(&self, windows: usize) -> i64 {
        self.series()
            .fold(0, |acc, s| acc.wrapping_add(s.touch_heads(windows)))
    }

    /// Window `w`'s sums at `now_ms`.
    pub fn window_sums(&self, windows: &Windows, w: usize, now_ms: i64) -> Sums {
        self.sum(|s, sums| s.window(windows, w, now_ms, sums))
    }

    /// Sums of the window preceding window `w` (only for windows kept with their predecessor).
    pub fn previous_sums(&self, windows: &Windows, w: usize, now_ms: i64) -> Sums {
        self.sum(|s, sums| s.previous(windows, w, now_ms, sums))
    }

    /// The monotonic counters.
    pub fn totals(&self) -> Sums {
        self.sum(|s, sums| s.all_time(sums))
    }

    /// The event types this key has counted.
    pub fn counted(&self) -> EventTypes {
        EventTypes {
            visits: self.visits.is_some(),
            orders: self.orders.is_some(),
            ad_spend: self.ad_spend.is_some(),
        }
    }

    /// After a restore under the configuration the rings were saved with: rebuilds their
    /// running totals (a series saved without rings gets empty ones).
    pub(crate) fn recompute_totals(&mut self, windows: &Windows) {
        fn one<C: Cell>(s: &mut Option<Box<Series<C>>>, windows: &Windows) {
            if let Some(s) = s {
                if s.fits(windows) {
                    s.recompute_totals(windows);
                } else {
                    **s = s.emptied(windows);
                }
            }
        }
        one(&mut self.visits, windows);
        one(&mut self.orders, windows);
        one(&mut self.ad_spend, windows);
    }

    /// After a restore under another configuration: see [`Series::reshaped`].
    pub(crate) fn reshape_rings(
        &mut self,
        from: &[RingLayout],
        windows: &Windows,
        keep_from: &[i64],
    ) {
        fn one<C: Cell>(
            s: &mut Option<Box<Series<C>>>,
            from: &[RingLayout],
            windows: &Windows,
            keep_from: &[i64],
        ) {
            if let Some(s) = s {
                **s = s.reshaped(from, windows, keep_from);
            }
        }
        one(&mut self.visits, from, windows, keep_from);
        one(&mut self.orders, from, windows, keep_from);
        one(&mut self.ad_spend, from, windows, keep_from);
    }

    /// Cells of this key's rings (all its series have the same layout), if it has any.
    pub(crate) fn ring_cells(&self) -> Option<usize> {
        self.series().map(|s| s.cells()).max()
    }

    /// Adds a replayed event to the buckets being rebuilt (see [`Series::add_below`]).
    pub(crate) fn add_below(
        &mut self,
        windows: &Windows,
        event: &Event<'_>,
        at_ms: i64,
        now_ms: i64,
        below: &[i64],
    ) {
        fn one<C: Cell>(
            s: &mut Option<Box<Series<C>>>,
            windows: &Windows,
            at_ms: i64,
            now_ms: i64,
            cell: C,
            below: &[i64],
        ) {
            s.get_or_insert_with(|| Box::new(Series::new(windows)))
                .add_below(windows, at_ms, now_ms, &cell, below);
        }
        match event.kind {
            EventType::Visit => one(
                &mut self.visits,
                windows,
                at_ms,
                now_ms,
                VisitCell(1),
                below,
            ),
            EventType::Order => {
                let cell = order_cell(event);
                one(&mut self.orders, windows, at_ms, now_ms, cell, below)
            }
            EventType::AdSpend => {
                let cell = SpendCell(event.amount_micros);
                one(&mut self.ad_spend, windows, at_ms, now_ms, cell, below)
            }
        }
    }

    /// True when no window of any of its series holds anything at `now_ms`.
    pub(crate) fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool {
        self.series().all(|s| s.is_idle(windows, now_ms))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.series().map(|s| s.heap_bytes()).sum()
    }
}

/// Which event types a key of a partition has counted: a counter is exported only for those,
/// so a partition of visits does not add a zero `ecom_orders_total` for each of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventTypes {
    pub visits: bool,
    pub orders: bool,
    pub ad_spend: bool,
}

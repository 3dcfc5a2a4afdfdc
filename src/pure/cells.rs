//! What a bucket holds for each event type, and how its totals enter the sums.

use serde::{Deserialize, Serialize};

use crate::pure::kpi::Sums;
use crate::pure::window::{Cell, Series, Windows};

/// How a cell type's totals enter the sums.
pub(crate) trait Counted: Cell {
    /// A window's running total's contribution to the sums.
    fn total_to(total: &Self::Total, sums: &mut Sums);

    /// One bucket's contribution to the sums.
    fn add_to(&self, sums: &mut Sums) {
        let mut total = Self::Total::default();
        self.add_to_total(&mut total);
        Self::total_to(&total, sums);
    }
}

/// Bucket contents for visits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitCell(pub(crate) u32);

impl Cell for VisitCell {
    type Total = u64;
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.saturating_add(other.0);
    }
    fn add_to_total(&self, total: &mut u64) {
        *total += u64::from(self.0);
    }
    fn sub_from_total(&self, total: &mut u64) {
        *total -= u64::from(self.0);
    }
    fn fits(&self, other: &Self) -> bool {
        self.0.fits(&other.0)
    }
    fn fits_under(total: &u64, other: &Self) -> bool {
        u32::fits_under(total, &other.0)
    }
}

impl Counted for VisitCell {
    fn total_to(total: &u64, sums: &mut Sums) {
        sums.visits += total;
    }
}

/// Bucket contents for orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCell {
    pub orders: u32,
    pub new_customers: u32,
    pub gmv_micros: u64,
}

/// Order cells summed over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderTotal {
    pub(crate) orders: u64,
    pub(crate) new_customers: u64,
    pub(crate) gmv_micros: u128,
}

impl Cell for OrderCell {
    type Total = OrderTotal;
    fn merge(&mut self, other: &Self) {
        self.orders = self.orders.saturating_add(other.orders);
        self.new_customers = self.new_customers.saturating_add(other.new_customers);
        self.gmv_micros = self.gmv_micros.saturating_add(other.gmv_micros);
    }
    fn add_to_total(&self, total: &mut OrderTotal) {
        total.orders += u64::from(self.orders);
        total.new_customers += u64::from(self.new_customers);
        total.gmv_micros += u128::from(self.gmv_micros);
    }
    fn sub_from_total(&self, total: &mut OrderTotal) {
        total.orders -= u64::from(self.orders);
        total.new_customers -= u64::from(self.new_customers);
        total.gmv_micros -= u128::from(self.gmv_micros);
    }
    fn fits(&self, other: &Self) -> bool {
        self.orders.fits(&other.orders)
            && self.new_customers.fits(&other.new_customers)
            && self.gmv_micros.fits(&other.gmv_micros)
    }
    fn fits_under(total: &OrderTotal, other: &Self) -> bool {
        u32::fits_under(&total.orders, &other.orders)
            && u32::fits_under(&total.new_customers, &other.new_customers)
            && u64::fits_under(&total.gmv_micros, &other.gmv_micros)
    }
}

impl Counted for OrderCell {
    fn total_to(total: &OrderTotal, sums: &mut Sums) {
        sums.orders += total.orders;
        sums.new_customers += total.new_customers;
        sums.gmv_micros += total.gmv_micros;
    }
}

/// Bucket contents for ad spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendCell(pub(crate) u64);

impl Cell for SpendCell {
    type Total = u128;
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.saturating_add(other.0);
    }
    fn add_to_total(&self, total: &mut u128) {
        *total += u128::from(self.0);
    }
    fn sub_from_total(&self, total: &mut u128) {
        *total -= u128::from(self.0);
    }
    fn fits(&self, other: &Self) -> bool {
        self.0.fits(&other.0)
    }
    fn fits_under(total: &u128, other: &Self) -> bool {
        u64::fits_under(total, &other.0)
    }
}

impl Counted for SpendCell {
    fn total_to(total: &u128, sums: &mut Sums) {
        sums.ad_spend_micros += total;
    }
}

/// Adds a cell to a lazily created series; returns the late mask.
pub(crate) fn count<C: Counted>(
    series: &mut Option<Box<Series<C>>>,
    windows: &Windows,
    at_ms: i64,
    now_ms: i64,
    cell: C,
) -> u32 {
    series
        .get_or_insert_with(|| Box::new(Series::new(windows)))
        .add(windows, at_ms, now_ms, &cell)
}

/// Reads a series of any cell type: into sums, and what eviction and memory accounting ask.
pub(crate) trait SeriesRead {
    fn window(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums);
    fn previous(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums);
    fn all_time(&self, sums: &mut Sums);
    /// See [`Series::touch_heads`].
    fn touch_heads(&self, windows: usize) -> i64;
    fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool;
    fn heap_bytes(&self) -> usize;
    fn cells(&self) -> usize;
}

impl<C: Counted> SeriesRead for Series<C> {
    fn window(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums) {
        C::total_to(&self.window_total(windows, w, now_ms), sums);
    }
    fn previous(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums) {
        self.for_each_in_previous(windows, w, now_ms, |c| c.add_to(sums));
    }
    fn all_time(&self, sums: &mut Sums) {
        C::total_to(Series::all_time(self), sums);
    }
    fn touch_heads(&self, windows: usize) -> i64 {
        Series::touch_heads(self, windows)
    }
    fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool {
        Series::is_idle(self, windows, now_ms)
    }
    fn heap_bytes(&self) -> usize {
        Series::heap_bytes(self)
    }
    fn cells(&self) -> usize {
        Series::cells(self)
    }
}

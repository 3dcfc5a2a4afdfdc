//! A row of KPIs as the JSON API and the KPI feed both give it: one (campaign, channel,
//! window), its sums and ratios, and what the numbers cover.

use serde::{Deserialize, Serialize};

use crate::pure::kpi::{ClvAssumptions, Sums};
use crate::pure::window::Windows;
use crate::runtime::health::Coverage;
use crate::state::store::Snapshot;

/// One row of `/api/v1/kpis`. A label that was grouped away is `null`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct KpiRow {
    pub campaign: Option<String>,
    pub channel: Option<String>,
    pub window: String,
    pub visits: u64,
    pub orders: u64,
    pub new_customers: u64,
    pub gmv: f64,
    pub ad_spend: f64,
    pub cvr: Option<f64>,
    pub aov: Option<f64>,
    pub cac: Option<f64>,
    pub clv: Option<f64>,
    pub roas: Option<f64>,
    pub clv_cac: Option<f64>,
    /// True when the row is the whole truth for its window: the window is whole
    /// (`window_coverage` 1) and this instance holds every partition of the consumed topics.
    pub complete: bool,
    /// How much of the window the numbers cover, 0 to 1: less while a window the
    /// configuration added fills, or when the topics no longer hold all of it.
    pub window_coverage: f64,
    /// Input partitions this instance holds, of all the consumed topics' partitions. Behind
    /// a load balancer in front of several replicas, each answers for its own partitions.
    pub partitions_held: usize,
    pub partitions_total: usize,
}

/// What a row of KPIs covers (see [`KpiRow`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowCoverage {
    pub window: f64,
    pub partitions_held: usize,
    pub partitions_total: usize,
}

impl RowCoverage {
    /// Window `w`'s coverage in `snapshot`, with the partitions `health` holds.
    pub fn of(
        snapshot: &Snapshot,
        windows: &Windows,
        w: usize,
        now_ms: i64,
        partitions: &Coverage,
    ) -> RowCoverage {
        RowCoverage {
            window: snapshot.window_coverage(windows, w, now_ms),
            partitions_held: partitions.held.len(),
            partitions_total: partitions.total,
        }
    }
}

/// The row of `s` for a key (a label grouped away is `None`) and window.
pub fn kpi_row(
    campaign: Option<&str>,
    channel: Option<&str>,
    window: &str,
    s: &Sums,
    clv: &ClvAssumptions,
    covered: &RowCoverage,
) -> KpiRow {
    let k = s.kpis(clv);
    KpiRow {
        campaign: campaign.map(str::to_owned),
        channel: channel.map(str::to_owned),
        window: window.to_owned(),
        visits: s.visits,
        orders: s.orders,
        new_customers: s.new_customers,
        gmv: s.gmv(),
        ad_spend: s.ad_spend(),
        cvr: k.cvr,
        aov: k.aov,
        cac: k.cac,
        clv: k.clv,
        roas: k.roas,
        clv_cac: k.clv_cac,
        complete: covered.window >= 1.0
            && covered.partitions_total > 0
            && covered.partitions_held >= covered.partitions_total,
        window_coverage: covered.window,
        partitions_held: covered.partitions_held,
        partitions_total: covered.partitions_total,
    }
}

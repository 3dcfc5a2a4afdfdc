//! The KPI series of docs/contract.md ("Metrics"), built at scrape time from the window state,
//! and the collectors of the service's own state (partitions, alerts).
//!
//! Nothing here is updated per event: a scrape reads a [`Snapshot`] of the sums and derives
//! every gauge from it, so the numbers in one scrape are consistent with each other and a KPI
//! whose denominator is zero simply has no series.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::alert::AlertView;
use crate::pure::key::Key;
use crate::pure::key_state::EventTypes;
use crate::pure::kpi::{ClvAssumptions, Kpis, Sums};
use crate::pure::rebuild::{COMPLETE, coverage_ratio};
use crate::pure::window::Windows;
use crate::runtime::health::Health;
use crate::state::store::{Snapshot, Store};

/// A windowed gauge: name, help, and how to read it from the sums or KPIs.
struct WindowedMetric {
    name: &'static str,
    help: &'static str,
    value: fn(&Sums, &Kpis) -> Option<f64>,
}

const WINDOWED: &[WindowedMetric] = &[
    WindowedMetric {
        name: "ecom_visits",
        help: "Visit events in the window.",
        value: |s, _| Some(s.visits as f64),
    },
    WindowedMetric {
        name: "ecom_orders",
        help: "Orders in the window.",
        value: |s, _| Some(s.orders as f64),
    },
    WindowedMetric {
        name: "ecom_new_customers",
        help: "Orders with new_customer=true in the window.",
        value: |s, _| Some(s.new_customers as f64),
    },
    WindowedMetric {
        name: "ecom_gmv",
        help: "Sum of order amounts in the window, in the reporting currency (ecom_pulse_info).",
        value: |s, _| Some(s.gmv()),
    },
    WindowedMetric {
        name: "ecom_ad_spend",
        help: "Sum of ad spend in the window, in the reporting currency.",
        value: |s, _| Some(s.ad_spend()),
    },
    WindowedMetric {
        name: "ecom_cvr_ratio",
        help: "Conversion rate: orders / visits (0..1).",
        value: |_, k| k.cvr,
    },
    WindowedMetric {
        name: "ecom_aov",
        help: "Average order value: GMV / orders, in the reporting currency.",
        value: |_, k| k.aov,
    },
    WindowedMetric {
        name: "ecom_cac",
        help: "Customer acquisition cost: ad spend / new customers, in the reporting currency.",
        value: |_, k| k.cac,
    },
    WindowedMetric {
        name: "ecom_clv",
        help: "Customer lifetime value: AOV x purchases per year x lifetime years, in the reporting currency.",
        value: |_, k| k.clv,
    },
    WindowedMetric {
        name: "ecom_roas_ratio",
        help: "Return on ad spend: GMV / ad spend.",
        value: |_, k| k.roas,
    },
    WindowedMetric {
        name: "ecom_clv_cac_ratio",
        help: "CLV / CAC.",
        value: |_, k| k.clv_cac,
    },
];

/// One (key, window) with data, as the exposition writes it: where its label set lies in the
/// shared label buffer, and its windowed values, `values[m]` standing only where bit `m` of
/// `present` is set (a KPI with a zero denominator has no sample): much smaller than a list of
/// `Option<f64>`, and a large scrape holds one per (key, window) (sizes in docs/performance.md).
struct WindowedRow {
    labels: Range<usize>,
    present: u16,
    values: [f64; WINDOWED.len()],
}

const _: () = assert!(
    WINDOWED.len() <= 16,
    "one bit of WindowedRow::present per metric"
);

/// A monotonic counter per key and input partition.
struct TotalMetric {
    name: &'static str,
    help: &'static str,
    value: fn(&Sums) -> f64,
    /// Whether a key of a partition has this counter: it has counted the event type.
    has: fn(&EventTypes) -> bool,
}

const TOTALS: &[TotalMetric] = &[
    TotalMetric {
        name: "ecom_visits_total",
        help: "Visits of this key counted from one input partition (topic, partition) since the key appeared there. The counter moves with its partition and is exported once the partition has caught up, so it never steps down. Totals: sum by (campaign, channel). increase() across rebalances: over campaign_channel_partition:ecom_visits_total:max.",
        value: |s| s.visits as f64,
        has: |t| t.visits,
    },
    TotalMetric {
        name: "ecom_orders_total",
        help: "Orders counted from one input partition, ever (see ecom_visits_total).",
        value: |s| s.orders as f64,
        has: |t| t.orders,
    },
    TotalMetric {
        name: "ecom_new_customers_total",
        help: "Orders with new_customer=true counted from one input partition, ever (see ecom_visits_total).",
        value: |s| s.new_customers as f64,
        has: |t| t.orders,
    },
    TotalMetric {
        name: "ecom_gmv_total",
        help: "Order amounts summed from one input partition, ever, in the reporting currency (see ecom_visits_total).",
        value: Sums::gmv,
        has: |t| t.orders,
    },
    TotalMetric {
        name: "ecom_ad_spend_total",
        help: "Ad spend summed from one input partition, ever, in the reporting currency (see ecom_visits_total).",
        value: Sums::ad_spend,
        has: |t| t.ad_spend,
    },
];

const TRACKED_KEYS: (&str, &str) = (
    "ecom_pulse_tracked_keys",
    "Distinct (campaign, channel) keys held.",
);

/// Renders the KPI families of a snapshot in the Prometheus text format, straight into `out`.
///
/// With 10,000 keys and three windows this is ~350,000 samples per scrape; building the
/// `prometheus` crate's objects for them (three label strings each) took longer than a scrape
/// should. Here each key's label set is escaped once, into one buffer shared by all keys (a
/// string per label set would be an allocation and a free per key and scrape, a visible share
/// of the rendering: docs/performance.md), and each value is written with itoa/zmij. The layout
/// is the crate's encoder's (HELP, TYPE, one family after the other); numbers are spelled as
/// the text format reads them (infinities `+Inf`/`-Inf`, past 1e16 in exponent form), and
/// `promtool check metrics` checks the output in the tests.
pub fn render_kpis(out: &mut String, snapshot: &Snapshot, windows: &Windows, clv: &ClvAssumptions) {
    render_kpis_in_pieces(out, snapshot, windows, clv, usize::MAX, &mut |_| true);
}

/// [`render_kpis`], handing `out` to `flush` whenever it holds `piece` bytes or more (always
/// after a whole sample), so that a large body need never be held whole. `flush` takes the
/// text and returns false when nobody wants the rest (the scraper has gone); rendering then
/// stops, and so does this function, returning false.
pub fn render_kpis_in_pieces(
    out: &mut String,
    snapshot: &Snapshot,
    windows: &Windows,
    clv: &ClvAssumptions,
    piece: usize,
    flush: &mut dyn FnMut(&mut String) -> bool,
) -> bool {
    let mut flushed = |out: &mut String| out.len() < piece || flush(out);
    let entries: usize = snapshot.counters.iter().map(|p| p.keys.len()).sum();
    // Every label set, one after the other; the lists below hold where each one lies.
    let mut labels = String::with_capacity((snapshot.rows.len() * windows.len() + entries) * 80);
    // One key's `campaign="…",channel="…"`, escaped once for its windows and its counters.
    let mut pair = String::new();
    // Every (key, window) with data. Sized up front: growing it would move every entry
    // several times.
    let mut windowed: Vec<WindowedRow> = Vec::with_capacity(snapshot.rows.len() * windows.len());
    for (key, row) in &snapshot.rows {
        key_labels(&mut pair, key);
        for (spec, sums) in windows.specs().iter().zip(&row.windows) {
            if sums.is_empty() {
                continue;
            }
            let kpis = sums.kpis(clv);
            let mut row = WindowedRow {
                labels: 0..0,
                present: 0,
                values: [0.0; WINDOWED.len()],
            };
            for (m, metric) in WINDOWED.iter().enumerate() {
                if let Some(v) = (metric.value)(sums, &kpis) {
                    row.values[m] = v;
                    row.present |= 1 << m;
                }
            }
            let start = labels.len();
            labels.push('{');
            labels.push_str(&pair);
            labels.push_str(",window=\"");
            escape_into(&mut labels, &spec.label);
            labels.push_str("\"}");
            row.labels = start..labels.len();
            windowed.push(row);
        }
    }
    // Every (key, partition) with counters: its label set and where its values are.
    let mut counted: Vec<(Range<usize>, &Sums, &EventTypes)> = Vec::with_capacity(entries);
    let mut partition = String::new();
    for part in &snapshot.counters {
        partition.clear();
        partition.push_str(",topic=\"");
        escape_into(&mut partition, &part.tp.topic);
        partition.push_str("\",partition=\"");
        partition.push_str(itoa::Buffer::new().format(part.tp.partition));
        partition.push_str("\"}");
        for (key, sums, types) in &part.keys {
            key_labels(&mut pair, key);
            let start = labels.len();
            labels.push('{');
            labels.push_str(&pair);
            labels.push_str(&partition);
            counted.push((start..labels.len(), sums, types));
        }
    }
    for (m, metric) in WINDOWED.iter().enumerate() {
        if windowed.iter().all(|w| w.present & 1 << m == 0) {
            continue; // a family without samples is invalid
        }
        header(out, metric.name, metric.help, "gauge");
        for w in &windowed {
            if w.present & 1 << m != 0 {
                sample(out, metric.name, &labels[w.labels.clone()], w.values[m]);
                if !flushed(out) {
                    return false;
                }
            }
        }
    }
    for metric in TOTALS {
        if !counted.iter().any(|(_, _, types)| (metric.has)(types)) {
            continue;
        }
        header(out, metric.name, metric.help, "counter");
        for (at, sums, _) in counted.iter().filter(|(_, _, types)| (metric.has)(types)) {
            sample(out, metric.name, &labels[at.clone()], (metric.value)(sums));
            if !flushed(out) {
                return false;
            }
        }
    }
    header(out, TRACKED_KEYS.0, TRACKED_KEYS.1, "gauge");
    sample(out, TRACKED_KEYS.0, "", snapshot.rows.len() as f64);
    true
}

/// `campaign="…",channel="…"`, escaped, into `pair` (cleared first).
fn key_labels(pair: &mut String, key: &Key) {
    pair.clear();
    pair.push_str("campaign=\"");
    escape_into(pair, &key.campaign);
    pair.push_str("\",channel=\"");
    escape_into(pair, &key.channel);
    pair.push('"');
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    out.push_str(name);
    out.push_str(labels);
    out.push(' ');
    // Integral values (counts, whole amounts) as integers, like the crate's encoder.
    // (`as` saturates and maps NaN to 0, so the round trip holds only for integral values;
    // `fract()` would call libm's `trunc` for every sample.)
    let integral = value as i64;
    if integral as f64 == value && value.abs() < 1e15 {
        out.push_str(itoa::Buffer::new().format(integral));
    } else if value.is_infinite() {
        // The text format's spelling; float formatters write "inf".
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        out.push_str(zmij::Buffer::new().format(value));
    }
    out.push('\n');
}

/// Label-value escaping of the text format: backslash, double quote and newline.
fn escape_into(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Per-partition progress, read at scrape time: watermarks, catch-up after a restore, and
/// de-duplication memory.
pub struct PartitionCollector {
    store: Arc<Store>,
    health: Arc<Health>,
    windows: Windows,
    /// `dedup.horizon`, in seconds.
    dedup_horizon_s: f64,
    descs: Vec<Desc>,
}

const WATERMARK: (&str, &str) = (
    "ecom_pulse_watermark_timestamp_seconds",
    "Newest event time accepted from each assigned partition, Unix seconds.",
);
const ASSIGNED: (&str, &str) = (
    "ecom_pulse_partitions_assigned",
    "Input partitions this instance owns.",
);
const CATCHING_UP: (&str, &str) = (
    "ecom_pulse_partitions_catching_up",
    "Owned partitions not yet caught up with the high watermark they had when assigned.",
);
const DEDUP_IDS: (&str, &str) = (
    "ecom_pulse_dedup_ids",
    "Event ids remembered for de-duplication by the partitions this instance holds.",
);
const DEDUP_EVICTED: (&str, &str) = (
    "ecom_pulse_dedup_evicted_ids",
    "Ids forgotten before the dedup horizon because of dedup.max_ids_per_partition, by the partitions this instance holds.",
);
const STALLED: (&str, &str) = (
    "ecom_pulse_partition_stalled_seconds",
    "How long each owned partition has had lag without advancing (0 while it advances or has no lag): an unreadable batch or a fetch the broker keeps failing.",
);
const COVERAGE: (&str, &str) = (
    "ecom_pulse_window_coverage_ratio",
    "How much of each window the partitions this instance holds cover, 0 to 1 (the least covered partition decides): below 1 while a window the configuration added or changed fills, or where the topics no longer hold all of it. Alerts are not evaluated on a window below 1.",
);
const PRECEDING_COVERAGE: (&str, &str) = (
    "ecom_pulse_preceding_window_coverage_ratio",
    "As ecom_pulse_window_coverage_ratio, for the window of the same length before each window a drop rule compares with.",
);
const UNCONSUMED: (&str, &str) = (
    "ecom_pulse_group_partitions_unconsumed",
    "Partitions of the consumed topics with events waiting whose committed offset has not moved for three checkpoint intervals: consumed by no member of the group, or stalled where they are.",
);
const DEDUP_HORIZON: (&str, &str) = (
    "ecom_pulse_dedup_horizon_seconds",
    "How far back in event time, from the newest event of the partition, every event id is still remembered: dedup.horizon, or less while dedup.max_ids_per_partition forces the oldest ids out early.",
);
const DEDUP_CONFIGURED_HORIZON: (&str, &str) = (
    "ecom_pulse_dedup_configured_horizon_seconds",
    "dedup.horizon: the event-time span within which a repeated event id is promised to count once.",
);
const BEHIND: (&str, &str) = (
    "ecom_pulse_restore_seconds_behind",
    "While partitions catch up after a restore: how far their newest applied event is behind the wall clock (0 when caught up).",
);

impl PartitionCollector {
    pub fn new(
        store: Arc<Store>,
        health: Arc<Health>,
        windows: Windows,
        dedup_horizon: Duration,
    ) -> Self {
        let descs = [
            (COVERAGE, &["window"][..]),
            (PRECEDING_COVERAGE, &["window"][..]),
            (WATERMARK, &["topic", "partition"][..]),
            (STALLED, &["topic", "partition"][..]),
            (ASSIGNED, &[][..]),
            (CATCHING_UP, &[][..]),
            (UNCONSUMED, &[][..]),
            (BEHIND, &[][..]),
            (DEDUP_IDS, &[][..]),
            (DEDUP_EVICTED, &[][..]),
            (DEDUP_HORIZON, &["topic", "partition"][..]),
            (DEDUP_CONFIGURED_HORIZON, &[][..]),
        ]
        .iter()
        .map(|((name, help), labels)| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
                HashMap::new(),
            )
            .expect("valid metric name")
        })
        .collect();
        PartitionCollector {
            store,
            health,
            windows,
            dedup_horizon_s: dedup_horizon.as_secs_f64(),
            descs,
        }
    }
}

impl Collector for PartitionCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = crate::now_ms();
        let catching_up = self.health.catching_up();
        let mut watermarks = family(WATERMARK.0, WATERMARK.1, MetricType::GAUGE);
        let mut horizons = family(DEDUP_HORIZON.0, DEDUP_HORIZON.1, MetricType::GAUGE);
        let mut behind_ms = 0i64;
        let (mut ids, mut evicted) = (0usize, 0u64);
        let partitions = self.store.partitions();
        let mut covered = vec![COMPLETE; self.windows.len()];
        for (tp, state) in &partitions {
            let state = state.read();
            for (c, from) in covered.iter_mut().zip(state.coverage()) {
                *c = (*c).max(from);
            }
            ids += state.dedup().len();
            evicted += state.dedup().evicted();
            let labels = || {
                vec![
                    pair("topic", &tp.topic),
                    pair("partition", &tp.partition.to_string()),
                ]
            };
            let mut m = Metric::from_label(labels());
            m.set_gauge(gauge_value(state.dedup().horizon_ms() as f64 / 1000.0));
            horizons.mut_metric().push(m);
            let Some(watermark) = state.watermark_ms() else {
                continue;
            };
            let mut m = Metric::from_label(labels());
            m.set_gauge(gauge_value(watermark as f64 / 1000.0));
            watermarks.mut_metric().push(m);
            if catching_up.contains(tp) {
                behind_ms = behind_ms.max(now - watermark);
            }
        }
        let single = |(name, help): (&str, &str), v: f64| {
            let mut f = family(name, help, MetricType::GAUGE);
            let mut m = Metric::default();
            m.set_gauge(gauge_value(v));
            f.mut_metric().push(m);
            f
        };
        let mut out = vec![
            single(ASSIGNED, partitions.len() as f64),
            single(CATCHING_UP, catching_up.len() as f64),
            single(UNCONSUMED, self.health.unconsumed() as f64),
            single(BEHIND, behind_ms.max(0) as f64 / 1000.0),
            single(DEDUP_IDS, ids as f64),
            single(DEDUP_EVICTED, evicted as f64),
            single(DEDUP_CONFIGURED_HORIZON, self.dedup_horizon_s),
        ];
        if !watermarks.get_metric().is_empty() {
            out.push(watermarks);
        }
        let mut coverage = family(COVERAGE.0, COVERAGE.1, MetricType::GAUGE);
        let mut preceding = family(
            PRECEDING_COVERAGE.0,
            PRECEDING_COVERAGE.1,
            MetricType::GAUGE,
        );
        for (w, (spec, &from)) in self.windows.specs().iter().zip(&covered).enumerate() {
            let gauge = |at: i64| {
                let mut m = Metric::from_label(vec![pair("window", &spec.label)]);
                let ratio = coverage_ratio(from, self.windows.start_ms(w, at), at);
                m.set_gauge(gauge_value(ratio));
                m
            };
            coverage.mut_metric().push(gauge(now));
            if spec.has_previous() {
                preceding.mut_metric().push(gauge(now - spec.length_ms));
            }
        }
        out.push(coverage);
        if !preceding.get_metric().is_empty() {
            out.push(preceding);
        }
        let mut stalled = family(STALLED.0, STALLED.1, MetricType::GAUGE);
        for (tp, how_long) in self.health.stalled(now) {
            let mut m = Metric::from_label(vec![
                pair("topic", &tp.topic),
                pair("partition", &tp.partition.to_string()),
            ]);
            m.set_gauge(gauge_value(how_long.as_secs_f64()));
            stalled.mut_metric().push(m);
        }
        if !stalled.get_metric().is_empty() {
            out.push(stalled);
        }
        if !horizons.get_metric().is_empty() {
            out.push(horizons);
        }
        out
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(name.to_string());
    p.set_value(value.to_string());
    p
}

/// `ecom_alerts{alertname, alertstate, severity, campaign, channel, window} 1` for every
/// pending or firing alert, like Prometheus' own `ALERTS`.
pub struct AlertCollector {
    view: Arc<AlertView>,
    desc: Desc,
}

const ALERTS: (&str, &str) = (
    "ecom_alerts",
    "Pending and firing alerts of ecom-pulse's own rules; always 1.",
);

impl AlertCollector {
    pub fn new(view: Arc<AlertView>) -> Self {
        let labels = [
            "alertname",
            "alertstate",
            "severity",
            "campaign",
            "channel",
            "window",
        ];
        let desc = Desc::new(
            ALERTS.0.to_string(),
            ALERTS.1.to_string(),
            labels.iter().map(|l| l.to_string()).collect(),
            HashMap::new(),
        )
        .expect("valid metric name");
        AlertCollector { view, desc }
    }
}

impl Collector for AlertCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut f = family(ALERTS.0, ALERTS.1, MetricType::GAUGE);
        for a in self.view.active() {
            let mut m = Metric::from_label(vec![
                pair("alertname", &a.name),
                pair("alertstate", &a.phase.to_string()),
                pair("severity", a.severity.as_str()),
                pair("campaign", &a.key.campaign),
                pair("channel", &a.key.channel),
                pair("window", &a.window),
            ]);
            m.set_gauge(gauge_value(1.0));
            f.mut_metric().push(m);
        }
        if f.get_metric().is_empty() {
            vec![]
        } else {
            vec![f]
        }
    }
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

fn gauge_value(v: f64) -> Gauge {
    let mut g = Gauge::default();
    g.set_value(v);
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::{PartitionCounters, Row, TopicPartition};

    fn render(snapshot: &Snapshot) -> String {
        let mut out = String::new();
        let clv = ClvAssumptions {
            purchases_per_year: 4.0,
            lifetime_years: 3.0,
        };
        render_kpis(
            &mut out,
            snapshot,
            &Windows::from_labels(&["5m", "1h"], 60),
            &clv,
        );
        out
    }

    /// The horizon each partition keeps, and the configured one beside it, for the rule that
    /// compares them.
    #[test]
    fn partitions_export_the_dedup_horizon_they_keep() {
        use crate::pure::dedup::Dedup;
        use crate::state::store::TopicPartition;
        let store = Arc::new(Store::default());
        let horizon_ms = 900_000;
        let full = TopicPartition::new("visits", 0);
        let short = TopicPartition::new("orders", 3);
        store.get_or_insert(&full, || {
            crate::pure::partition::PartitionState::new(Dedup::new(horizon_ms, 1000))
        });
        let state = store.get_or_insert(&short, || {
            crate::pure::partition::PartitionState::new(Dedup::new(horizon_ms, 1000))
        });
        // 1,000 ids a second over the cap of 1,000: one whole generation cannot be held, so
        // the newest event time is all that is promised.
        let mut dedup = Dedup::new(horizon_ms, 1000);
        for i in 0..2000u64 {
            dedup.insert(i, 1_763_798_400_000 + i as i64);
        }
        assert!(dedup.horizon_ms() < horizon_ms);
        let expected = dedup.horizon_ms() as f64 / 1000.0;
        *state.write() = crate::pure::partition::PartitionState::new(dedup);
        let collector = PartitionCollector::new(
            store,
            Arc::new(Health::default()),
            Windows::from_labels(&["5m"], 60),
            Duration::from_millis(horizon_ms as u64),
        );
        let families = collector.collect();
        let gauge = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            families
                .iter()
                .find(|f| f.name() == name)?
                .get_metric()
                .iter()
                .find(|m| {
                    m.get_label().len() == labels.len()
                        && labels.iter().all(|(k, v)| {
                            m.get_label()
                                .iter()
                                .any(|l| l.name() == *k && l.value() == *v)
                        })
                })
                .map(|m| m.get_gauge().get_value())
        };
        assert_eq!(
            gauge("ecom_pulse_dedup_configured_horizon_seconds", &[]),
            Some(900.0)
        );
        let horizon = "ecom_pulse_dedup_horizon_seconds";
        assert_eq!(
            gauge(horizon, &[("topic", "visits"), ("partition", "0")]),
            Some(900.0)
        );
        assert_eq!(
            gauge(horizon, &[("topic", "orders"), ("partition", "3")]),
            Some(expected)
        );
        let evicted = gauge("ecom_pulse_dedup_evicted_ids", &[]).unwrap();
        assert!(evicted >= 1000.0, "{evicted}");
    }

    #[test]
    fn kpis_are_exported_only_where_defined() {
        let mut snap = Snapshot::default();
        snap.rows.insert(
            Key::new("spring", "email"),
            Row {
                previous: vec![Sums::default(); 2],
                windows: vec![
                    Sums {
                        visits: 10_000,
                        orders: 500,
                        gmv_micros: 20_000_000_000,
                        ..Sums::default()
                    },
                    Sums::default(),
                ],
                totals: Sums {
                    visits: 10_000,
                    orders: 500,
                    gmv_micros: 20_000_000_000,
                    ..Sums::default()
                },
            },
        );
        let spring = Key::new("spring", "email");
        let totals = snap.rows[&spring].totals;
        let visits_only = EventTypes {
            visits: true,
            ..EventTypes::default()
        };
        let orders_only = EventTypes {
            orders: true,
            ..EventTypes::default()
        };
        snap.counters = vec![
            PartitionCounters {
                tp: TopicPartition::new("orders", 3),
                keys: vec![(spring.clone(), totals, orders_only)],
            },
            PartitionCounters {
                tp: TopicPartition::new("visits", 3),
                keys: vec![(spring.clone(), totals, visits_only)],
            },
        ];
        let text = render(&snap);
        let l = r#"{campaign="spring",channel="email",window="5m"}"#;
        assert!(
            text.contains(&format!("ecom_cvr_ratio{l} 0.05\n")),
            "{text}"
        );
        assert!(text.contains(&format!("ecom_aov{l} 40\n")));
        assert!(text.contains(&format!("ecom_clv{l} 480\n")));
        assert!(text.contains(&format!("ecom_gmv{l} 20000\n")));
        assert!(text.contains(&format!("ecom_ad_spend{l} 0\n")));
        // No spend, no new customers: no ROAS, CAC or CLV:CAC series at all.
        for absent in ["ecom_roas_ratio{", "ecom_cac{", "ecom_clv_cac_ratio{"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        // The empty 1h window has no series.
        assert!(!text.contains("window=\"1h\""));
        // Counters per partition, each only for the event types it counted.
        let at = |topic: &str| {
            format!(r#"{{campaign="spring",channel="email",topic="{topic}",partition="3"}}"#)
        };
        assert!(text.contains(&format!("ecom_gmv_total{} 20000\n", at("orders"))));
        assert!(text.contains(&format!("ecom_visits_total{} 10000\n", at("visits"))));
        assert!(!text.contains(&format!("ecom_visits_total{}", at("orders"))));
        assert!(!text.contains(&format!("ecom_gmv_total{}", at("visits"))));
        assert!(
            !text.contains("ecom_ad_spend_total"),
            "no partition counted spend"
        );
        assert!(text.contains("# TYPE ecom_visits_total counter"));
        assert!(text.contains("ecom_pulse_tracked_keys 1"));
    }

    #[test]
    fn values_are_spelled_as_the_text_format_reads_them() {
        let spelled = |v: f64| {
            let mut out = String::new();
            sample(&mut out, "m", "", v);
            out.strip_prefix("m ").unwrap().trim_end().to_string()
        };
        // Integral values as integers, like the prometheus crate's encoder.
        assert_eq!(spelled(20_000.0), "20000");
        assert_eq!(spelled(-3.0), "-3");
        assert_eq!(spelled(-0.0), "0");
        // Fractions in the shortest form that reads back to the same f64.
        assert_eq!(spelled(0.05), "0.05");
        assert_eq!(spelled(2.0 / 3.0), "0.6666666666666666");
        assert_eq!(spelled(2.0 / 3.0).parse::<f64>().unwrap(), 2.0 / 3.0);
        // Past 1e15 a float's spelling, not a 16-digit integer; and the format's own words.
        assert_eq!(spelled(1e16), "1e+16");
        assert_eq!(spelled(f64::INFINITY), "+Inf");
        assert_eq!(spelled(f64::NEG_INFINITY), "-Inf");
        assert_eq!(spelled(f64::NAN), "NaN");
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let mut snap = Snapshot::default();
        snap.rows.insert(
            Key::new("a \"quoted\" \\ back\nslash", "x"),
            Row {
                previous: vec![Sums::default(); 2],
                windows: vec![
                    Sums {
                        visits: 1,
                        ..Sums::default()
                    };
                    2
                ],
                totals: Sums::default(),
            },
        );
        let text = render(&snap);
        assert!(
            text.contains(r#"campaign="a \"quoted\" \\ back\nslash""#),
            "{text}"
        );
    }
}

//! The traffic a test sends and what it must add up to: the ledger every exactness check compares with.

use std::collections::BTreeMap;

use super::broker::Msg;
use super::events::{order, spend, visit};
use super::scrape::{Metrics, windowed};

/// Sums per (campaign, channel) of events known to have been produced once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    pub visits: u64,
    pub orders: u64,
    pub new_customers: u64,
    pub gmv_micros: u128,
    pub ad_spend_micros: u128,
}

impl Expected {
    pub fn gmv(&self) -> f64 {
        self.gmv_micros as f64 / 1e6
    }
    pub fn ad_spend(&self) -> f64 {
        self.ad_spend_micros as f64 / 1e6
    }
}

/// Deterministic shop traffic with a ledger of what it produced.
pub struct Traffic {
    pub prefix: String,
    pub campaigns: usize,
    pub channels: &'static [&'static str],
    seq: u64,
    pub ledger: BTreeMap<(String, String), Expected>,
    pub produced: Vec<Msg>,
}

impl Traffic {
    pub fn new(prefix: &str, campaigns: usize, channels: &'static [&'static str]) -> Traffic {
        Traffic {
            prefix: prefix.into(),
            campaigns,
            channels,
            seq: 0,
            ledger: BTreeMap::new(),
            produced: Vec::new(),
        }
    }

    /// The next `n` events (about 85 % visits, 10 % orders, 5 % spend), stamped `ts`, recorded.
    pub fn next(&mut self, n: usize, ts: i64) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            self.seq += 1;
            let s = self.seq;
            let campaign = format!("{}-c{}", self.prefix, s % self.campaigns as u64);
            let channel = self.channels[(s / 7) as usize % self.channels.len()].to_string();
            let id = format!("{}-{s}", self.prefix);
            let e = self
                .ledger
                .entry((campaign.clone(), channel.clone()))
                .or_default();
            let event = match s % 20 {
                0 | 1 => {
                    let cents = 1_000 + (s * 37) % 9_000;
                    let new = s.is_multiple_of(3);
                    e.orders += 1;
                    e.new_customers += u64::from(new);
                    e.gmv_micros += cents as u128 * 10_000;
                    order(&id, ts, 0)
                        .amount_text(format!("{}.{:02}", cents / 100, cents % 100))
                        .new_customer(new)
                }
                2 => {
                    let cents = 500 + (s * 13) % 2_000;
                    e.ad_spend_micros += cents as u128 * 10_000;
                    spend(&id, ts, format!("{}.{:02}", cents / 100, cents % 100))
                }
                _ => {
                    e.visits += 1;
                    visit(&id, ts)
                }
            };
            let m = event.on(&campaign, &channel).msg();
            self.produced.push(Msg {
                topic: m.topic,
                key: m.key.clone(),
                value: m.value.clone(),
            });
            out.push(m);
        }
        out
    }

    pub fn total(&self) -> Expected {
        let mut t = Expected::default();
        for e in self.ledger.values() {
            t.visits += e.visits;
            t.orders += e.orders;
            t.new_customers += e.new_customers;
            t.gmv_micros += e.gmv_micros;
            t.ad_spend_micros += e.ad_spend_micros;
        }
        t
    }

    /// Copies of already produced messages (producer retries, at-least-once upstream).
    pub fn resend(&self, every: usize) -> Vec<Msg> {
        self.produced
            .iter()
            .step_by(every)
            .map(|m| Msg {
                topic: m.topic,
                key: m.key.clone(),
                value: m.value.clone(),
            })
            .collect()
    }
}

/// The per-key counters.
pub const COUNTERS: [&str; 5] = [
    "ecom_visits_total",
    "ecom_orders_total",
    "ecom_new_customers_total",
    "ecom_gmv_total",
    "ecom_ad_spend_total",
];

/// Counter totals summed over every key of one or more scrapes.
pub fn counter_totals(scrapes: &[&Metrics]) -> Expected {
    let sum = |name: &str| scrapes.iter().map(|m| m.sum(name)).sum::<f64>();
    Expected {
        visits: sum("ecom_visits_total") as u64,
        orders: sum("ecom_orders_total") as u64,
        new_customers: sum("ecom_new_customers_total") as u64,
        gmv_micros: (sum("ecom_gmv_total") * 1e6).round() as u128,
        ad_spend_micros: (sum("ecom_ad_spend_total") * 1e6).round() as u128,
    }
}

/// Asserts that, across the scrapes of all instances, every key of the ledger is exported by
/// exactly one instance, with exactly the ledger's sums in every window and counter.
pub fn assert_exact(
    ledger: &BTreeMap<(String, String), Expected>,
    scrapes: &[&Metrics],
    windows: &[&str],
) {
    for ((campaign, channel), e) in ledger {
        let owners: Vec<&&Metrics> = scrapes
            .iter()
            .filter(|m| {
                COUNTERS
                    .iter()
                    .any(|name| m.counter(name, campaign, channel).is_some())
            })
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "{campaign}/{channel} exported by {} instances",
            owners.len()
        );
        let m = owners[0];
        // A counter exists where its partition counted that event type; none is none.
        let c = |name| Some(m.counter(name, campaign, channel).unwrap_or(0.0));
        assert_eq!(
            c("ecom_visits_total"),
            Some(e.visits as f64),
            "{campaign}/{channel} visits_total"
        );
        assert_eq!(
            c("ecom_orders_total"),
            Some(e.orders as f64),
            "{campaign}/{channel} orders_total"
        );
        assert_eq!(c("ecom_new_customers_total"), Some(e.new_customers as f64));
        assert_eq!(
            c("ecom_gmv_total"),
            Some(e.gmv()),
            "{campaign}/{channel} gmv_total"
        );
        assert_eq!(
            c("ecom_ad_spend_total"),
            Some(e.ad_spend()),
            "{campaign}/{channel} ad_spend_total"
        );
        for w in windows {
            let g = |name| m.get(&windowed(name, campaign, channel, w));
            assert_eq!(
                g("ecom_visits"),
                Some(e.visits as f64),
                "{campaign}/{channel} visits {w}"
            );
            assert_eq!(
                g("ecom_orders"),
                Some(e.orders as f64),
                "{campaign}/{channel} orders {w}"
            );
            assert_eq!(g("ecom_new_customers"), Some(e.new_customers as f64));
            assert_eq!(g("ecom_gmv"), Some(e.gmv()), "{campaign}/{channel} gmv {w}");
            assert_eq!(
                g("ecom_ad_spend"),
                Some(e.ad_spend()),
                "{campaign}/{channel} ad_spend {w}"
            );
        }
    }
    let keys: usize = scrapes
        .iter()
        .map(|m| m.get("ecom_pulse_tracked_keys").unwrap_or(0.0) as usize)
        .sum();
    assert_eq!(keys, ledger.len(), "tracked keys across instances");
}

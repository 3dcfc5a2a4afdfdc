//! A short memory of per-campaign sums for the live page's sparklines.
//!
//! Every snapshot interval the sums of each campaign (channels summed) and of the whole fleet
//! in every window are recorded; the last `capacity` samples are kept, so a page opened now
//! shows the last half hour at once instead of starting empty. Bounded: at most
//! `max_campaigns` campaigns (the ones with the most GMV and spend), the rest folded into
//! the fleet line only.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::RwLock;
use serde::Serialize;

use crate::pure::kpi::{ClvAssumptions, Sums};
use crate::state::store::{GroupBy, Snapshot};

/// One campaign's (or the fleet's) line: a value per sample, `null` where undefined.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Line {
    pub roas: Vec<Option<f64>>,
    pub gmv: Vec<Option<f64>>,
    pub ad_spend: Vec<Option<f64>>,
    pub cvr: Vec<Option<f64>>,
    pub aov: Vec<Option<f64>>,
}

/// `GET /api/v1/history?window=…`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HistoryView {
    pub window: String,
    /// Sample times, epoch milliseconds.
    pub at: Vec<i64>,
    pub fleet: Line,
    pub campaigns: BTreeMap<String, Line>,
}

struct Sample {
    at: i64,
    /// Per window: fleet sums, and sums per tracked campaign.
    windows: Vec<(Sums, BTreeMap<String, Sums>)>,
}

pub struct History {
    capacity: usize,
    max_campaigns: usize,
    samples: RwLock<VecDeque<Sample>>,
}

impl History {
    pub fn new(capacity: usize, max_campaigns: usize) -> History {
        History {
            capacity,
            max_campaigns,
            samples: RwLock::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Records a snapshot taken at `at`.
    pub fn record(&self, snapshot: &Snapshot, windows: usize, at: i64) {
        let by_campaign = snapshot.grouped(GroupBy::Campaign);
        let mut per_window = Vec::with_capacity(windows);
        for w in 0..windows {
            let mut fleet = Sums::default();
            let mut campaigns: Vec<(String, Sums)> = by_campaign
                .iter()
                .map(|((campaign, _), row)| {
                    fleet += &row.windows[w];
                    (
                        campaign.as_deref().unwrap_or_default().to_string(),
                        row.windows[w],
                    )
                })
                .filter(|(_, s)| !s.is_empty())
                .collect();
            campaigns.sort_by(|a, b| {
                (b.1.gmv_micros + b.1.ad_spend_micros).cmp(&(a.1.gmv_micros + a.1.ad_spend_micros))
            });
            campaigns.truncate(self.max_campaigns);
            per_window.push((fleet, campaigns.into_iter().collect()));
        }
        let mut samples = self.samples.write();
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(Sample {
            at,
            windows: per_window,
        });
    }

    /// The lines of window `w`, oldest sample first.
    pub fn view(&self, w: usize, label: &str, clv: &ClvAssumptions) -> HistoryView {
        let samples = self.samples.read();
        let mut view = HistoryView {
            window: label.to_string(),
            ..HistoryView::default()
        };
        let names: std::collections::BTreeSet<&String> = samples
            .iter()
            .filter_map(|s| s.windows.get(w))
            .flat_map(|(_, c)| c.keys())
            .collect();
        for name in &names {
            view.campaigns.insert((*name).clone(), Line::default());
        }
        for sample in samples.iter() {
            let Some((fleet, campaigns)) = sample.windows.get(w) else {
                continue;
            };
            view.at.push(sample.at);
            push(&mut view.fleet, Some(fleet), clv);
            for (name, line) in view.campaigns.iter_mut() {
                push(line, campaigns.get(name), clv);
            }
        }
        view
    }
}

fn push(line: &mut Line, sums: Option<&Sums>, clv: &ClvAssumptions) {
    let k = sums.map(|s| s.kpis(clv)).unwrap_or_default();
    line.roas.push(k.roas);
    line.cvr.push(k.cvr);
    line.aov.push(k.aov);
    line.gmv.push(sums.map(Sums::gmv));
    line.ad_spend.push(sums.map(Sums::ad_spend));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::key::Key;
    use crate::state::store::Row;

    const CLV: ClvAssumptions = ClvAssumptions {
        purchases_per_year: 4.0,
        lifetime_years: 3.0,
    };

    fn snap(rows: &[(&str, &str, u128, u128)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (campaign, channel, gmv, spend) in rows {
            let mut row = Row::new(1);
            row.windows[0] = Sums {
                orders: 1,
                gmv_micros: gmv * 1_000_000,
                ad_spend_micros: spend * 1_000_000,
                ..Sums::default()
            };
            s.rows.insert(Key::new(campaign, channel), row);
        }
        s
    }

    #[test]
    fn lines_roll_channels_up_and_keep_the_last_samples() {
        let h = History::new(3, 10);
        h.record(
            &snap(&[("a", "x", 100, 50), ("a", "y", 100, 50), ("b", "x", 30, 10)]),
            1,
            1,
        );
        h.record(&snap(&[("a", "x", 300, 100)]), 1, 2);
        h.record(&snap(&[("b", "x", 30, 10)]), 1, 3);
        h.record(&snap(&[("b", "x", 60, 10)]), 1, 4);
        let v = h.view(0, "5m", &CLV);
        assert_eq!(v.at, [2, 3, 4]);
        assert_eq!(v.campaigns["a"].roas, [Some(3.0), None, None]);
        assert_eq!(v.campaigns["b"].roas, [None, Some(3.0), Some(6.0)]);
        assert_eq!(v.fleet.gmv, [Some(300.0), Some(30.0), Some(60.0)]);
    }

    #[test]
    fn only_the_biggest_campaigns_get_a_line() {
        let h = History::new(10, 1);
        h.record(&snap(&[("small", "x", 1, 1), ("big", "x", 500, 100)]), 1, 1);
        let v = h.view(0, "5m", &CLV);
        assert_eq!(v.campaigns.keys().collect::<Vec<_>>(), ["big"]);
        assert_eq!(
            v.fleet.gmv,
            [Some(501.0)],
            "the fleet line still counts everyone"
        );
    }
}

//! The touches an order is attributed against: each visitor's visits (time, campaign,
//! channel) for the lookback, and which visitors a customer has been identified as. Compact,
//! since a shop has millions of visitors: a visitor is a 64-bit hash of its id and a touch is
//! twelve bytes (its time and an interned key).
//!
//! A visitor's id is kept as its xxh3 hash: two visitors share a path only if their ids
//! collide, about once in 2^64 / n² for n visitors (one in 10^5 at ten million).

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::pure::attribution::Touch;

/// One visit: when, and an index into the interned keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    time_ms: i64,
    key: u32,
}

/// The touches of the visitors one partition of the re-keyed stream holds.
#[derive(Debug, Clone)]
pub struct Touches {
    /// Touches older than this before the newest event are forgotten.
    lookback_ms: i64,
    /// The newest touches kept per visitor; older ones are dropped (and counted).
    max_per_visitor: usize,
    keys: Vec<(Box<str>, Box<str>)>,
    key_ids: HashMap<(Box<str>, Box<str>), u32>,
    visitors: HashMap<u64, SmallVec<[Stamp; 1]>>,
    /// Customer → the visitors it was identified as (several devices, several sessions),
    /// each with when it was last identified.
    customers: HashMap<u64, SmallVec<[(u64, i64); 1]>>,
    /// Touches dropped because a visitor had `max_per_visitor` newer ones.
    pub dropped: u64,
}

fn hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl Touches {
    pub fn new(lookback_ms: i64, max_per_visitor: usize) -> Touches {
        Touches {
            lookback_ms,
            max_per_visitor: max_per_visitor.max(1),
            keys: Vec::new(),
            key_ids: HashMap::new(),
            visitors: HashMap::new(),
            customers: HashMap::new(),
            dropped: 0,
        }
    }

    /// Remembers a visit. Touches stay in time order whatever order they arrive in.
    pub fn visit(&mut self, visitor: &str, time_ms: i64, campaign: &str, channel: &str) {
        let key = self.intern(campaign, channel);
        let max = self.max_per_visitor;
        let path = self.visitors.entry(hash(visitor)).or_default();
        let at = path.partition_point(|s| s.time_ms <= time_ms);
        path.insert(at, Stamp { time_ms, key });
        if path.len() > max {
            path.remove(0);
            self.dropped += 1;
        }
    }

    /// Links a visitor to a customer at `time_ms`: an order by the customer finds the
    /// visitor's touches.
    pub fn identify(&mut self, visitor: &str, customer: &str, time_ms: i64) {
        let visitor = hash(visitor);
        let linked = self.customers.entry(hash(customer)).or_default();
        match linked.iter_mut().find(|(v, _)| *v == visitor) {
            Some((_, at)) => *at = (*at).max(time_ms),
            None => linked.push((visitor, time_ms)),
        }
    }

    /// The touches an order finds, oldest first: its visitor's, and those of every visitor
    /// its customer was identified as.
    pub fn path(&self, visitor: Option<&str>, customer: Option<&str>) -> Vec<Touch> {
        let mut ids: SmallVec<[u64; 2]> = SmallVec::new();
        ids.extend(visitor.map(hash));
        if let Some(linked) = customer.and_then(|c| self.customers.get(&hash(c))) {
            ids.extend(
                linked
                    .iter()
                    .map(|&(v, _)| v)
                    .filter(|v| Some(*v) != visitor.map(hash)),
            );
        }
        let mut out: Vec<Touch> = ids
            .iter()
            .filter_map(|v| self.visitors.get(v))
            .flatten()
            .map(|s| {
                let (campaign, channel) = &self.keys[s.key as usize];
                Touch {
                    time_ms: s.time_ms,
                    campaign: campaign.to_string(),
                    channel: channel.to_string(),
                }
            })
            .collect();
        out.sort();
        out
    }

    /// Forgets touches more than the lookback older than `newest_ms` (the partition's newest
    /// event time), and visitors left with none. A link to a customer stays while its
    /// visitor has touches or it was made within the lookback.
    pub fn expire(&mut self, newest_ms: i64) {
        let oldest = newest_ms.saturating_sub(self.lookback_ms);
        self.visitors.retain(|_, path| {
            let stale = path.partition_point(|s| s.time_ms < oldest);
            path.drain(..stale);
            !path.is_empty()
        });
        let visitors = &self.visitors;
        self.customers.retain(|_, linked| {
            linked.retain(|(v, at)| *at >= oldest || visitors.contains_key(v));
            !linked.is_empty()
        });
    }

    pub fn visitors(&self) -> usize {
        self.visitors.len()
    }

    /// Bytes held on the heap, for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        let map = |slots: usize, entry: usize| slots * (entry + 1);
        let spilled: usize = self
            .visitors
            .values()
            .filter(|p| p.spilled())
            .map(|p| p.capacity() * size_of::<Stamp>())
            .sum();
        map(
            self.visitors.capacity(),
            size_of::<(u64, SmallVec<[Stamp; 1]>)>(),
        ) + spilled
            + map(
                self.customers.capacity(),
                size_of::<(u64, SmallVec<[(u64, i64); 1]>)>(),
            )
            + self
                .keys
                .iter()
                .map(|(a, b)| 2 * (a.len() + b.len()))
                .sum::<usize>()
    }

    fn intern(&mut self, campaign: &str, channel: &str) -> u32 {
        // A lookup by borrowed strings would need a raw-entry API; new keys are rare and a
        // visit's key is usually one seen before, so look up first with a small allocation.
        let key: (Box<str>, Box<str>) = (campaign.into(), channel.into());
        if let Some(&id) = self.key_ids.get(&key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(key.clone());
        self.key_ids.insert(key, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn an_order_finds_its_visitors_touches_and_those_of_its_customers_other_devices() {
        let mut t = Touches::new(30 * DAY, 16);
        t.visit("phone", 3 * DAY, "spring", "paid_social");
        t.visit("laptop", DAY, "brand", "paid_search");
        t.visit("stranger", 2 * DAY, "other", "email");
        t.identify("laptop", "c-1", DAY);
        t.identify("phone", "c-1", 3 * DAY);
        let keys =
            |path: Vec<Touch>| -> Vec<String> { path.into_iter().map(|t| t.campaign).collect() };
        // By customer alone: both devices, oldest first.
        assert_eq!(keys(t.path(None, Some("c-1"))), ["brand", "spring"]);
        // By visitor alone: that device only.
        assert_eq!(keys(t.path(Some("phone"), None)), ["spring"]);
        // Both: no touch twice.
        assert_eq!(
            keys(t.path(Some("phone"), Some("c-1"))),
            ["brand", "spring"]
        );
        assert!(t.path(Some("nobody"), Some("c-2")).is_empty());
    }

    #[test]
    fn touches_expire_at_the_lookback_and_the_newest_are_kept() {
        let mut t = Touches::new(30 * DAY, 2);
        t.visit("v", 0, "a", "email");
        t.visit("v", 10 * DAY, "b", "email");
        t.visit("v", 5 * DAY, "c", "email");
        // Three touches, two kept: the oldest went.
        assert_eq!(t.dropped, 1);
        let campaigns: Vec<String> = t
            .path(Some("v"), None)
            .into_iter()
            .map(|t| t.campaign)
            .collect();
        assert_eq!(campaigns, ["c", "b"]);
        t.identify("v", "c-1", 0);
        t.expire(36 * DAY);
        assert_eq!(t.path(Some("v"), None).len(), 1);
        t.expire(41 * DAY);
        assert_eq!(t.visitors(), 0);
        assert!(t.path(None, Some("c-1")).is_empty());
    }

    /// What a visitor costs: one touch each, ten million of them would take
    /// `visitors × bytes` (printed with `--nocapture`).
    #[test]
    fn a_visitor_with_one_touch_costs_a_few_dozen_bytes() {
        let mut t = Touches::new(30 * DAY, 1);
        let n = 200_000;
        for i in 0..n {
            t.visit(&format!("v{i}"), i as i64, "spring", "paid_social");
        }
        let per_visitor = t.heap_bytes() as f64 / n as f64;
        println!("{per_visitor:.1} bytes a visitor with one touch");
        // 10 M visitors must fit in 2 GiB with room for the rest of the state.
        assert!(
            per_visitor * 10e6 < 1024.0 * 1024.0 * 1024.0,
            "{per_visitor}"
        );
    }

    proptest! {
        /// Against a reference that keeps every event and applies the same expiry: the same
        /// path for every order, when no visitor has more touches than are kept.
        #[test]
        fn paths_match_a_reference_that_keeps_everything(
            events in proptest::collection::vec((0u8..3, 0usize..6, 0usize..4, 0i64..40, 0usize..3), 0..120),
            asked in proptest::collection::vec((proptest::option::of(0usize..6), proptest::option::of(0usize..4)), 1..10),
        ) {
            let lookback = 30;
            let mut t = Touches::new(lookback, 1_000);
            let mut visits: Vec<(usize, Touch)> = Vec::new();
            // Live links: (visitor, customer) → last identified.
            let mut links: std::collections::BTreeMap<(usize, usize), i64> = Default::default();
            let mut newest = i64::MIN;
            for &(kind, visitor, customer, time, campaign) in &events {
                match kind {
                    0 | 1 => {
                        let campaign = ["a", "b", "c"][campaign];
                        t.visit(&format!("v{visitor}"), time, campaign, "email");
                        visits.push((visitor, Touch { time_ms: time, campaign: campaign.into(), channel: "email".into() }));
                    }
                    _ => {
                        t.identify(&format!("v{visitor}"), &format!("c{customer}"), time);
                        let at = links.entry((visitor, customer)).or_insert(time);
                        *at = (*at).max(time);
                    }
                }
                newest = newest.max(time);
                t.expire(newest);
                let oldest = newest.saturating_sub(lookback);
                visits.retain(|(_, touch)| touch.time_ms >= oldest);
                links.retain(|(v, _), at| *at >= oldest || visits.iter().any(|(w, _)| w == v));
            }
            for (visitor, customer) in asked {
                let mut wanted: Vec<usize> = visitor.into_iter().collect();
                for &(v, c) in links.keys() {
                    if Some(c) == customer && !wanted.contains(&v) {
                        wanted.push(v);
                    }
                }
                let mut expected: Vec<Touch> = visits
                    .iter()
                    .filter(|(v, _)| wanted.contains(v))
                    .map(|(_, touch)| touch.clone())
                    .collect();
                expected.sort();
                let got = t.path(
                    visitor.map(|v| format!("v{v}")).as_deref(),
                    customer.map(|c| format!("c{c}")).as_deref(),
                );
                prop_assert_eq!(got, expected);
            }
        }
    }
}

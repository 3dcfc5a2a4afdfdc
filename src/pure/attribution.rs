//! Attribution models: how one order's credit is shared among the touches (visits with a
//! campaign and channel) that preceded it. The first part of attribution in the stream; the
//! join of touches to orders by visitor, and its state, come next.
//!
//! Credit is exact in sums. One order is [`UNIT`] parts; a model's weights are apportioned to
//! whole parts by largest remainder, so the parts of every order add up to exactly one order
//! (and its amount, apportioned the same way in micro-units, to exactly its amount), whatever
//! the model. A touch's share is exact to one part in a million; ties go to the later touch,
//! so the same touches always give the same parts.

use std::collections::BTreeMap;

/// Parts of one order: the resolution of fractional credit.
pub const UNIT: u64 = 1_000_000;

/// One visit a visitor made: when, and through which campaign and channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Touch {
    pub time_ms: i64,
    pub campaign: String,
    pub channel: String,
}

/// How credit is shared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// All of it to the last touch that is not direct (all to the last direct touch when the
    /// whole path is direct): GA4's and Snowplow's default.
    LastNonDirect,
    /// All of it to the first touch.
    FirstTouch,
    /// Equal shares.
    Linear,
    /// 40 % to the first touch, 40 % to the last, 20 % shared by those between (half each
    /// with two touches, all of it with one).
    PositionBased,
    /// Shares halving every `half_life_ms` of the time between a touch and the order.
    TimeDecay { half_life_ms: i64 },
}

/// Which touches count, and how credit is shared among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub model: Model,
    /// Touches older than this before the order get nothing.
    pub lookback_ms: i64,
    /// Channels that are direct or organic: passed over while the path has other touches
    /// (every model, as Snowplow's "ignore direct" path rule), credited when it has none.
    pub direct: Vec<String>,
    /// Channels that never get credit and are removed from the path (payment providers).
    pub excluded: Vec<String>,
}

/// One key's part of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    pub campaign: String,
    pub channel: String,
    /// Parts of the order, out of [`UNIT`].
    pub parts: u64,
    /// Parts of its amount, in micro-units.
    pub amount_micros: u128,
}

impl Attribution {
    /// The credit for an order at `order_ms` of `amount_micros`, given the visitor's touches
    /// (in any order). Empty when no touch counts: the order then keeps the campaign and
    /// channel it carries. Keys with nothing are left out; a key touched several times gets
    /// one credit.
    pub fn credit(&self, touches: &[Touch], order_ms: i64, amount_micros: u128) -> Vec<Credit> {
        let path = self.path(touches, order_ms);
        if path.is_empty() {
            return Vec::new();
        }
        let weights = self.weights(&path);
        let parts = apportion(&weights, UNIT as u128);
        let amounts = apportion(&weights, amount_micros);
        let mut by_key: BTreeMap<(&str, &str), (u64, u128)> = BTreeMap::new();
        for ((touch, parts), amount) in path.iter().zip(parts).zip(amounts) {
            let e = by_key.entry((&touch.campaign, &touch.channel)).or_default();
            e.0 += parts as u64;
            e.1 += amount;
        }
        by_key
            .into_iter()
            .filter(|(_, (parts, amount))| *parts > 0 || *amount > 0)
            .map(|((campaign, channel), (parts, amount_micros))| Credit {
                campaign: campaign.to_string(),
                channel: channel.to_string(),
                parts,
                amount_micros,
            })
            .collect()
    }

    /// The touches that count, oldest first: within the lookback, not after the order, not
    /// excluded, and the direct ones only when there is nothing else.
    fn path<'a>(&self, touches: &'a [Touch], order_ms: i64) -> Vec<&'a Touch> {
        let mut path: Vec<&Touch> = touches
            .iter()
            .filter(|t| t.time_ms <= order_ms && order_ms - t.time_ms <= self.lookback_ms)
            .filter(|t| !self.excluded.contains(&t.channel))
            .collect();
        path.sort();
        if path.iter().any(|t| !self.direct.contains(&t.channel)) {
            path.retain(|t| !self.direct.contains(&t.channel));
        }
        path
    }

    /// The model's weight for each touch of a non-empty path, in path order.
    fn weights(&self, path: &[&Touch]) -> Vec<f64> {
        let n = path.len();
        let mut w = vec![0.0; n];
        match self.model {
            Model::LastNonDirect => w[n - 1] = 1.0,
            Model::FirstTouch => w[0] = 1.0,
            Model::Linear => w.fill(1.0),
            Model::PositionBased => match n {
                1 => w[0] = 1.0,
                2 => w.fill(0.5),
                _ => {
                    w.fill(0.2 / (n - 2) as f64);
                    w[0] = 0.4;
                    w[n - 1] = 0.4;
                }
            },
            Model::TimeDecay { half_life_ms } => {
                // Relative to the newest touch (weight 1), which gives the same shares as
                // relative to the order and never underflows to all zeros.
                let newest = path[n - 1].time_ms;
                for (w, t) in w.iter_mut().zip(path) {
                    let age = (newest - t.time_ms) as f64;
                    *w = (-age / half_life_ms.max(1) as f64).exp2();
                }
            }
        }
        w
    }
}

/// Splits `total` in proportion to `weights` (not all zero) into whole amounts that add up to
/// exactly `total`: each gets the floor of its share, and what is left goes one each to the
/// largest remainders (the later index on a tie).
fn apportion(weights: &[f64], total: u128) -> Vec<u128> {
    let sum: f64 = weights.iter().sum();
    let shares: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut out: Vec<u128> = shares
        .iter()
        .map(|s| (s.floor() as u128).min(total))
        .collect();
    let given: u128 = out.iter().sum();
    // Floating point can leave the floors a little over as well as under.
    let mut left = total as i128 - given as i128;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (shares[a] - shares[a].floor(), shares[b] - shares[b].floor());
        rb.total_cmp(&ra).then(b.cmp(&a))
    });
    let mut i = 0;
    while left > 0 {
        out[order[i % order.len()]] += 1;
        left -= 1;
        i += 1;
    }
    while left < 0 {
        let j = order[order.len() - 1 - (i % order.len())];
        if out[j] > 0 {
            out[j] -= 1;
            left += 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DAY: i64 = 86_400_000;
    const T: i64 = 1_795_334_400_000;

    fn touch(days_before: i64, campaign: &str, channel: &str) -> Touch {
        Touch {
            time_ms: T - days_before * DAY,
            campaign: campaign.into(),
            channel: channel.into(),
        }
    }

    fn with(model: Model) -> Attribution {
        Attribution {
            model,
            lookback_ms: 30 * DAY,
            direct: vec!["(none)".into(), "direct".into()],
            excluded: vec!["paypal".into()],
        }
    }

    fn shares(a: &Attribution, touches: &[Touch]) -> Vec<(String, u64)> {
        a.credit(touches, T, 100_000_000)
            .into_iter()
            .map(|c| (c.campaign, c.parts))
            .collect()
    }

    /// A journey: social ad, then search, then a direct visit and a payment redirect.
    fn journey() -> Vec<Touch> {
        vec![
            touch(10, "spring", "paid_social"),
            touch(3, "brand", "paid_search"),
            touch(1, "(none)", "direct"),
            touch(0, "(none)", "paypal"),
        ]
    }

    #[test]
    fn last_non_direct_click_passes_over_direct_visits_and_payment_providers() {
        let got = shares(&with(Model::LastNonDirect), &journey());
        assert_eq!(got, [("brand".to_string(), UNIT)]);
        // A path of direct visits only credits the last of them.
        let direct = [touch(2, "(none)", "direct"), touch(1, "(none)", "(none)")];
        let got = with(Model::LastNonDirect).credit(&direct, T, 5);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].channel.as_str(), got[0].parts), ("(none)", UNIT));
    }

    #[test]
    fn first_touch_linear_and_position_based_share_as_documented() {
        assert_eq!(
            shares(&with(Model::FirstTouch), &journey()),
            [("spring".to_string(), UNIT)]
        );
        let three = [
            touch(9, "a", "email"),
            touch(5, "b", "display"),
            touch(1, "c", "paid_search"),
        ];
        let linear = shares(&with(Model::Linear), &three);
        assert_eq!(
            linear,
            [
                ("a".to_string(), 333_333),
                ("b".to_string(), 333_333),
                // The remainder goes to the later touch on a tie.
                ("c".to_string(), 333_334)
            ]
        );
        let position = shares(&with(Model::PositionBased), &three);
        assert_eq!(
            position,
            [
                ("a".to_string(), 400_000),
                ("b".to_string(), 200_000),
                ("c".to_string(), 400_000)
            ]
        );
        let two = shares(&with(Model::PositionBased), &three[1..]);
        assert_eq!(
            two,
            [("b".to_string(), 500_000), ("c".to_string(), 500_000)]
        );
    }

    #[test]
    fn time_decay_halves_a_touch_one_half_life_older() {
        let model = with(Model::TimeDecay {
            half_life_ms: 7 * DAY,
        });
        let got = shares(
            &model,
            &[touch(7, "old", "email"), touch(0, "new", "email")],
        );
        // Weights 1/2 and 1: a third and two thirds.
        assert_eq!(
            got,
            [("new".to_string(), 666_667), ("old".to_string(), 333_333)]
        );
    }

    #[test]
    fn touches_outside_the_lookback_or_after_the_order_get_nothing() {
        let touches = [
            touch(31, "stale", "email"),
            touch(-1, "later", "email"),
            touch(29, "kept", "email"),
        ];
        assert_eq!(
            shares(&with(Model::Linear), &touches),
            [("kept".to_string(), UNIT)]
        );
        assert!(
            with(Model::Linear)
                .credit(&[touch(40, "x", "email")], T, 1)
                .is_empty()
        );
    }

    #[test]
    fn a_key_touched_twice_gets_one_credit_with_both_shares() {
        let touches = [
            touch(4, "a", "email"),
            touch(2, "b", "email"),
            touch(1, "a", "email"),
        ];
        let got = with(Model::Linear).credit(&touches, T, 300);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].parts, got[0].amount_micros), (666_667, 200));
        assert_eq!((got[1].parts, got[1].amount_micros), (333_333, 100));
    }

    fn model() -> impl Strategy<Value = Model> {
        prop_oneof![
            Just(Model::LastNonDirect),
            Just(Model::FirstTouch),
            Just(Model::Linear),
            Just(Model::PositionBased),
            (1i64..60 * DAY).prop_map(|half_life_ms| Model::TimeDecay { half_life_ms }),
        ]
    }

    proptest! {
        /// Whatever the model and the touches, an order's parts add up to exactly one order
        /// and its amount to exactly its amount, or nothing is credited at all; only keys of
        /// counted touches get anything; and the touches' order does not matter.
        #[test]
        fn credit_adds_up_to_exactly_one_order(
            model in model(),
            raw in proptest::collection::vec((0i64..40 * DAY, 0usize..4, 0usize..5), 0..40),
            amount in 0u128..10_000_000_000,
        ) {
            let campaigns = ["a", "b", "c", "(none)"];
            let channels = ["email", "paid_search", "direct", "(none)", "paypal"];
            let touches: Vec<Touch> = raw
                .iter()
                .map(|&(before, c, ch)| Touch {
                    time_ms: T - before,
                    campaign: campaigns[c].into(),
                    channel: channels[ch].into(),
                })
                .collect();
            let a = with(model);
            let credit = a.credit(&touches, T, amount);
            let counted = touches
                .iter()
                .any(|t| T - t.time_ms <= a.lookback_ms && t.channel != "paypal");
            prop_assert_eq!(credit.is_empty(), !counted);
            if counted {
                prop_assert_eq!(credit.iter().map(|c| c.parts).sum::<u64>(), UNIT);
                prop_assert_eq!(credit.iter().map(|c| c.amount_micros).sum::<u128>(), amount);
            }
            for c in &credit {
                prop_assert!(c.channel != "paypal");
                prop_assert!(touches
                    .iter()
                    .any(|t| t.campaign == c.campaign && t.channel == c.channel));
            }
            let mut reversed = touches.clone();
            reversed.reverse();
            prop_assert_eq!(a.credit(&reversed, T, amount), credit);
        }
    }
}

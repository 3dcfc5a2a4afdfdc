//! Synthetic shop traffic for `ecom-pulse demo` and `ecom-pulse generate`.
//!
//! Several campaigns over several channels, each with its own conversion rate, order value,
//! share of new customers and cost per visit, so every KPI has something to show. One
//! campaign's cost per visit climbs over the first ten minutes, driving its ROAS from about
//! 3.2 to about 1.4: below the break-even alert threshold of 2. A small share of the traffic
//! is deliberately bad (malformed JSON, unknown types, missing fields, re-sent duplicates) so
//! the rejection counters have something to count too. Messages are keyed by campaign, which
//! co-partitions the three topics.

use crate::config::KafkaProperties;
use crate::source::client::Quiet;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_util::sync::CancellationToken;

/// One campaign on one channel.
#[derive(Debug, Clone)]
pub struct Profile {
    pub campaign: &'static str,
    pub channel: &'static str,
    /// Share of all visits.
    pub weight: f64,
    pub cvr: f64,
    /// Mean order value, in `currency`.
    pub aov: f64,
    pub new_customer_share: f64,
    /// Ad spend per visit, in `currency`; 0 for unpaid channels.
    pub cost_per_visit: f64,
    pub currency: &'static str,
    /// Cost per visit multiplier reached after `drift_over`; 1 for a stable campaign.
    pub drift_to: f64,
}

/// How long the drifting campaign takes to reach its final cost.
pub const DRIFT_OVER: Duration = Duration::from_secs(600);

pub fn default_profiles() -> Vec<Profile> {
    let p = |campaign,
             channel,
             weight,
             cvr,
             aov,
             new_customer_share,
             cost_per_visit,
             currency,
             drift_to| Profile {
        campaign,
        channel,
        weight,
        cvr,
        aov,
        new_customer_share,
        cost_per_visit,
        currency,
        drift_to,
    };
    vec![
        // ROAS = cvr x aov / cost per visit.
        p(
            "spring_sale",
            "paid_social",
            0.22,
            0.030,
            60.0,
            0.60,
            0.45,
            "USD",
            1.0,
        ), // 4.0
        p(
            "spring_sale",
            "paid_search",
            0.13,
            0.050,
            55.0,
            0.50,
            0.90,
            "USD",
            1.0,
        ), // 3.1
        p(
            "brand_search",
            "paid_search",
            0.15,
            0.060,
            70.0,
            0.30,
            0.70,
            "USD",
            1.0,
        ), // 6.0
        p(
            "retargeting",
            "display",
            0.10,
            0.040,
            45.0,
            0.06,
            0.60,
            "USD",
            1.0,
        ), // 3.0; few new customers: CLV:CAC = 12 x ROAS x new share ~ 2.2, below 3
        p(
            "newsletter",
            "email",
            0.15,
            0.045,
            50.0,
            0.05,
            0.0,
            "USD",
            1.0,
        ), // no spend
        p(
            "influencer_q4",
            "paid_social",
            0.12,
            0.025,
            80.0,
            0.70,
            0.62,
            "USD",
            2.3,
        ), // 3.2 -> 1.4
        p(
            "affiliate_eu",
            "affiliate",
            0.13,
            0.035,
            40.0,
            0.40,
            0.35,
            "EUR",
            1.0,
        ), // 4.0
    ]
}

/// Which of the three topics a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Visits,
    Orders,
    AdSpend,
}

/// One message to produce.
#[derive(Debug, Clone)]
pub struct Produced {
    pub stream: Stream,
    /// The campaign: the partitioning key.
    pub key: String,
    pub payload: String,
}

/// Deterministic for a given seed and sequence of `tick` calls.
pub struct Generator {
    rng: SmallRng,
    profiles: Vec<Profile>,
    run_id: u32,
    seq: u64,
    start_ms: i64,
    /// Fractional visits and spend carried between ticks, per profile.
    visit_carry: Vec<f64>,
    spend_carry: Vec<f64>,
    /// Share of messages that are deliberately bad.
    bad_ratio: f64,
    last_payload: Option<Produced>,
}

const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];

impl Generator {
    pub fn new(seed: u64, start_ms: i64, bad_ratio: f64) -> Generator {
        let mut rng = SmallRng::seed_from_u64(seed);
        let profiles = default_profiles();
        Generator {
            run_id: rng.random(),
            visit_carry: vec![0.0; profiles.len()],
            spend_carry: vec![0.0; profiles.len()],
            rng,
            profiles,
            seq: 0,
            start_ms,
            bad_ratio,
            last_payload: None,
        }
    }

    fn next_id(&mut self, prefix: char) -> String {
        self.seq += 1;
        format!("{prefix}-{:08x}-{}", self.run_id, self.seq)
    }

    /// A timestamp near `now_ms`, in either of the two accepted forms; now and then a few
    /// seconds late, as real producers are.
    fn timestamp(&mut self, now_ms: i64) -> String {
        let late = if self.rng.random_bool(0.01) {
            self.rng.random_range(0..30_000)
        } else {
            0
        };
        let ts = now_ms - late;
        if self.rng.random_bool(0.5) {
            ts.to_string()
        } else {
            let t = chrono::DateTime::from_timestamp_millis(ts).expect("a valid time");
            format!("\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
        }
    }

    /// Cost multiplier of a profile at `now_ms`.
    fn drift(&self, profile: &Profile, now_ms: i64) -> f64 {
        let progress =
            ((now_ms - self.start_ms) as f64 / DRIFT_OVER.as_millis() as f64).clamp(0.0, 1.0);
        1.0 + (profile.drift_to - 1.0) * progress
    }

    /// The messages for `dt_ms` of traffic at `visits_per_sec`, ending at `now_ms`.
    pub fn tick(&mut self, now_ms: i64, dt_ms: i64, visits_per_sec: f64) -> Vec<Produced> {
        let mut out = Vec::new();
        for i in 0..self.profiles.len() {
            let profile = self.profiles[i].clone();
            let expected =
                visits_per_sec * profile.weight * dt_ms as f64 / 1000.0 + self.visit_carry[i];
            let visits = expected.floor() as u64;
            self.visit_carry[i] = expected - visits as f64;
            for _ in 0..visits {
                out.push(self.visit(&profile, now_ms));
                if self.rng.random_bool(profile.cvr) {
                    out.push(self.order(&profile, now_ms));
                }
            }
            if profile.cost_per_visit > 0.0 {
                self.spend_carry[i] +=
                    visits as f64 * profile.cost_per_visit * self.drift(&profile, now_ms);
                // Ad platforms report spend in lumps; send it once it reaches a few units.
                if self.spend_carry[i] >= 5.0 {
                    let amount = (self.spend_carry[i] * 100.0).round() / 100.0;
                    self.spend_carry[i] = 0.0;
                    out.push(self.spend(&profile, now_ms, amount));
                }
            }
        }
        if let Some(last) = out.iter().rev().find(|p| p.stream == Stream::Visits) {
            self.last_payload = Some(last.clone());
        }
        if self.bad_ratio > 0.0 {
            let bad = (out.len() as f64 * self.bad_ratio).round() as usize
                + usize::from(
                    self.rng
                        .random_bool((out.len() as f64 * self.bad_ratio).fract().clamp(0.0, 1.0)),
                );
            for _ in 0..bad {
                out.push(self.bad(now_ms));
            }
        }
        out
    }

    fn visit(&mut self, p: &Profile, now_ms: i64) -> Produced {
        let id = self.next_id('v');
        let ts = self.timestamp(now_ms);
        let visitor: u32 = self.rng.random_range(0..1_000_000);
        let device = DEVICES[self.rng.random_range(0..DEVICES.len())];
        Produced {
            stream: Stream::Visits,
            key: p.campaign.to_string(),
            payload: format!(
                r#"{{"type":"visit","event_id":"{id}","timestamp":{ts},"visitor_id":"u-{visitor}","campaign":"{}","channel":"{}","device":"{device}"}}"#,
                p.campaign, p.channel
            ),
        }
    }

    fn order(&mut self, p: &Profile, now_ms: i64) -> Produced {
        let id = self.next_id('o');
        let ts = self.timestamp(now_ms);
        let amount = (p.aov * self.rng.random_range(0.4..1.6) * 100.0).round() / 100.0;
        let new = self.rng.random_bool(p.new_customer_share);
        let customer: u32 = self.rng.random_range(0..200_000);
        // Both amount forms appear, as they do in the wild.
        let amount = if self.rng.random_bool(0.5) {
            format!("{amount}")
        } else {
            format!("\"{amount:.2}\"")
        };
        Produced {
            stream: Stream::Orders,
            key: p.campaign.to_string(),
            payload: format!(
                r#"{{"type":"order","event_id":"{id}","timestamp":{ts},"order_id":"{id}","customer_id":"c-{customer}","amount":{amount},"currency":"{}","new_customer":{new},"campaign":"{}","channel":"{}"}}"#,
                p.currency, p.campaign, p.channel
            ),
        }
    }

    fn spend(&mut self, p: &Profile, now_ms: i64, amount: f64) -> Produced {
        let id = self.next_id('s');
        let ts = self.timestamp(now_ms);
        Produced {
            stream: Stream::AdSpend,
            key: p.campaign.to_string(),
            payload: format!(
                r#"{{"type":"ad_spend","event_id":"{id}","timestamp":{ts},"campaign":"{}","channel":"{}","amount":{amount},"currency":"{}"}}"#,
                p.campaign, p.channel, p.currency
            ),
        }
    }

    fn bad(&mut self, now_ms: i64) -> Produced {
        let id = self.next_id('x');
        let ts = self.timestamp(now_ms);
        let payload = match self.rng.random_range(0..5) {
            0 => format!(r#"{{"type":"visit","event_id":"{id}","campaign":"#),
            1 => format!(r#"{{"type":"click","event_id":"{id}","timestamp":{ts}}}"#),
            2 => format!(
                r#"{{"type":"order","event_id":"{id}","timestamp":{ts},"campaign":"spring_sale"}}"#
            ),
            3 => format!(
                r#"{{"type":"order","event_id":"{id}","timestamp":{ts},"amount":10,"currency":"XYZ","campaign":"spring_sale"}}"#
            ),
            _ => match &self.last_payload {
                // A producer retry: the same event again.
                Some(last) => return last.clone(),
                None => format!(r#"{{"type":"visit","event_id":"","timestamp":{ts}}}"#),
            },
        };
        Produced {
            stream: Stream::Visits,
            key: "spring_sale".to_string(),
            payload,
        }
    }
}

/// Channels of the synthetic load (benchmarks, `bench/`): keys are campaign × channel.
const LOAD_CHANNELS: [&str; 10] = [
    "paid_social",
    "paid_search",
    "email",
    "display",
    "affiliate",
    "organic",
    "referral",
    "video",
    "sms",
    "push",
];

/// The `i`-th event of a synthetic load over `keys` (campaign, channel) pairs, stamped `ts_ms`:
/// 90 % visits, 6 % orders, 4 % spend, both timestamp and amount forms, the fields real
/// producers send. Returns the stream, the partitioning key (campaign) and the JSON.
pub fn synthetic(i: usize, keys: usize, ts_ms: i64, tag: &str) -> (Stream, String, String) {
    let key = i.wrapping_mul(2_654_435_761) % keys.max(1);
    let campaign = format!("campaign_{:05}", key / LOAD_CHANNELS.len());
    let channel = LOAD_CHANNELS[key % LOAD_CHANNELS.len()];
    let (stream, json) = match i % 50 {
        0..=2 => (
            Stream::Orders,
            format!(
                r#"{{"type":"order","event_id":"{tag}-{i}","timestamp":{ts_ms},"order_id":"o-{i}","customer_id":"c-{i}","amount":"49.90","currency":"USD","new_customer":true,"campaign":"{campaign}","channel":"{channel}"}}"#
            ),
        ),
        3 => {
            let t = chrono::DateTime::from_timestamp_millis(ts_ms).unwrap_or_default();
            (
                Stream::AdSpend,
                format!(
                    r#"{{"type":"ad_spend","event_id":"{tag}-{i}","timestamp":"{}","campaign":"{campaign}","channel":"{channel}","amount":12.5,"currency":"EUR"}}"#,
                    t.format("%Y-%m-%dT%H:%M:%S%.3fZ")
                ),
            )
        }
        4..=5 => (
            Stream::AdSpend,
            format!(
                r#"{{"type":"ad_spend","event_id":"{tag}-{i}","timestamp":{ts_ms},"campaign":"{campaign}","channel":"{channel}","amount":12.5}}"#
            ),
        ),
        _ => (
            Stream::Visits,
            format!(
                r#"{{"type":"visit","event_id":"{tag}-{i}","timestamp":{ts_ms},"visitor_id":"u-{i}","campaign":"{campaign}","channel":"{channel}","device":"mobile"}}"#
            ),
        ),
    };
    (stream, campaign, json)
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("kafka.topics must name at least one topic")]
    NoTopics,
}

/// Produces generated traffic to `brokers` until `shutdown`. `topics` are visits, orders and
/// ad spend in that order; with fewer, the first one takes the rest. Blocking: run it on a
/// thread of its own.
pub fn run(
    brokers: &str,
    topics: &[String],
    visits_per_sec: f64,
    bad_ratio: f64,
    properties: &KafkaProperties,
    shutdown: CancellationToken,
) -> Result<u64, GenerateError> {
    let topic_for = |s: Stream| -> Option<&str> {
        let i = match s {
            Stream::Visits => 0,
            Stream::Orders => 1,
            Stream::AdSpend => 2,
        };
        topics.get(i).or(topics.first()).map(String::as_str)
    };
    topic_for(Stream::Visits).ok_or(GenerateError::NoTopics)?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "ecom-pulse-generator")
        .set("linger.ms", "20");
    for (k, v) in properties {
        config.set(k, v);
    }
    let producer: BaseProducer<Quiet> = config
        .create_with_context(Quiet {
            client: "generator",
            redactor: properties.redactor(),
        })
        .map_err(GenerateError::Producer)?;
    let seed = crate::now_ms() as u64;
    let mut generator = Generator::new(seed, crate::now_ms(), bad_ratio);
    let tick = Duration::from_millis(100);
    let mut next = Instant::now();
    let mut sent = 0u64;
    let mut last_ms = crate::now_ms();
    while !shutdown.is_cancelled() {
        let now_ms = crate::now_ms();
        for message in generator.tick(now_ms, now_ms - last_ms, visits_per_sec) {
            let topic = topic_for(message.stream).expect("checked above");
            let mut record = BaseRecord::to(topic)
                .key(&message.key)
                .payload(&message.payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(50));
                        if shutdown.is_cancelled() {
                            break;
                        }
                    }
                    Err((e, _)) => {
                        tracing::warn!(error = %e, "cannot produce a generated event");
                        break;
                    }
                }
            }
            sent += 1;
        }
        last_ms = now_ms;
        producer.poll(Duration::ZERO);
        next += tick;
        // Pacing, not synchronisation: the generator emits traffic at a steady rate.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let _ = producer.flush(Duration::from_secs(5));
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::decode::{Decoder, EventType};
    use crate::pure::kpi::ClvAssumptions;
    use crate::pure::pipeline::{Outcome, Pipeline};
    use crate::pure::window::Windows;
    use crate::state::store::{Store, TopicPartition};

    #[test]
    fn generated_traffic_decodes_and_drifts_one_campaign_below_break_even() {
        let start = 1_763_798_400_000;
        let mut g = Generator::new(7, start, 0.0);
        let pipeline = Pipeline {
            decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
            windows: Windows::from_labels(&["5m"], 60),
            max_future_skew_ms: 60_000,
            dedup_horizon_ms: 900_000,
            dedup_max_ids: 10_000_000,
            limits: Default::default(),
        };
        let store = Store::default();
        let part = store.get_or_insert(&TopicPartition::new("t", 0), || pipeline.new_partition());
        // 15 minutes of traffic at 200 visits/s.
        let mut now = start;
        let mut kinds = [0usize; 3];
        while now < start + 15 * 60_000 {
            now += 1000;
            for m in g.tick(now, 1000, 200.0) {
                match pipeline.process(&mut part.write(), m.payload.as_bytes(), now, now) {
                    Outcome::Accepted { kind, .. } => kinds[kind.index()] += 1,
                    other => panic!("{other:?} for {}", m.payload),
                }
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
        let snap = store.snapshot(&pipeline.windows, now);
        let clv = ClvAssumptions {
            purchases_per_year: 4.0,
            lifetime_years: 3.0,
        };
        let campaigns: std::collections::BTreeSet<_> =
            snap.rows.keys().map(|k| k.campaign.clone()).collect();
        assert!(campaigns.len() >= 5);
        let roas = |campaign: &str| {
            let row = snap
                .rows
                .iter()
                .find(|(k, _)| &*k.campaign == campaign)
                .unwrap()
                .1;
            row.windows[0].kpis(&clv).roas.unwrap()
        };
        assert!(roas("influencer_q4") < 2.0, "{}", roas("influencer_q4"));
        assert!(roas("brand_search") > 4.0, "{}", roas("brand_search"));
        // The dashboard's alert panel needs one rule pending within minutes: retargeting's
        // CLV:CAC sits clearly under 3 (and every other campaign's clearly above).
        for (key, row) in &snap.rows {
            if let Some(ratio) = row.windows[0].kpis(&clv).clv_cac {
                let retargeting = &*key.campaign == "retargeting";
                assert_eq!(ratio < 3.0, retargeting, "{key:?}: CLV:CAC {ratio}");
            }
        }
        assert!(kinds[EventType::Visit.index()] > kinds[EventType::Order.index()]);
    }

    #[test]
    fn bad_traffic_is_mixed_in_when_asked() {
        let mut g = Generator::new(1, 0, 0.05);
        let pipeline = Pipeline {
            decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
            windows: Windows::from_labels(&["5m"], 60),
            max_future_skew_ms: 60_000,
            dedup_horizon_ms: 900_000,
            dedup_max_ids: 1_000_000,
            limits: Default::default(),
        };
        let mut state = pipeline.new_partition();
        let (mut rejected, mut duplicates) = (0, 0);
        let mut now = 1_763_798_400_000;
        for _ in 0..100 {
            now += 1000;
            for m in g.tick(now, 1000, 100.0) {
                match pipeline.process(&mut state, m.payload.as_bytes(), now, now) {
                    Outcome::Rejected(_) => rejected += 1,
                    Outcome::Duplicate => duplicates += 1,
                    Outcome::Accepted { .. } | Outcome::Rebuilt { .. } => {}
                }
            }
        }
        assert!(rejected > 100, "{rejected}");
        assert!(duplicates > 10, "{duplicates}");
    }
}

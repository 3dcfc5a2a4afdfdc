//! The service's ticker, the periodic task around the alert [`Engine`]: evaluate on a snapshot, log and publish the
//! transitions, hand firing alerts to the Alertmanager notifier; and, on its own cadence,
//! send KPI snapshots and record the live page's history.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::notify::Update;
use crate::alert::{Alert, AlertView, Engine, Phase, ResolvedReason};
use crate::pure::kpi::ClvAssumptions;
use crate::pure::window::Windows;
use crate::read::feed::Feed;
use crate::read::history::History;
use crate::runtime::health::Health;
use crate::runtime::telemetry::Telemetry;
use crate::state::store::{Snapshot, Store};

pub struct Ticker {
    pub engine: Engine,
    pub store: Arc<Store>,
    pub windows: Windows,
    pub clv: ClvAssumptions,
    pub view: Arc<AlertView>,
    pub health: Arc<Health>,
    pub telemetry: Arc<Telemetry>,
    pub notifier: Option<mpsc::Sender<Update>>,
    pub feed: Option<Arc<Feed>>,
    pub history: Arc<History>,
    pub evaluation_interval: Duration,
    pub snapshot_interval: Duration,
}

impl Ticker {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut evaluate = tokio::time::interval(self.evaluation_interval);
        // On multiples of the interval in wall-clock time, so that every instance's snapshots
        // carry the same `at` and a consumer of the feed can add them up.
        let every = self.snapshot_interval.as_millis().max(1) as i64;
        let now = crate::now_ms();
        let next = tokio::time::Instant::now()
            + Duration::from_millis((every - now.rem_euclid(every)) as u64);
        let mut publish = tokio::time::interval_at(next, self.snapshot_interval);
        for tick in [&mut evaluate, &mut publish] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        }
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = evaluate.tick() => self.evaluate().await,
                _ = publish.tick() => self.publish().await,
            }
        }
    }

    async fn snapshot(&self) -> (Snapshot, i64) {
        let store = self.store.clone();
        let windows = self.windows.clone();
        tokio::task::spawn_blocking(move || {
            let now = crate::now_ms();
            (store.snapshot(&windows, now), now)
        })
        .await
        .expect("snapshot task")
    }

    async fn evaluate(&mut self) {
        crate::runtime::fault::trip("evaluator");
        if self.engine.rules().is_empty() {
            return;
        }
        // Partial windows (restoring, catching up) would raise false alarms: wait.
        if self.health.readiness().is_err() {
            return;
        }
        let (snapshot, now) = self.snapshot().await;
        let windows = &self.windows;
        let transitions = self
            .engine
            .evaluate_complete(&snapshot, now, &|w, preceding| {
                snapshot.window_complete(windows, w, now, preceding)
            });
        for t in &transitions {
            let a = &t.alert;
            let message = match t.resolved_reason {
                Some(reason) => format!("alert {} {} -> {} ({reason})", a.name, t.from, t.to),
                None => format!("alert {} {} -> {}", a.name, t.from, t.to),
            };
            let (campaign, channel) = (&*a.key.campaign, &*a.key.channel);
            if t.to == Phase::Firing {
                tracing::warn!(alertname = %a.name, campaign, channel, window = %a.window, value = a.value, threshold = a.threshold, severity = %a.severity, "{message}");
            } else {
                let resolved_reason = t.resolved_reason.map(ResolvedReason::as_str);
                tracing::info!(alertname = %a.name, campaign, channel, window = %a.window, value = a.value, threshold = a.threshold, resolved_reason, "{message}");
            }
            self.telemetry.alert_transition(&t.to.to_string());
        }
        if let Some(feed) = &self.feed {
            feed.publish_transitions(&transitions);
            feed.poll();
        }
        let active: Vec<Alert> = self.engine.active().cloned().collect();
        if let Some(notifier) = &self.notifier {
            let update = Update {
                firing: active
                    .iter()
                    .filter(|a| a.phase == Phase::Firing)
                    .cloned()
                    .collect(),
                resolved: transitions
                    .iter()
                    .filter(|t| t.to == Phase::Resolved)
                    .map(|t| {
                        let reason = t.resolved_reason.expect("every resolution has a reason");
                        (t.alert.clone(), t.at_ms, reason)
                    })
                    .collect(),
            };
            let _ = notifier.send(update).await;
        }
        self.view.replace(active);
    }

    /// Snapshots for the KPI feed and the live page's history.
    async fn publish(&self) {
        let (snapshot, now) = self.snapshot().await;
        self.history.record(&snapshot, self.windows.len(), now);
        if let Some(feed) = &self.feed {
            crate::runtime::fault::trip("feed");
            // The moment this tick stands for (the snapshot is read a little after it).
            let every = self.snapshot_interval.as_millis().max(1) as i64;
            let at = now - (now + every / 2).rem_euclid(every) + every / 2;
            let partitions = self.health.coverage();
            feed.publish_snapshot(&snapshot, &self.windows, &self.clv, &partitions, at, now);
            feed.poll();
        }
    }
}

//! HTTP endpoints (docs/contract.md, "HTTP endpoints"): metrics, probes and the JSON API.
//!
//! The router is built from an [`AppState`] alone, so tests drive it without a socket and the
//! service serves it with graceful shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::alert::AlertView;
use crate::alert::notify;
use crate::pure::kpi::ClvAssumptions;
use crate::pure::window::Windows;
use crate::read::history::History;
use crate::read::metrics::render_kpis_in_pieces;
use crate::read::rows::{RowCoverage, kpi_row};
use crate::runtime::health::{Coverage, Health};
use crate::runtime::telemetry::Telemetry;
use crate::state::store::{GroupBy, Store};

/// What the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub windows: Windows,
    pub clv: ClvAssumptions,
    pub telemetry: Arc<Telemetry>,
    pub health: Arc<Health>,
    pub alerts: Arc<AlertView>,
    pub history: Arc<History>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/kpis", get(kpis))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/coverage", get(coverage))
        .route("/api/v1/history", get(history))
        .route("/", get(page))
        .with_state(state)
}

/// Bytes of `/metrics` text rendered before they are sent. The body (16 MiB at 10,000 keys
/// and 3 windows, ten times that at 100,000) is never held whole: held whole, it and the
/// buffers kept for the next scrape were the largest thing in the process after the state.
const PIECE_BYTES: usize = 256 * 1024;
/// Pieces rendered ahead of what the scraper has read.
const PIECES_AHEAD: usize = 4;
/// How long the renderer waits for a scraper to take a piece before giving up: a client that
/// keeps its connection open but stops reading would otherwise hold a blocking thread, the
/// snapshot and the label lists for as long as it likes. (Prometheus gives up on a scrape
/// after its `scrape_timeout`, at most the scrape interval, and closes the connection.)
const SCRAPER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

async fn metrics(State(state): State<AppState>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(PIECES_AHEAD);
    // Reading every partition and formatting ~10 samples per key is CPU work: keep it off the
    // async workers. Partition locks are held only while their sums are read, never while
    // the text is written; the renderer waits for the scraper only between pieces.
    tokio::task::spawn_blocking(move || {
        let mut pieces = Pieces {
            tx,
            patience: SCRAPER_PATIENCE,
        };
        // A partition's counters are exported only once it has caught up since it was
        // assigned (see `PartitionState::settle`).
        let snapshot = state
            .store
            .snapshot_for_metrics(&state.windows, crate::now_ms());
        let mut out = String::with_capacity(PIECE_BYTES + PIECE_BYTES / 4);
        let mut send = |out: &mut String| pieces.send(out);
        if !render_kpis_in_pieces(
            &mut out,
            &snapshot,
            &state.windows,
            &state.clv,
            PIECE_BYTES,
            &mut send,
        ) {
            return;
        }
        drop(snapshot);
        state.telemetry.refresh(&state.health);
        match prometheus::TextEncoder::new().encode_to_string(&state.telemetry.registry.gather()) {
            Ok(service) => out.push_str(&service),
            Err(e) => {
                tracing::error!(error = %e, "encoding the service's own metrics failed");
                return;
            }
        }
        if pieces.send(&mut out) {
            pieces.end();
        }
    });
    let body = pieces_of(rx);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// What the renderer hands to the response: text, then the end.
enum Piece {
    Text(bytes::Bytes),
    End,
}

/// The rendered pieces of one `/metrics` body, on their way to the response.
/// Used on a blocking thread of the runtime.
struct Pieces {
    tx: tokio::sync::mpsc::Sender<Piece>,
    patience: std::time::Duration,
}

impl Pieces {
    /// Sends what `out` holds, leaving it empty. False if the scraper has gone, or has not
    /// taken a piece for `patience`.
    fn send(&mut self, out: &mut String) -> bool {
        let piece = std::mem::replace(out, String::with_capacity(out.capacity()));
        self.put(Piece::Text(piece.into()))
    }

    fn end(self) {
        self.put(Piece::End);
    }

    fn put(&self, piece: Piece) -> bool {
        tokio::runtime::Handle::current()
            .block_on(self.tx.send_timeout(piece, self.patience))
            .is_ok()
    }
}

/// The response body: the pieces until the end. If the renderer stops first (an error, a
/// panic, a shutdown before it ran), the body ends with an error, so the connection drops
/// mid-body and the scrape fails rather than reading as complete with fewer series.
fn pieces_of(
    rx: tokio::sync::mpsc::Receiver<Piece>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Piece::Text(text)) => Some((Ok(text), Some(rx))),
            Some(Piece::End) => None,
            None => Some((
                Err(std::io::Error::other(
                    "/metrics rendering stopped before the end",
                )),
                None,
            )),
        }
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct KpiQuery {
    window: Option<String>,
    group_by: Option<String>,
}

fn parse_group_by(text: Option<&str>) -> Result<GroupBy, String> {
    let Some(text) = text else {
        return Ok(GroupBy::CampaignChannel);
    };
    let mut parts: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    parts.sort_unstable();
    parts.dedup();
    match parts.as_slice() {
        [] => Ok(GroupBy::All),
        ["campaign"] => Ok(GroupBy::Campaign),
        ["channel"] => Ok(GroupBy::Channel),
        ["campaign", "channel"] => Ok(GroupBy::CampaignChannel),
        _ => Err(format!(
            "group_by={text:?}: use \"campaign,channel\" (default), \"campaign\", \"channel\" or \"\""
        )),
    }
}

async fn kpis(State(state): State<AppState>, Query(q): Query<KpiQuery>) -> Response {
    let group_by = match parse_group_by(q.group_by.as_deref()) {
        Ok(g) => g,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let selected: Vec<usize> = match q.window.as_deref() {
        None | Some("") => (0..state.windows.len()).collect(),
        Some(label) => match state.windows.index_of(label) {
            Some(i) => vec![i],
            None => {
                let known: Vec<&str> = state.windows.specs().iter().map(|s| &*s.label).collect();
                return (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "window={label:?} is not configured; configured: {}",
                        known.join(", ")
                    ),
                )
                    .into_response();
            }
        },
    };
    let partitions = state.health.coverage();
    let headers = coverage_headers(&partitions);
    let rows = tokio::task::spawn_blocking(move || {
        let now = crate::now_ms();
        let snapshot = state.store.snapshot_current(&state.windows, now);
        let covered: Vec<RowCoverage> = (0..state.windows.len())
            .map(|w| RowCoverage::of(&snapshot, &state.windows, w, now, &partitions))
            .collect();
        let mut rows = Vec::new();
        for ((campaign, channel), row) in snapshot.grouped(group_by) {
            for &w in &selected {
                let sums = &row.windows[w];
                if sums.is_empty() {
                    continue;
                }
                rows.push(kpi_row(
                    campaign.as_deref(),
                    channel.as_deref(),
                    &state.windows.specs()[w].label,
                    sums,
                    &state.clv,
                    &covered[w],
                ));
            }
        }
        rows
    })
    .await;
    let Ok(rows) = rows else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the windows failed",
        )
            .into_response();
    };
    (headers, Json(rows)).into_response()
}

/// `GET /`: the live page.
async fn page(State(state): State<AppState>) -> axum::response::Html<String> {
    let windows: Vec<&str> = state.windows.specs().iter().map(|s| &*s.label).collect();
    axum::response::Html(crate::read::page::render(
        &windows,
        state.telemetry.reporting_currency(),
    ))
}

/// Response headers saying which input partitions an answer covers: every JSON answer is
/// this instance's, and an instance behind a load balancer may hold only some of them.
fn coverage_headers(partitions: &Coverage) -> [(HeaderName, HeaderValue); 3] {
    let held: Vec<String> = partitions
        .held
        .iter()
        .map(|tp| format!("{}/{}", tp.topic, tp.partition))
        .collect();
    let value = |text: String| HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
    [
        (
            HeaderName::from_static("ecom-pulse-partitions"),
            value(held.join(",")),
        ),
        (
            HeaderName::from_static("ecom-pulse-partitions-covered"),
            value(format!("{}/{}", partitions.held.len(), partitions.total)),
        ),
        (
            HeaderName::from_static("ecom-pulse-complete"),
            HeaderValue::from_static(if partitions.complete() {
                "true"
            } else {
                "false"
            }),
        ),
    ]
}

/// `/api/v1/coverage`: what this instance's answers cover.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct CoverageAnswer {
    /// `topic/partition` of every input partition this instance holds.
    pub partitions: Vec<String>,
    pub partitions_total: usize,
    /// True when it holds every partition of the consumed topics and every window is whole.
    pub complete: bool,
    pub windows: Vec<WindowCoverage>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowCoverage {
    pub window: String,
    /// How much of the window its numbers cover, 0 to 1.
    pub coverage: f64,
    /// The same for the window of the same length before it, where a drop rule keeps it.
    pub preceding_coverage: Option<f64>,
}

async fn coverage(State(state): State<AppState>) -> Response {
    let partitions = state.health.coverage();
    let headers = coverage_headers(&partitions);
    let now = crate::now_ms();
    let windows = state.windows.clone();
    let store = state.store.clone();
    let Ok(snapshot) =
        tokio::task::spawn_blocking(move || store.snapshot_current(&windows, now)).await
    else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the windows failed",
        )
            .into_response();
    };
    let windows: Vec<WindowCoverage> = state
        .windows
        .specs()
        .iter()
        .enumerate()
        .map(|(w, spec)| WindowCoverage {
            window: spec.label.to_string(),
            coverage: snapshot.window_coverage(&state.windows, w, now),
            preceding_coverage: spec
                .has_previous()
                .then(|| snapshot.window_coverage(&state.windows, w, now - spec.length_ms)),
        })
        .collect();
    let whole = windows.iter().all(|w| w.coverage >= 1.0);
    let answer = CoverageAnswer {
        partitions: partitions
            .held
            .iter()
            .map(|tp| format!("{}/{}", tp.topic, tp.partition))
            .collect(),
        partitions_total: partitions.total,
        complete: whole && partitions.complete(),
        windows,
    };
    (headers, Json(answer)).into_response()
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    window: Option<String>,
}

/// Recent per-campaign KPIs of one window (default: the first), for sparklines.
async fn history(State(state): State<AppState>, Query(q): Query<HistoryQuery>) -> Response {
    let w = match q.window.as_deref() {
        None | Some("") => 0,
        Some(label) => match state.windows.index_of(label) {
            Some(w) => w,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("window={label:?} is not configured"),
                )
                    .into_response();
            }
        },
    };
    Json(
        state
            .history
            .view(w, &state.windows.specs()[w].label, &state.clv),
    )
    .into_response()
}

/// One active alert in `/api/v1/alerts`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AlertEntry {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// pending or firing
    pub state: String,
    pub value: f64,
    pub threshold: f64,
    /// When the condition started to hold (RFC 3339).
    pub active_since: String,
    /// When it started firing, if it does.
    pub firing_since: Option<String>,
    /// Input partitions this instance holds, of all the consumed topics' (see [`KpiRow`](crate::read::rows::KpiRow)):
    /// an instance raises alerts on the keys of its own partitions only.
    pub partitions_held: usize,
    pub partitions_total: usize,
}

async fn alerts(State(state): State<AppState>) -> Response {
    let partitions = state.health.coverage();
    let headers = coverage_headers(&partitions);
    let entries = state
        .alerts
        .active()
        .iter()
        .map(|a| {
            let mut labels = notify::labels(a);
            labels.insert("alertstate".into(), a.phase.to_string());
            AlertEntry {
                labels,
                annotations: notify::annotations(a),
                state: a.phase.to_string(),
                value: a.value,
                threshold: a.threshold,
                active_since: notify::rfc3339(a.active_since_ms),
                firing_since: a.firing_since_ms.map(notify::rfc3339),
                partitions_held: partitions.held.len(),
                partitions_total: partitions.total,
            }
        })
        .collect::<Vec<_>>();
    (headers, Json(entries)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::decode::Decoder;
    use crate::pure::pipeline::Pipeline;
    use crate::read::metrics::AlertCollector;
    use crate::read::rows::KpiRow;
    use crate::state::store::TopicPartition;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    fn app() -> (Router, Arc<Health>, Arc<AlertView>) {
        app_with_visitors(0)
    }

    /// The app over three orders and a spend, plus one visit for each of `visitors` more keys.
    fn app_with_visitors(visitors: usize) -> (Router, Arc<Health>, Arc<AlertView>) {
        let windows = Windows::from_labels(&["5m", "1h"], 60);
        let clv = ClvAssumptions {
            purchases_per_year: 4.0,
            lifetime_years: 3.0,
        };
        let pipeline = Pipeline {
            decoder: Decoder::new("USD", []),
            windows: windows.clone(),
            max_future_skew_ms: 60_000,
            dedup_horizon_ms: 900_000,
            dedup_max_ids: 10_000,
            limits: Default::default(),
        };
        let store = Arc::new(Store::default());
        let now = crate::now_ms();
        let part = store.get_or_insert(&TopicPartition::new("t", 0), || pipeline.new_partition());
        for (i, (campaign, channel, kind, amount)) in [
            ("a", "x", "order", 100),
            ("a", "y", "order", 20),
            ("a", "y", "order", 30),
            ("b", "x", "ad_spend", 40),
        ]
        .into_iter()
        .enumerate()
        {
            let json = format!(
                r#"{{"type":"{kind}","event_id":"{i}","campaign":"{campaign}","channel":"{channel}","amount":{amount}}}"#
            );
            pipeline.process(&mut part.write(), json.as_bytes(), now, now);
        }
        for k in 0..visitors {
            let json = format!(
                r#"{{"type":"visit","event_id":"v{k}","campaign":"visited-{k}","channel":"web"}}"#
            );
            pipeline.process(&mut part.write(), json.as_bytes(), now, now);
        }
        let telemetry = Arc::new(Telemetry::new("USD", &["5m", "1h"], 12.0));
        let health = Arc::new(Health::default());
        let alerts = Arc::new(AlertView::default());
        telemetry
            .registry
            .register(Box::new(AlertCollector::new(alerts.clone())))
            .unwrap();
        (
            router(AppState {
                store,
                windows,
                clv,
                telemetry,
                health: health.clone(),
                alerts: alerts.clone(),
                history: Arc::new(History::new(10, 10)),
            }),
            health,
            alerts,
        )
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn kpis_by_key_window_and_group() {
        let (app, _, _) = app();
        let (status, body) = get(&app, "/api/v1/kpis?window=1h").await;
        assert_eq!(status, StatusCode::OK);
        let rows: Vec<KpiRow> = serde_json::from_str(&body).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].campaign.as_deref(), Some("a"));
        assert_eq!(rows[1].channel.as_deref(), Some("y"));
        assert_eq!(rows[1].aov, Some(25.0));
        assert_eq!(rows[1].roas, None);
        assert!(body.contains("\"roas\":null"), "{body}");

        let (_, body) = get(&app, "/api/v1/kpis?window=5m&group_by=campaign").await;
        let rows: Vec<KpiRow> = serde_json::from_str(&body).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].channel, None);
        assert_eq!(rows[0].orders, 3);
        assert_eq!(rows[0].aov, Some(50.0)); // 150 / 3: summed, not averaged per channel

        let (_, body) = get(&app, "/api/v1/kpis?group_by=").await;
        let rows: Vec<KpiRow> = serde_json::from_str(&body).unwrap();
        assert_eq!(rows.len(), 2, "one fleet row per window");
        assert_eq!(rows[0].roas, Some(150.0 / 40.0));

        let (_, body) = get(&app, "/api/v1/kpis?group_by=channel").await;
        let rows: Vec<KpiRow> = serde_json::from_str(&body).unwrap();
        assert_eq!(rows.iter().filter(|r| r.window == "5m").count(), 2);

        assert_eq!(
            get(&app, "/api/v1/kpis?window=2h").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(&app, "/api/v1/kpis?group_by=device").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    /// A body larger than a piece arrives in pieces of whole lines, which together are the
    /// whole text: the KPI families as one rendering gives them, then the service's own.
    #[tokio::test]
    async fn a_large_metrics_body_is_sent_in_pieces() {
        let (app, _, _) = app_with_visitors(2000);
        let response = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut stream = response.into_body().into_data_stream();
        let mut pieces = Vec::new();
        while let Some(piece) = futures_util::StreamExt::next(&mut stream).await {
            pieces.push(String::from_utf8(piece.unwrap().to_vec()).unwrap());
        }
        assert!(pieces.len() > 2, "{} pieces", pieces.len());
        for piece in &pieces[..pieces.len() - 1] {
            assert!(piece.len() >= PIECE_BYTES, "{} bytes", piece.len());
            assert!(piece.ends_with('\n'));
        }
        let text = pieces.concat();
        assert_eq!(text.matches("# TYPE ecom_visits gauge").count(), 1);
        assert!(
            text.contains(r#"ecom_visits{campaign="visited-1999",channel="web",window="1h"} 1"#)
        );
        assert!(text.contains("\necom_pulse_tracked_keys 2003\n"));
        assert!(text.ends_with("\n"));
        assert!(text.contains("\necom_pulse_ready 0\n"));
    }

    /// A body cut short ends with an error, so that the scrape fails rather than reading as
    /// complete; one that reaches its end ends cleanly; a scraper that has gone, or stopped
    /// reading, stops the renderer.
    #[tokio::test]
    async fn a_body_cut_short_ends_in_an_error() {
        use futures_util::StreamExt;
        for finished in [false, true] {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::task::spawn_blocking(move || {
                let mut pieces = Pieces {
                    tx,
                    patience: SCRAPER_PATIENCE,
                };
                assert!(pieces.send(&mut String::from("ecom_visits 1\n")));
                if finished {
                    pieces.end();
                }
            });
            let items: Vec<_> = pieces_of(rx).collect().await;
            assert_eq!(&items[0].as_ref().unwrap()[..], b"ecom_visits 1\n");
            assert_eq!(items.len(), if finished { 1 } else { 2 });
            assert!(items[1..].iter().all(|i| i.is_err()));
        }

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        drop(rx);
        let sent = tokio::task::spawn_blocking(move || {
            let mut pieces = Pieces {
                tx,
                patience: SCRAPER_PATIENCE,
            };
            pieces.send(&mut String::from("ecom_visits 1\n"))
        });
        assert!(!sent.await.unwrap());

        // A scraper that stays but stops reading: the renderer gives up after its patience.
        let (tx, _stalled) = tokio::sync::mpsc::channel(1);
        let sent = tokio::task::spawn_blocking(move || {
            let mut pieces = Pieces {
                tx,
                patience: std::time::Duration::from_millis(50),
            };
            let first = pieces.send(&mut String::from("ecom_visits 1\n"));
            (first, pieces.send(&mut String::from("ecom_visits 2\n")))
        });
        assert_eq!(sent.await.unwrap(), (true, false));
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let (app, health, _) = app();
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not connected"));
        health.set_connected(true);
        health.assignment_received();
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);

        let (status, text) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(r#"ecom_aov{campaign="a",channel="y",window="5m"} 25"#),
            "{text}"
        );
        assert!(text.contains("ecom_pulse_ready 1"));
        assert!(text.contains("ecom_pulse_kafka_connected 1"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert_eq!(get(&app, "/api/v1/alerts").await.1, "[]");
    }

    #[tokio::test]
    async fn active_alerts_in_json_and_metrics() {
        let (app, _, alerts) = app();
        alerts.replace(vec![crate::alert::Alert {
            rule: 0,
            name: "RoasBelowBreakEven".into(),
            severity: crate::pure::condition::Severity::Warning,
            key: crate::pure::key::Key::new("spring", "paid_social"),
            window: "1h".into(),
            phase: crate::alert::Phase::Firing,
            value: 1.5,
            threshold: 2.0,
            active_since_ms: 1_795_334_400_000,
            firing_since_ms: Some(1_795_334_700_000),
            condition: "roas < 2 over 1h".into(),
        }]);
        let (status, body) = get(&app, "/api/v1/alerts").await;
        assert_eq!(status, StatusCode::OK);
        let entries: Vec<AlertEntry> = serde_json::from_str(&body).unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.labels["alertname"], "RoasBelowBreakEven");
        assert_eq!(e.labels["alertstate"], "firing");
        assert_eq!((e.value, e.threshold), (1.5, 2.0));
        assert_eq!(e.active_since, "2026-11-22T08:00:00.000Z");
        assert_eq!(e.firing_since.as_deref(), Some("2026-11-22T08:05:00.000Z"));
        assert!(e.annotations["summary"].contains("1.500"));
        let (_, text) = get(&app, "/metrics").await;
        assert!(
            text.contains(r#"ecom_alerts{alertname="RoasBelowBreakEven",alertstate="firing",severity="warning",campaign="spring",channel="paid_social",window="1h"} 1"#),
            "{text}"
        );
    }
}

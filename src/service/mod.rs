//! Wires the pipeline together: the Kafka source feeding the store; the HTTP server, the alert
//! evaluator, the Alertmanager notifier and the Kafka feed reading it; all stopped by one
//! cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod ticker;

use crate::alert::notify::{Notifier, Update};
use crate::alert::{AlertView, Engine, Rule};
use crate::config::{Config, ConfigError};
use crate::pure::kpi::ClvAssumptions;
use crate::pure::pipeline::Pipeline;
use crate::read::feed::Feed;
use crate::read::history::History;
use crate::read::http::{AppState, router};
use crate::read::metrics::{AlertCollector, PartitionCollector};
use crate::runtime::health::Health;
use crate::runtime::task::TaskFailure;
use crate::runtime::telemetry::Telemetry;
use crate::server::web::{Web, WebConfigError, protect};
use crate::source::checkpoints::CheckpointStore;
use crate::source::deadletter::DeadLetters;
use crate::source::{Source, SourceError};
use crate::state::store::Store;
use ticker::Ticker;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} (config key `http.listen`): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("checkpoints: {0}")]
    Checkpoint(#[source] crate::state::checkpoint::CheckpointError),
    #[error("kafka.kpis_topic / kafka.alerts_topic producer: {0}")]
    Feed(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    DeadLetters(#[from] crate::source::deadletter::DeadLetterError),
    #[error("Alertmanager client: {0}")]
    Alertmanager(#[source] crate::alert::notify::NotifyError),
    #[error(transparent)]
    Task(#[from] TaskFailure),
    #[error(transparent)]
    Web(#[from] WebConfigError),
}

/// A service whose listener is bound and whose consumer is created, not yet running.
pub struct Service {
    listener: TcpListener,
    web: Web,
    state: AppState,
    source: Source,
    ticker: Ticker,
    notifier: Option<(Notifier, tokio::sync::mpsc::Receiver<Update>)>,
    /// Cancelled when `run`'s token is: stops restore retries inside the Kafka client.
    shutdown: CancellationToken,
}

impl Service {
    /// Binds `http.listen` and creates the consumer: everything that can fail because of the
    /// configuration fails here, before anything runs.
    pub async fn start(config: &Config) -> Result<Service, ServiceError> {
        let pipeline = Arc::new(Pipeline::from_config(config));
        let clv = ClvAssumptions {
            purchases_per_year: config.kpi.purchases_per_year,
            lifetime_years: config.kpi.lifetime_years,
        };
        let store = Arc::new(Store::default());
        let labels: Vec<&str> = pipeline.windows.specs().iter().map(|s| &*s.label).collect();
        let telemetry = Arc::new(Telemetry::new(
            pipeline.decoder.reporting_currency(),
            &labels,
            config.kpi.purchases_per_year * config.kpi.lifetime_years,
        ));
        let health = Arc::new(Health::default());
        telemetry
            .registry
            .register(Box::new(PartitionCollector::new(
                store.clone(),
                health.clone(),
                pipeline.windows.clone(),
                config.dedup.horizon,
            )))
            .expect("partition metric names are unique");
        let alerts = Arc::new(AlertView::default());
        telemetry
            .registry
            .register(Box::new(AlertCollector::new(alerts.clone())))
            .expect("alert metric names are unique");
        let dead_letters = DeadLetters::new(&config.kafka, telemetry.clone())
            .map_err(ServiceError::from)?
            .map(Arc::new);
        let checkpoints = Arc::new(
            CheckpointStore::new(&config.kafka, &config.checkpoint, pipeline.windows.clone())
                .map_err(ServiceError::Checkpoint)?
                .with_dead_letters(dead_letters.clone()),
        );

        let web = Web::load(&config.http.web_config_file, config.http.open_healthz)?;
        let addr = config.http.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Listen { addr, source })?;
        let shutdown = CancellationToken::new();
        tokio::spawn(checkpoints.clone().ensure_topic(shutdown.clone()));
        if let Some(dead_letters) = &dead_letters {
            tokio::spawn(dead_letters.clone().ensure_topic(
                config.kafka.topics.clone(),
                config.checkpoint.replication_factor,
                shutdown.clone(),
            ));
        }
        let source = Source::new(
            &config.kafka,
            pipeline.clone(),
            store.clone(),
            telemetry.clone(),
            health.clone(),
            checkpoints,
            config.checkpoint.interval,
            dead_letters,
            shutdown.clone(),
        )?;
        let instance = format!(
            "{}:{}",
            host_name(),
            listener
                .local_addr()
                .map_err(|source| ServiceError::Listen { addr, source })?
                .port()
        );
        let feed = Feed::new(
            &config.kafka,
            pipeline.decoder.reporting_currency(),
            &instance,
            telemetry.clone(),
        )
        .map_err(ServiceError::Feed)?
        .map(Arc::new);
        let scheme = if web.tls.is_some() { "https" } else { "http" };
        let external_url = if config.alerting.external_url.is_empty() {
            format!(
                "{scheme}://{}",
                listener
                    .local_addr()
                    .map_err(|source| ServiceError::Listen { addr, source })?
            )
        } else {
            config
                .alerting
                .external_url
                .trim_end_matches('/')
                .to_string()
        };
        let (notifier, updates) = if config.alertmanager.url.is_empty() {
            (None, None)
        } else {
            let notifier = Notifier::new(
                &config.alertmanager,
                format!("{external_url}/api/v1/alerts"),
                telemetry.clone(),
            )
            .map_err(ServiceError::Alertmanager)?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            (Some((notifier, rx)), Some(tx))
        };
        let rules = config
            .alerts
            .iter()
            .map(|r| Rule::from_config(r, &pipeline.windows))
            .collect();
        // Half an hour of samples for the live page's sparklines.
        let samples =
            (1800.0 / config.alerting.snapshot_interval.as_secs_f64()).clamp(10.0, 1000.0) as usize;
        let history = Arc::new(History::new(samples, 50));
        let ticker = Ticker {
            engine: Engine::new(rules, clv),
            store: store.clone(),
            windows: pipeline.windows.clone(),
            clv,
            view: alerts.clone(),
            health: health.clone(),
            telemetry: telemetry.clone(),
            notifier: updates,
            feed,
            history: history.clone(),
            evaluation_interval: config.alerting.evaluation_interval,
            snapshot_interval: config.alerting.snapshot_interval,
        };
        let state = AppState {
            store,
            windows: pipeline.windows.clone(),
            clv,
            telemetry,
            health,
            alerts,
            history,
        };
        Ok(Service {
            listener,
            web,
            state,
            source,
            ticker,
            notifier,
            shutdown,
        })
    }

    /// The partitions' state, for embedders and tests that read it directly.
    pub fn store(&self) -> Arc<Store> {
        self.state.store.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound socket")
    }

    /// Runs until `shutdown` is cancelled: then stops consuming, commits offsets, lets
    /// in-flight HTTP requests finish and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServiceError> {
        let inner = self.shutdown.clone();
        let outer = shutdown.clone();
        let health = self.state.health.clone();
        let stopping = health.clone();
        tokio::spawn(async move {
            outer.cancelled().await;
            stopping.shut_down();
            inner.cancel();
        });
        let scheme = if self.web.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(
            url = %format!("{scheme}://{}/metrics", self.local_addr()),
            authentication = self.web.auth.is_some(),
            "serving"
        );
        let app = protect(router(self.state), &self.web);
        // Every task runs for as long as the service does; the HTTP server the longest, so
        // that /readyz says "shutting down" (503) while the rest drains.
        let mut tasks: JoinSet<(&'static str, Result<(), TaskFailure>)> = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        let ticker = self.ticker;
        let stop = shutdown.clone();
        let id = tasks
            .spawn(async move {
                ticker.run(stop).await;
                ("alert evaluator", Ok(()))
            })
            .id();
        names.insert(id, "alert evaluator");
        if let Some((notifier, updates)) = self.notifier {
            let stop = shutdown.clone();
            let id = tasks
                .spawn(async move {
                    notifier.run(updates, stop).await;
                    ("Alertmanager notifier", Ok(()))
                })
                .id();
            names.insert(id, "Alertmanager notifier");
        }
        let source = self.source;
        let stop = shutdown.clone();
        let id = tasks
            .spawn(async move { ("source", source.run(stop).await) })
            .id();
        names.insert(id, "source");
        let http_stop = CancellationToken::new();
        let mut http = tokio::spawn(serve(self.listener, self.web.tls, app, http_stop.clone()));
        let mut http_done = false;
        let mut failure: Option<TaskFailure> = None;
        let mut fail = |f: TaskFailure| {
            health.fail(&f);
            failure.get_or_insert(f);
            shutdown.cancel();
        };
        loop {
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { break };
                    match joined {
                        Ok((_, Err(f))) => fail(f),
                        Ok((name, Ok(()))) if !shutdown.is_cancelled() => fail(TaskFailure::ended(name)),
                        Ok(_) => {}
                        Err(e) => {
                            let name = names.get(&e.id()).copied().unwrap_or("task");
                            match e.try_into_panic() {
                                Ok(panic) => fail(TaskFailure::panicked(name, &*panic)),
                                Err(e) => fail(TaskFailure::new(name, e.to_string())),
                            }
                        }
                    }
                }
                served = &mut http, if !http_done => {
                    http_done = true;
                    fail(match served {
                        Ok(Ok(())) => TaskFailure::ended("HTTP server"),
                        Ok(Err(e)) => TaskFailure::new("HTTP server", e.to_string()),
                        Err(e) if e.is_panic() => TaskFailure::panicked("HTTP server", &*e.into_panic()),
                        Err(e) => TaskFailure::new("HTTP server", e.to_string()),
                    });
                }
            }
        }
        http_stop.cancel();
        if !http_done {
            match http.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fail(TaskFailure::new("HTTP server", e.to_string())),
                Err(e) => fail(TaskFailure::new("HTTP server", e.to_string())),
            }
        }
        failure.map_or(Ok(()), |f| Err(ServiceError::Task(f)))
    }
}

/// This machine's (or pod's) name, to tell instances apart in the KPI feed.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Serves `app` on `listener` until `shutdown`, over TLS when the web config asks for it, and
/// then lets in-flight requests finish.
async fn serve(
    listener: TcpListener,
    tls: Option<crate::server::web::Tls>,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Tests make the server fail on purpose (debug builds only; see `fault`).
    #[cfg(debug_assertions)]
    let failing = async {
        while !crate::runtime::fault::armed("http") {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err::<(), _>(std::io::Error::other(
            "fault injected at http (ECOM_PULSE_FAULT)",
        ))
    };
    #[cfg(debug_assertions)]
    tokio::pin!(failing);
    #[cfg(debug_assertions)]
    let served = serve_until(listener, tls, app, shutdown);
    #[cfg(debug_assertions)]
    return tokio::select! {
        served = served => served,
        failed = &mut failing => failed,
    };
    #[cfg(not(debug_assertions))]
    serve_until(listener, tls, app, shutdown).await
}

async fn serve_until(
    listener: TcpListener,
    tls: Option<crate::server::web::Tls>,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    };
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls.config.clone());
    tokio::spawn(tls.reload_on_change(
        rustls.clone(),
        std::time::Duration::from_secs(10),
        shutdown.clone(),
    ));
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(None);
    });
    axum_server::from_tcp_rustls(listener.into_std()?, rustls)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
}

//! The `ecom-pulse` binary: command line, configuration, logging and signals. Everything else
//! lives in the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ecom_pulse::config::{Config, LogFormat};
use ecom_pulse::service::Service;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Live marketing KPIs from Kafka events, served to Prometheus"
)]
struct Cli {
    /// Configuration file layered over the built-in defaults (config/default.toml).
    #[arg(long, short, global = true, env = "ECOM_PULSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the configured topics and serve metrics (the default).
    Run,
    /// Everything in one process: in-process Kafka, a traffic generator and the service.
    Demo {
        /// Visits per second generated (orders and spend follow from them).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// Print the Prometheus recording and alerting rules that match the configuration.
    Rules {
        /// Write `ecom-pulse.rules.yml` and its `promtool test rules` file into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Print them as a Prometheus Operator PrometheusRule instead.
        #[arg(long, conflicts_with = "write")]
        prometheus_rule: bool,
    },
    /// Produce synthetic traffic to a real Kafka cluster.
    Generate {
        /// Bootstrap brokers (default: kafka.brokers from the configuration).
        #[arg(long)]
        brokers: Option<String>,
        /// Visits per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Share of deliberately bad messages (malformed, duplicates ...).
        #[arg(long, default_value_t = 0.002)]
        bad_ratio: f64,
    },
}

fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colour only for a terminal: written to a file or a pipe (systemd, kubectl logs, a
    // log shipper), escape codes are noise in every line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancels the token on SIGTERM or Ctrl-C.
fn stop_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: draining and committing offsets");
        token.cancel();
    });
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecom-pulse: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(Cli::parse()));
    // A librdkafka call stuck on an unreachable broker must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ecom-pulse: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause only if the message before it does not
/// already quote it (most of ours do).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Loads the configuration and runs the command; an error comes back as the message to
/// print, with secrets redacted.
async fn run(cli: Cli) -> Result<(), String> {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ecom-pulse: {}", e.without_source_lines());
            std::process::exit(2);
        }
    };
    if let Some(Command::Rules {
        write,
        prometheus_rule,
    }) = &cli.command
    {
        let rules = ecom_pulse::read::rules::render(&config);
        match write {
            None if *prometheus_rule => {
                print!(
                    "{}",
                    ecom_pulse::read::rules::render_prometheus_rule(&config)
                )
            }
            None => print!("{rules}"),
            Some(dir) => {
                let write = |name: &str, text: String| {
                    std::fs::write(dir.join(name), text)
                        .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
                };
                write("ecom-pulse.rules.yml", rules)?;
                let tests = ecom_pulse::read::rules::render_tests(&config, "ecom-pulse.rules.yml");
                write("ecom-pulse.rules.test.yml", tests)?;
                eprintln!(
                    "wrote {0}/ecom-pulse.rules.yml and {0}/ecom-pulse.rules.test.yml",
                    dir.display()
                );
            }
        }
        return Ok(());
    }
    init_tracing(&config);
    // Errors may quote librdkafka, which may quote a property: never show a secret.
    let redactor = config.kafka.properties.redactor();
    execute(cli.command, config)
        .await
        .map_err(|e| redactor.apply(&one_line(&e)))
}

async fn execute(command: Option<Command>, config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone());

    match command.unwrap_or(Command::Run) {
        Command::Rules { .. } => unreachable!("handled above"),
        Command::Run => {
            let service = Service::start(&config).await.context("start-up failed")?;
            service.run(shutdown).await?;
        }
        Command::Demo { rate } => {
            ecom_pulse::tools::demo::run(config, rate, shutdown).await?;
        }
        Command::Generate {
            brokers,
            rate,
            bad_ratio,
        } => {
            let brokers = brokers.unwrap_or_else(|| config.kafka.brokers.clone());
            let properties = config.kafka.properties.clone();
            let topics = config.kafka.topics.clone();
            let sent = tokio::task::spawn_blocking(move || {
                ecom_pulse::tools::generate::run(
                    &brokers,
                    &topics,
                    rate,
                    bad_ratio,
                    &properties,
                    shutdown,
                )
            })
            .await??;
            tracing::info!(sent, "generator stopped");
        }
    }
    Ok(())
}

//! What a supervisor sees when one of the service's tasks dies: a fault injected into each
//! task in turn (debug builds only, see `ecom_pulse::runtime::fault`) takes the process down with a
//! non-zero exit and the cause in the log, never a clean exit. And a partition whose restore
//! never completes shows as stalled.

mod common;

use std::time::Duration;

use common::*;
use common::{broker::*, ledger::*, scrape::*, service::*};

/// Each task, the fault site in it, and what its failure is called.
const TASKS: [(&str, &str, &str); 7] = [
    ("consumer", "consumer", ""),
    (
        "checkpoint",
        "checkpoint writer",
        "[checkpoint]\ninterval = \"1s\"\n",
    ),
    ("probe", "watermark probe", ""),
    (
        "evaluator",
        "alert evaluator",
        "[alerting]\nevaluation_interval = \"1s\"\n",
    ),
    (
        "feed",
        "alert evaluator",
        "[alerting]\nsnapshot_interval = \"1s\"\n",
    ),
    (
        "notifier",
        "Alertmanager notifier",
        "[alerting]\nevaluation_interval = \"1s\"\n[alertmanager]\nurl = \"http://127.0.0.1:9\"\n",
    ),
    ("http", "HTTP server", ""),
];

#[test]
fn a_task_that_dies_ends_the_process_with_a_failure() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    produce(
        &tansu.brokers(),
        &Traffic::new("f", 3, &["email"]).next(200, now_ms()),
    );
    for (site, task, extra) in TASKS {
        let port = free_port();
        let config = service_config(
            &tansu.brokers(),
            &format!("fail-{site}-{}", now_ms()),
            port,
            extra,
        )
        .replace(
            "[kafka.properties]",
            "kpis_topic = \"kpis\"\n[kafka.properties]",
        );
        // Armed a few seconds in, once the task runs as usual.
        let mut svc = Service::spawn_with_env(
            &config,
            port,
            &[
                ("ECOM_PULSE_FAULT", site),
                ("ECOM_PULSE_FAULT_AFTER_MS", "3000"),
            ],
        );
        let status = wait_for(
            &format!("the process to end after a fault in {site}"),
            Duration::from_secs(90),
            || svc.proc.child.try_wait().unwrap(),
        );
        let log = svc.log();
        assert!(!status.success(), "{site}: {status:?}\n{log}");
        assert!(
            log.contains(&format!(
                "{task} stopped: panicked: fault injected at {site}"
            )) || log.contains(&format!("{task} stopped: fault injected at {site}")),
            "{site}: the cause is not in the log\n{log}"
        );
        assert!(
            log.contains("shutting down to be restarted"),
            "{site}\n{log}"
        );
        let _ = &mut svc;
    }
}

/// A restore that never completes: the partitions being taken over show as stalled, and
/// readiness says why; a shutdown still ends it cleanly.
#[test]
fn a_restore_that_never_completes_shows_as_stalled() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let port = free_port();
    let config = service_config(&tansu.brokers(), &format!("hang-{}", now_ms()), port, "");
    let mut svc = Service::spawn_with_env(&config, port, &[("ECOM_PULSE_FAULT", "restore")]);
    let stalled = wait_for(
        "the partitions being taken over to show as stalled",
        Duration::from_secs(60),
        || {
            let (status, body) = http_get(port, "/metrics").ok()?;
            (status == 200).then_some(())?;
            let m = Metrics::parse(&body);
            let stalled: Vec<f64> = m
                .series
                .iter()
                .filter(|(k, _)| k.starts_with("ecom_pulse_partition_stalled_seconds{"))
                .map(|(_, v)| *v)
                .collect();
            (stalled.len() == 9 && stalled.iter().all(|s| *s >= 5.0)).then_some(stalled)
        },
    );
    assert_eq!(stalled.len(), 9);
    let (status, body) = svc.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("restoring"), "{body}");
    assert!(
        svc.terminate(Duration::from_secs(30)).success(),
        "{}",
        svc.log()
    );
}

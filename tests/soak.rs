//! The soak: a steady stream through Tansu for half an hour with `/metrics` scraped every
//! second. Not part of the regular run (it takes as long as it says):
//!
//! ```text
//! cargo test --test soak -- --ignored --nocapture
//! SOAK_SECONDS=120 SOAK_RATE=500 cargo test --test soak -- --ignored --nocapture   # a short one
//! SOAK_EXTRA='[dedup]
//! horizon = "1m"' SOAK_SECONDS=600 cargo test ...   # more config for the service
//! ```
//!
//! Nothing is logged at WARN or ERROR once the service is ready, apart from the alerts the
//! traffic raises (two of its campaigns only ever spend, so their ROAS alerts fire once each);
//! resident memory is flat over the last third of the run (within 5 %), after the
//! de-duplication memory has filled its horizon (5 minutes here unless `SOAK_EXTRA` says
//! otherwise; see below); consumer lag stays under five seconds of traffic; and at the end
//! every counter, and every window longer than the run (1h and 24h for the default half hour,
//! 24h alone for a run of two hours), equal the ledger of produced events exactly.
//!
//! The consumer group keeps librdkafka's default session timeout (45 s), as a deployment
//! would: the 6 s of the other tests is for fast rebalances, and Tansu's storage maintenance
//! (every 10 minutes, a SQLite VACUUM among other things) can hold the broker longer than
//! that. The service's log is kept in `target/tmp/soak-service.log`, and the rebalances and
//! readiness changes are printed.
//!
//! Memory is written once a minute to `target/tmp/soak-memory.tsv` (`SOAK_OUT` names another
//! directory for it, the log and the trace): resident and anonymous
//! memory of the process, the ids the de-duplication memory holds and the keys exported, so a
//! long run shows where growth goes. `SOAK_HEAPTRACK=1` runs the service under heaptrack's
//! allocation tracer (Debian's `heaptrack`), writing its raw trace to
//! `target/tmp/soak-heaptrack.raw`; the test prints how to turn that into a report.

mod common;

use std::time::{Duration, Instant};

use common::*;
use common::{broker::*, ledger::*, prometheus::*, service::*};

const CHANNELS: &[&str] = &["email", "paid_social", "display", "affiliate"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// `(Rss, Anonymous)` of the process in bytes, from `/proc/PID/smaps_rollup`: anonymous memory
/// is the heap and the allocator's arenas, the rest mapped code and files.
fn memory(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .expect(name)
            * 1024
    };
    (field("Rss:"), field("Anonymous:"))
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
#[ignore = "runs for SOAK_SECONDS (default 1800); see the module docs"]
fn half_an_hour_of_steady_traffic_stays_exact_quiet_and_flat() {
    let seconds = env_or("SOAK_SECONDS", 1800);
    let rate = env_or("SOAK_RATE", 1000) as usize;
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let port = free_port();
    // A 5-minute de-duplication horizon (unless SOAK_EXTRA configures dedup itself), so the
    // state reaches its full size well before the last third: the tables grow for up to one
    // horizon and two generations (7.5 minutes here). With the default 15 minutes they took
    // their final size ~20 minutes in, just as the last third began.
    let extra = std::env::var("SOAK_EXTRA").unwrap_or_default();
    let extra = if extra.contains("[dedup]") {
        extra
    } else {
        format!("[dedup]\nhorizon = \"5m\"\n{extra}")
    };
    let config = service_config(
        &tansu.brokers(),
        &format!("soak-{}", now_ms()),
        port,
        &extra,
    )
    .replace("\"session.timeout.ms\" = \"6000\"\n", "");
    // SOAK_OUT: where the log, memory samples and trace go, so two soaks can run at once.
    let tmp = std::path::PathBuf::from(
        std::env::var("SOAK_OUT").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string()),
    );
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp = tmp.as_path();
    let heaptrack_raw = tmp.join("soak-heaptrack.raw");
    let svc = if std::env::var("SOAK_HEAPTRACK").is_ok_and(|v| v == "1") {
        // What the `heaptrack` script does, minus its wrapper process, so the pid sampled
        // below is the service's own.
        Service::spawn_with_env(
            &config,
            port,
            &[
                ("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so"),
                ("DUMP_HEAPTRACK_OUTPUT", heaptrack_raw.to_str().unwrap()),
            ],
        )
    } else {
        Service::start(&config, port)
    };
    svc.wait_ready(Duration::from_secs(60));
    let quiet_from = svc.log().len();
    let pid = svc.proc.child.id();

    // The producer: one batch per second, stamped with the time it is made.
    let brokers = tansu.brokers();
    let producer = std::thread::spawn(move || {
        let mut traffic = Traffic::new("soak", 40, CHANNELS);
        let start = Instant::now();
        for second in 0..seconds {
            let batch = traffic.next(rate, now_ms());
            produce(&brokers, &batch);
            // Pacing to the rate, not synchronisation.
            let next = start + Duration::from_secs(second + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        traffic
    });

    // The scraper: every second, as an aggressive Prometheus would.
    let mut samples: Vec<(Duration, u64, f64, Duration, bool)> = Vec::new(); // (at, rss, lag, latency, ready)
    let memory_log = tmp.join("soak-memory.tsv");
    let mut memory_rows = String::from("seconds\trss_bytes\tanonymous_bytes\tdedup_ids\tkeys\n");
    let start = Instant::now();
    while !producer.is_finished() {
        let t = Instant::now();
        let m = svc.metrics();
        let latency = t.elapsed();
        if samples.len().is_multiple_of(60) {
            let (rss, anonymous) = memory(pid);
            memory_rows.push_str(&format!(
                "{}\t{rss}\t{anonymous}\t{}\t{}\n",
                start.elapsed().as_secs(),
                m.sum("ecom_pulse_dedup_ids"),
                m.sum("ecom_pulse_tracked_keys"),
            ));
            std::fs::write(&memory_log, &memory_rows).unwrap();
        }
        samples.push((
            start.elapsed(),
            rss_bytes(pid),
            m.sum("ecom_pulse_consumer_lag"),
            latency,
            m.get("ecom_pulse_ready") == Some(1.0),
        ));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    let traffic = producer.join().unwrap();
    assert!(
        samples.iter().all(|s| s.2.is_finite()),
        "lag samples are numbers"
    );
    let expected = traffic.total();
    let log_copy = tmp.join("soak-service.log");
    let keep_log = || std::fs::write(&log_copy, svc.log()).unwrap();
    // What happened to the group, with when: printed at the end whatever the outcome.
    let timeline = || -> String {
        svc.log()
            .lines()
            .filter(|l| {
                l.contains("assignment")
                    || l.contains("revoked")
                    || l.contains("caught up")
                    || l.contains(" WARN ")
                    || l.contains(" ERROR ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let not_ready: Vec<u64> = samples
        .iter()
        .filter(|s| !s.4)
        .map(|s| s.0.as_secs())
        .collect();
    println!(
        "soak: not ready at {} of {} scrapes (seconds into the run: {:?})",
        not_ready.len(),
        samples.len(),
        &not_ready[..not_ready.len().min(50)]
    );
    let settle = Instant::now();
    let deadline = settle + Duration::from_secs(env_or("SOAK_SETTLE_SECONDS", 600));
    let m = loop {
        let m = svc.metrics();
        let got = counter_totals(&[&m]);
        if got == expected {
            break m;
        }
        if Instant::now() > deadline {
            keep_log();
            println!("timeline:\n{}", timeline());
            let log = svc.log();
            let noisy: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .collect();
            panic!(
                "not exact after the run:\nexpected {expected:?}\ngot      {got:?}\n\
                 accepted {}, duplicates {:?}, rejected {}, restores {:?}\nWARN/ERROR lines:\n{}",
                m.sum("ecom_pulse_events_total"),
                m.get("ecom_pulse_events_duplicate_total"),
                m.sum("ecom_pulse_events_rejected_total"),
                m.names_with_prefix("ecom_pulse_restores_total")
                    .iter()
                    .map(|n| (n.to_string(), m.get(n)))
                    .collect::<Vec<_>>(),
                noisy.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    keep_log();
    println!(
        "soak: exact {:?} after the producer stopped; timeline:\n{}",
        settle.elapsed(),
        timeline()
    );
    // A window shorter than the run holds only its end, which the ledger does not tell apart.
    let whole: Vec<&str> = [("1h", 3_600), ("24h", 86_400)]
        .into_iter()
        .filter(|&(_, length)| seconds + 60 < length)
        .map(|(window, _)| window)
        .collect();
    assert_exact(&traffic.ledger, &[&m], &whole);
    // The lag figures below are real series, one per owned partition.
    assert_eq!(
        m.text
            .lines()
            .filter(|l| l.starts_with("ecom_pulse_consumer_lag{"))
            .count(),
        9
    );
    promtool_check(&m.text);

    let log = svc.log();
    // Alert transitions are the service's output, not trouble: the traffic's spend-only
    // campaigns fire their ROAS rules.
    let noisy: Vec<&str> = log[quiet_from..]
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("alertname="))
        .collect();
    assert!(
        noisy.is_empty(),
        "logged while running:\n{}",
        noisy.join("\n")
    );

    let last_third: Vec<u64> = samples
        .iter()
        .filter(|s| s.0.as_secs() >= seconds * 2 / 3)
        .map(|s| s.1)
        .collect();
    let (lo, hi) = (
        *last_third.iter().min().unwrap(),
        *last_third.iter().max().unwrap(),
    );
    let max_lag = samples.iter().map(|s| s.2).fold(0.0, f64::max);
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.3).collect();
    latencies.sort();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "soak: {seconds} s at {rate} events/s, {} events, {} keys, {} scrapes (p50 {:?}, max {:?}); \
         RSS {:.1} MiB after 1 min, {:.1}..{:.1} MiB over the last third, {:.1} MiB at the end; \
         max lag {max_lag} messages; exact at the end; nothing logged at WARN or ERROR",
        seconds as usize * rate,
        traffic.ledger.len(),
        samples.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        mib(samples
            .iter()
            .find(|s| s.0.as_secs() >= 60)
            .map_or(0, |s| s.1)),
        mib(lo),
        mib(hi),
        mib(samples.last().unwrap().1),
    );
    // The de-duplication memory grows for up to one horizon and two generations (7.5
    // minutes with the soak's 5-minute horizon): flatness is only asked of runs whose last
    // third starts well after that.
    if seconds >= 1200 {
        assert!(
            hi as f64 <= lo as f64 * 1.05,
            "RSS not flat over the last third: {:.1}..{:.1} MiB",
            mib(lo),
            mib(hi)
        );
    }
    println!("soak: memory once a minute in {}", memory_log.display());
    if heaptrack_raw.exists() {
        println!(
            "soak: heaptrack trace in {0}; report: /usr/lib/heaptrack/libexec/heaptrack_interpret < {0} | zstd > soak.heaptrack.zst && heaptrack_print soak.heaptrack.zst",
            heaptrack_raw.display()
        );
    }
    assert!(
        max_lag < (5 * rate) as f64,
        "lag reached {max_lag} messages"
    );
}

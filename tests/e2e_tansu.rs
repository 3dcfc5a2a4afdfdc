//! End to end through a real Kafka-protocol broker (Tansu, SQLite storage, three-partition
//! topics) and the `ecom-pulse` binary: events in, exact numbers out of `/metrics`.

mod common;

use std::time::Duration;

use common::events::{self, json_string};
use common::*;
use common::{broker::*, prometheus::*, scrape::*, service::*};

const WINDOWS: [&str; 3] = ["5m", "1h", "24h"];

/// A unique consumer group per test run, so reruns never resume old offsets.
fn group(name: &str) -> String {
    format!("{name}-{}", now_ms())
}

/// A visit with every field of the schema, in either timestamp form (they alternate).
fn visit(id: &str, ts: i64, campaign: &str, channel: &str) -> Msg {
    let visit = events::visit(id, ts)
        .on(campaign, channel)
        .field("visitor_id", json_string(&format!("u-{id}")))
        .field("device", json_string("mobile"));
    match id.len().is_multiple_of(2) {
        true => visit,
        false => visit.timestamp_text(rfc3339(ts)),
    }
    .msg()
}

/// An order with every field of the schema; `amount` as JSON (a number or a string).
fn order(id: &str, ts: i64, campaign: &str, channel: &str, amount: &str, new: bool) -> Msg {
    events::order(id, ts, amount)
        .on(campaign, channel)
        .new_customer(new)
        .field("order_id", json_string(id))
        .field("customer_id", json_string(&format!("c-{id}")))
        .field("currency", json_string("USD"))
        .msg()
}

/// Spend stamped in RFC 3339; `amount` as JSON.
fn spend(id: &str, ts: i64, campaign: &str, channel: &str, amount: &str) -> Msg {
    events::spend(id, ts, amount)
        .on(campaign, channel)
        .timestamp_text(rfc3339(ts))
        .msg()
}

/// The worked examples of docs/contract.md ("KPIs"), one campaign each (amounts alternate
/// number and string).
fn worked_examples(ts: i64) -> Vec<Msg> {
    let mut m = Vec::new();
    // Examples 1 and 3. CVR: 500 orders from 10,000 visits -> 0.05. AOV: 20,000 revenue from
    // 500 orders -> 40.
    for i in 0..10_000 {
        m.push(visit(&format!("cv-{i}"), ts, "cvr_aov", "paid_search"));
    }
    for i in 0..500 {
        let amount = if i % 2 == 0 {
            "40".to_string()
        } else {
            "\"40.00\"".to_string()
        };
        m.push(order(
            &format!("co-{i}"),
            ts,
            "cvr_aov",
            "paid_search",
            &amount,
            false,
        ));
    }
    // Examples 2 and 4. CAC: 5,000 spent, 100 new customers -> 50. CLV: AOV 50 x 4 x 3 -> 600.
    for i in 0..100 {
        m.push(order(
            &format!("ko-{i}"),
            ts,
            "cac_clv",
            "paid_social",
            "50",
            true,
        ));
    }
    for i in 0..50 {
        m.push(spend(
            &format!("ks-{i}"),
            ts,
            "cac_clv",
            "paid_social",
            "100",
        ));
    }
    // Example 5. ROAS: 10,000 revenue on 2,500 spend -> 4.0.
    for i in 0..200 {
        m.push(order(
            &format!("ro-{i}"),
            ts,
            "roas",
            "display",
            "\"50.00\"",
            false,
        ));
    }
    for i in 0..25 {
        m.push(spend(&format!("rs-{i}"), ts, "roas", "display", "100.0"));
    }
    m
}

/// (thread id, name, nice value) of each thread of process `pid`, from /proc.
fn thread_nices(pid: u32) -> Vec<(u32, String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .map(|stat| {
            let (head, tail) = stat.rsplit_once(')').unwrap();
            let (tid, name) = head.split_once(" (").unwrap();
            // Fields after the name start at the state (3rd); the nice value is the 19th.
            let nice = tail.split_whitespace().nth(16).unwrap().parse().unwrap();
            (tid.parse().unwrap(), name.to_string(), nice)
        })
        .collect()
}

fn accepted(m: &Metrics) -> f64 {
    m.sum("ecom_pulse_events_total")
}

#[test]
fn worked_examples_come_out_exact_in_every_window() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let ts = now_ms() - 30_000;
    let messages = worked_examples(ts);
    produce(&tansu.brokers(), &messages);

    let port = free_port();
    let svc = Service::start(
        &service_config(&tansu.brokers(), &group("examples"), port, ""),
        port,
    );
    let expected = messages.len() as f64;
    let m = wait_for(
        "every event to be consumed",
        Duration::from_secs(120),
        || {
            let m = svc.metrics();
            (accepted(&m) >= expected).then_some(m)
        },
    );
    assert_eq!(accepted(&m), expected, "{}", svc.log());
    // The consumer runs on its own thread at nice 10 (docs/architecture.md, "Design choices");
    // every other thread, those that answer HTTP among them, keeps the process's own priority.
    let pid = svc.proc.child.id();
    let threads = thread_nices(pid);
    let base = threads.iter().find(|(tid, ..)| *tid == pid).unwrap().2;
    let (consuming, others): (Vec<_>, Vec<_>) = threads
        .iter()
        .partition(|(_, name, _)| name == ecom_pulse::source::CONSUMING_THREAD);
    assert_eq!(consuming.len(), 1, "{threads:?}");
    assert_eq!(consuming[0].2, base.max(10), "{threads:?}");
    assert!(others.iter().all(|t| t.2 == base), "{threads:?}");
    assert!(
        others.iter().any(|t| t.1.starts_with("tokio-r")),
        "{threads:?}"
    );

    /// (campaign, channel, expected samples)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, Option<f64>)]);
    let cases: &[Case] = &[
        (
            "cvr_aov",
            "paid_search",
            &[
                ("ecom_visits", Some(10_000.0)),
                ("ecom_orders", Some(500.0)),
                ("ecom_new_customers", Some(0.0)),
                ("ecom_gmv", Some(20_000.0)),
                ("ecom_ad_spend", Some(0.0)),
                ("ecom_cvr_ratio", Some(0.05)),
                ("ecom_aov", Some(40.0)),
                ("ecom_clv", Some(480.0)),
                ("ecom_cac", None),
                ("ecom_roas_ratio", None),
                ("ecom_clv_cac_ratio", None),
            ],
        ),
        (
            "cac_clv",
            "paid_social",
            &[
                ("ecom_visits", Some(0.0)),
                ("ecom_orders", Some(100.0)),
                ("ecom_new_customers", Some(100.0)),
                ("ecom_gmv", Some(5_000.0)),
                ("ecom_ad_spend", Some(5_000.0)),
                ("ecom_cac", Some(50.0)),
                ("ecom_aov", Some(50.0)),
                ("ecom_clv", Some(600.0)),
                ("ecom_clv_cac_ratio", Some(12.0)),
                ("ecom_roas_ratio", Some(1.0)),
                ("ecom_cvr_ratio", None),
            ],
        ),
        (
            "roas",
            "display",
            &[
                ("ecom_orders", Some(200.0)),
                ("ecom_gmv", Some(10_000.0)),
                ("ecom_ad_spend", Some(2_500.0)),
                ("ecom_roas_ratio", Some(4.0)),
                ("ecom_aov", Some(50.0)),
                ("ecom_clv", Some(600.0)),
                ("ecom_cac", None),
                ("ecom_clv_cac_ratio", None),
            ],
        ),
    ];
    for (campaign, channel, metrics) in cases {
        for window in WINDOWS {
            for (name, value) in *metrics {
                let series = windowed(name, campaign, channel, window);
                assert_eq!(m.get(&series), *value, "{series}\n{}", m.text);
            }
        }
    }
    for (campaign, channel, visits, orders, new, gmv, spend) in [
        (
            "cvr_aov",
            "paid_search",
            10_000.0,
            500.0,
            0.0,
            20_000.0,
            0.0,
        ),
        (
            "cac_clv",
            "paid_social",
            0.0,
            100.0,
            100.0,
            5_000.0,
            5_000.0,
        ),
        ("roas", "display", 0.0, 200.0, 0.0, 10_000.0, 2_500.0),
    ] {
        assert_eq!(
            m.counter("ecom_visits_total", campaign, channel)
                .or(Some(0.0)),
            Some(visits)
        );
        assert_eq!(
            m.counter("ecom_orders_total", campaign, channel)
                .or(Some(0.0)),
            Some(orders)
        );
        assert_eq!(
            m.counter("ecom_new_customers_total", campaign, channel)
                .or(Some(0.0)),
            Some(new)
        );
        assert_eq!(
            m.counter("ecom_gmv_total", campaign, channel).or(Some(0.0)),
            Some(gmv)
        );
        assert_eq!(
            m.counter("ecom_ad_spend_total", campaign, channel)
                .or(Some(0.0)),
            Some(spend)
        );
    }
    assert_eq!(m.get("ecom_pulse_tracked_keys"), Some(3.0));
    assert_eq!(
        m.get(r#"ecom_pulse_events_total{event_type="visit"}"#),
        Some(10_000.0)
    );
    assert_eq!(
        m.get(r#"ecom_pulse_events_total{event_type="order"}"#),
        Some(800.0)
    );
    assert_eq!(
        m.get(r#"ecom_pulse_events_total{event_type="ad_spend"}"#),
        Some(75.0)
    );
    assert_eq!(m.sum("ecom_pulse_events_rejected_total"), 0.0);
    assert_eq!(m.get("ecom_pulse_kafka_connected"), Some(1.0));
    promtool_check(&m.text);
    // Three topics x three partitions, each with a lag series that reaches 0 once caught up.
    let m = wait_for(
        "zero lag on all nine partitions",
        Duration::from_secs(30),
        || {
            let m = svc.metrics();
            let lags = m.names_with_prefix("ecom_pulse_consumer_lag{");
            (lags.len() == 9 && m.sum("ecom_pulse_consumer_lag") == 0.0).then_some(m)
        },
    );
    promtool_check(&m.text);

    // The JSON API agrees with the exposition, including fleet-level roll-ups from sums.
    let (status, body) = svc.get("/api/v1/kpis?window=1h&group_by=").unwrap();
    assert_eq!(status, 200);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["orders"], 800);
    assert_eq!(rows[0]["gmv"], 35_000.0);
    assert_eq!(rows[0]["roas"], 35_000.0 / 7_500.0);
    assert_eq!(rows[0]["campaign"], serde_json::Value::Null);

    // Ready once caught up.
    wait_for("readiness", Duration::from_secs(30), || {
        svc.get("/readyz").ok().filter(|(s, _)| *s == 200)
    });
}

/// Valid traffic for two keys, one of them named with quotes, a backslash and a newline.
fn good_traffic(ts: i64, hostile: &str) -> Vec<Msg> {
    let mut good = Vec::new();
    for i in 0..300 {
        good.push(visit(&format!("gv-{i}"), ts, "good", "email"));
        good.push(visit(&format!("hv-{i}"), ts, hostile, "paid_social"));
    }
    for i in 0..30 {
        good.push(order(
            &format!("go-{i}"),
            ts,
            "good",
            "email",
            "\"19.99\"",
            i % 3 == 0,
        ));
        good.push(order(
            &format!("ho-{i}"),
            ts,
            hostile,
            "paid_social",
            "10",
            true,
        ));
    }
    for i in 0..6 {
        good.push(spend(&format!("gs-{i}"), ts, "good", "email", "33.33"));
        good.push(spend(&format!("hs-{i}"), ts, hostile, "paid_social", "25"));
    }
    good
}

/// One message or more for every rejection reason, with the reason expected.
fn bad_input(now: i64) -> Vec<(Msg, &'static str)> {
    let bad = |topic: &'static str, value: &str| Msg::json(topic, "good", value.to_string());
    let two_days_ago = now - 2 * 86_400_000;
    let tomorrow = now + 86_400_000;
    vec![
        (bad("visits", "not json at all"), "malformed_json"),
        (
            bad("visits", r#"{"type":"visit","event_id":"t1""#),
            "malformed_json",
        ),
        (bad("orders", r#"["an","array"]"#), "malformed_json"),
        (
            Msg {
                topic: "orders",
                key: "good".into(),
                value: Some(vec![0xff, 0xfe, b'{', b'}']),
            },
            "malformed_json",
        ),
        (
            Msg {
                topic: "visits",
                key: "good".into(),
                value: None,
            },
            "malformed_json",
        ),
        (
            bad("visits", r#"{"type":"click","event_id":"u1"}"#),
            "unknown_type",
        ),
        (
            bad("visits", r#"{"type":42,"event_id":"u2"}"#),
            "unknown_type",
        ),
        (
            bad("visits", r#"{"event_id":"m1","campaign":"good"}"#),
            "missing_field",
        ),
        (
            bad("visits", r#"{"type":"visit","campaign":"good"}"#),
            "missing_field",
        ),
        (
            bad(
                "orders",
                r#"{"type":"order","event_id":"m3","campaign":"good"}"#,
            ),
            "missing_field",
        ),
        (
            bad(
                "ad-spend",
                r#"{"type":"ad_spend","event_id":"m4","amount":5}"#,
            ),
            "missing_field",
        ),
        (
            bad(
                "orders",
                r#"{"type":"order","event_id":"i1","amount":-5,"campaign":"good"}"#,
            ),
            "invalid_value",
        ),
        (
            bad(
                "orders",
                r#"{"type":"order","event_id":"i2","amount":"12,50","campaign":"good"}"#,
            ),
            "invalid_value",
        ),
        (
            bad(
                "visits",
                r#"{"type":"visit","event_id":"i3","timestamp":"last tuesday"}"#,
            ),
            "invalid_value",
        ),
        (
            bad(
                "orders",
                r#"{"type":"order","event_id":"i4","amount":1,"new_customer":"yes"}"#,
            ),
            "invalid_value",
        ),
        (
            bad("visits", r#"{"type":"visit","event_id":""}"#),
            "invalid_value",
        ),
        (
            bad(
                "orders",
                r#"{"type":"order","event_id":"c1","amount":1,"currency":"GBP"}"#,
            ),
            "unknown_currency",
        ),
        (
            bad(
                "ad-spend",
                r#"{"type":"ad_spend","event_id":"c2","amount":1,"currency":"BTC","campaign":"good"}"#,
            ),
            "unknown_currency",
        ),
        (
            bad(
                "visits",
                &format!(r#"{{"type":"visit","event_id":"l1","timestamp":{two_days_ago}}}"#),
            ),
            "too_late",
        ),
        (
            bad(
                "orders",
                &format!(
                    r#"{{"type":"order","event_id":"l2","amount":3,"timestamp":"{}"}}"#,
                    rfc3339(two_days_ago)
                ),
            ),
            "too_late",
        ),
        (
            bad(
                "visits",
                &format!(r#"{{"type":"visit","event_id":"e1","timestamp":{tomorrow}}}"#),
            ),
            "too_early",
        ),
    ]
}

#[test]
fn bad_input_is_counted_by_reason_and_good_traffic_stays_exact() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let now = now_ms();
    let ts = now - 10_000;
    let hostile = "spring \"sale\" \\ 50% off\nnow";

    let good = good_traffic(ts, hostile);
    let mut bad_messages = bad_input(now);
    // Interleave: good traffic, then the bad messages, then 40 re-sent good ones.
    let mut messages = Vec::new();
    let split = good.len() / 2;
    let mut good_iter = good.iter();
    for m in good_iter.by_ref().take(split) {
        messages.push(Msg {
            topic: m.topic,
            key: m.key.clone(),
            value: m.value.clone(),
        });
    }
    let mut expected_rejections = std::collections::BTreeMap::<&str, f64>::new();
    for (m, reason) in bad_messages.drain(..) {
        *expected_rejections.entry(reason).or_default() += 1.0;
        messages.push(m);
    }
    for m in good_iter {
        messages.push(Msg {
            topic: m.topic,
            key: m.key.clone(),
            value: m.value.clone(),
        });
    }
    let resent: Vec<&Msg> = good.iter().step_by(good.len() / 40).take(40).collect();
    assert_eq!(resent.len(), 40);
    for m in &resent {
        messages.push(Msg {
            topic: m.topic,
            key: m.key.clone(),
            value: m.value.clone(),
        });
    }
    produce(&tansu.brokers(), &messages);

    let port = free_port();
    let svc = Service::start(
        &service_config(&tansu.brokers(), &group("bad-input"), port, ""),
        port,
    );
    let total_messages = messages.len() as f64;
    let m = wait_for(
        "every message to be accounted for",
        Duration::from_secs(120),
        || {
            let m = svc.metrics();
            let seen = accepted(&m)
                + m.sum("ecom_pulse_events_rejected_total")
                + m.sum("ecom_pulse_events_duplicate_total");
            (seen >= total_messages).then_some(m)
        },
    );
    assert_eq!(accepted(&m), good.len() as f64, "{}", m.text);
    assert_eq!(m.get("ecom_pulse_events_duplicate_total"), Some(40.0));
    for reason in [
        "malformed_json",
        "unknown_type",
        "missing_field",
        "invalid_value",
        "unknown_currency",
        "too_late",
        "too_early",
    ] {
        let series = format!(r#"ecom_pulse_events_rejected_total{{reason="{reason}"}}"#);
        assert_eq!(
            m.get(&series),
            Some(expected_rejections[reason]),
            "{series}"
        );
    }
    for window in WINDOWS {
        let w = |name| m.get(&windowed(name, "good", "email", window));
        assert_eq!(w("ecom_visits"), Some(300.0));
        assert_eq!(w("ecom_orders"), Some(30.0));
        assert_eq!(w("ecom_new_customers"), Some(10.0));
        assert_eq!(w("ecom_gmv"), Some(599.7));
        assert_eq!(w("ecom_ad_spend"), Some(199.98));
        assert_eq!(w("ecom_cvr_ratio"), Some(0.1));
        // Quotes and backslashes survive (escaped); the newline, a control character, is
        // removed from the name (limits.max_label_bytes and friends).
        let h = |name| {
            m.get(&windowed(
                name,
                &hostile.replace('\n', ""),
                "paid_social",
                window,
            ))
        };
        assert_eq!(h("ecom_visits"), Some(300.0), "{}", m.text);
        assert_eq!(h("ecom_gmv"), Some(300.0));
        assert_eq!(h("ecom_roas_ratio"), Some(2.0));
        assert_eq!(h("ecom_cac"), Some(5.0));
    }
    assert_eq!(m.get("ecom_pulse_tracked_keys"), Some(2.0));
    promtool_check(&m.text);
    // Still serving, and the partitions were not stalled by the bad messages.
    assert_eq!(svc.get("/healthz").unwrap().0, 200);
    wait_for("readiness", Duration::from_secs(30), || {
        svc.get("/readyz").ok().filter(|(s, _)| *s == 200)
    });
    // Rejections were logged, with their reason.
    let log = svc.log();
    assert!(log.contains("event rejected"), "{log}");
    assert!(log.contains("unknown_currency"), "{log}");
}

#[test]
fn unreachable_broker_is_reported_then_recovered_and_shutdown_commits() {
    // The service starts before any broker exists on its port.
    let broker_port = free_port();
    let brokers = format!("127.0.0.1:{broker_port}");
    let port = free_port();
    let group = group("outage");
    let mut svc = Service::start(&service_config(&brokers, &group, port, ""), port);

    let m = wait_for(
        "a scrape while Kafka is down",
        Duration::from_secs(20),
        || {
            let m = svc.metrics();
            m.get("ecom_pulse_kafka_connected").map(|_| m)
        },
    );
    assert_eq!(m.get("ecom_pulse_kafka_connected"), Some(0.0));
    assert_eq!(m.get("ecom_pulse_ready"), Some(0.0));
    let (status, body) = svc.get("/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("not connected"), "{body}");
    assert_eq!(svc.get("/healthz").unwrap().0, 200);
    promtool_check(&m.text);

    // The broker appears; the service connects by itself and consumes.
    let tansu = Tansu::start_on(broker_port, tempfile::tempdir().unwrap());
    tansu.create_topics(&TOPICS, 3);
    let ts = now_ms();
    let messages: Vec<Msg> = (0..50)
        .map(|i| visit(&format!("rv-{i}"), ts, "recovered", "email"))
        .collect();
    produce(&tansu.brokers(), &messages);
    wait_for("events after reconnecting", Duration::from_secs(90), || {
        svc.metrics()
            .get(&windowed("ecom_visits", "recovered", "email", "5m"))
            .filter(|v| *v == 50.0)
    });
    let m = svc.metrics();
    assert_eq!(m.get("ecom_pulse_kafka_connected"), Some(1.0));
    wait_for("readiness", Duration::from_secs(30), || {
        svc.get("/readyz").ok().filter(|(s, _)| *s == 200)
    });

    // The broker goes away: reported, still serving; it comes back on the same storage and
    // consumption resumes by itself.
    let mut tansu = tansu;
    tansu.stop();
    let m = wait_for("the outage to be reported", Duration::from_secs(30), || {
        let m = svc.metrics();
        (m.get("ecom_pulse_kafka_connected") == Some(0.0)).then_some(m)
    });
    assert_eq!(m.get("ecom_pulse_ready"), Some(0.0));
    assert_eq!(svc.get("/readyz").unwrap().0, 503);
    assert_eq!(
        m.get(&windowed("ecom_visits", "recovered", "email", "5m")),
        Some(50.0)
    );
    tansu.restart();
    let more: Vec<Msg> = (50..80)
        .map(|i| visit(&format!("rv-{i}"), ts, "recovered", "email"))
        .collect();
    produce(&tansu.brokers(), &more);
    wait_for(
        "events after the broker came back",
        Duration::from_secs(90),
        || {
            svc.metrics()
                .get(&windowed("ecom_visits", "recovered", "email", "5m"))
                .filter(|v| *v == 80.0)
        },
    );
    assert_eq!(svc.metrics().get("ecom_pulse_kafka_connected"), Some(1.0));
    wait_for(
        "readiness after the outage",
        Duration::from_secs(30),
        || svc.get("/readyz").ok().filter(|(s, _)| *s == 200),
    );

    // SIGTERM: exit 0 promptly, with every processed offset committed.
    let started = std::time::Instant::now();
    let status = svc.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}\n{}", svc.log());
    eprintln!("shutdown took {:?}", started.elapsed());
    assert!(svc.log().contains("committed offsets"), "{}", svc.log());

    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("visits", p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let mut committed_total = 0;
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks("visits", e.partition(), Duration::from_secs(10))
            .unwrap();
        let offset = match e.offset() {
            rdkafka::Offset::Offset(n) => n,
            _ => 0,
        };
        assert_eq!(
            offset,
            high,
            "visits/{} committed {:?}, end {high}",
            e.partition(),
            e.offset()
        );
        committed_total += offset;
    }
    assert_eq!(committed_total, 80);
}

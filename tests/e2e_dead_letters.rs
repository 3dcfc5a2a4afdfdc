//! Rejected events to `kafka.dead_letter_topic`, through Tansu: each one once, unchanged, with
//! headers saying why and from where, also across a `kill -9` between checkpoints and the
//! replay after it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use common::{broker::*, ledger::*, scrape::*, service::*};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;

const DEAD: &str = "dead-letters";

/// A dead letter as read back: headers by name, key and value.
#[derive(Debug, Clone)]
struct Letter {
    headers: BTreeMap<String, String>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// Every record of the dead-letter topic, from the start, once at least `want` are there.
fn read_dead_letters(brokers: &str, want: usize) -> Vec<Letter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("dead-reader-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    consumer.subscribe(&[DEAD]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    // Then a little more, to see that nothing beyond `want` comes: the records are all in
    // the broker already (the service waited for their delivery), so an idle second after
    // the last is the end.
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Letter {
                    headers,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                });
                idle_since = Instant::now();
            }
            _ if out.len() >= want && idle_since.elapsed() > Duration::from_secs(2) => {
                return out;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{} dead letters of {want} after 60 s",
            out.len()
        );
    }
}

/// Bad events, each with its key and the reason and field it must be refused for.
fn bad_events(tag: &str) -> Vec<(Msg, &'static str, Option<&'static str>)> {
    let now = now_ms();
    let raw = |value: &[u8]| Msg {
        topic: "visits",
        key: format!("{tag}-key"),
        value: Some(value.to_vec()),
    };
    let json = |topic: &'static str, value: String| Msg::json(topic, &format!("{tag}-key"), value);
    vec![
        (raw(b"{not json"), "malformed_json", None),
        (raw(b"\xff\xfe"), "malformed_json", None),
        (
            json(
                "visits",
                format!(r#"{{"type":"click","event_id":"{tag}-1"}}"#),
            ),
            "unknown_type",
            Some("type"),
        ),
        (
            json(
                "orders",
                format!(r#"{{"type":"order","event_id":"{tag}-2","timestamp":{now}}}"#),
            ),
            "missing_field",
            Some("amount"),
        ),
        (
            json(
                "orders",
                format!(r#"{{"type":"order","event_id":"{tag}-3","timestamp":{now},"amount":-5}}"#),
            ),
            "invalid_value",
            Some("amount"),
        ),
        (
            json(
                "ad-spend",
                format!(
                    r#"{{"type":"ad_spend","event_id":"{tag}-4","timestamp":{now},"campaign":"c","amount":5,"currency":"XYZ"}}"#
                ),
            ),
            "unknown_currency",
            Some("currency"),
        ),
        (
            json(
                "visits",
                format!(
                    r#"{{"type":"visit","event_id":"{tag}-5","timestamp":{}}}"#,
                    now - 2 * 86_400_000
                ),
            ),
            "too_late",
            Some("timestamp"),
        ),
    ]
}

#[test]
fn rejected_events_are_dead_lettered_once_through_a_crash() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let port = free_port();
    let config = service_config(
        &tansu.brokers(),
        &format!("dead-{}", now_ms()),
        port,
        "[checkpoint]\ninterval = \"5s\"\npartitions = 4\nreplication_factor = 1\n",
    )
    .replace(
        "[kafka.properties]",
        &format!("dead_letter_topic = \"{DEAD}\"\n[kafka.properties]"),
    );
    let mut traffic = Traffic::new("d", 6, &["email"]);
    let ts = now_ms() - 5_000;
    let first = bad_events("first");
    let second = bad_events("second");
    let mut expected: Vec<(Vec<u8>, &str, Option<&str>)> = Vec::new();

    // A first stream with bad events in it, counted and checkpointed.
    let mut svc = Service::start(&config, port);
    let mut batch = traffic.next(300, ts);
    for (m, reason, field) in first {
        expected.push((m.value.clone().unwrap(), reason, field));
        batch.push(m);
    }
    produce(&tansu.brokers(), &batch);
    let checkpoints = |m: &Metrics| {
        m.get(r#"ecom_pulse_checkpoints_total{result="ok"}"#)
            .unwrap_or(0.0)
    };
    let seen = wait_for("the first rejections", Duration::from_secs(60), || {
        let m = svc.metrics();
        (m.sum("ecom_pulse_events_rejected_total") == 7.0).then_some(m)
    });
    wait_for("a checkpoint after them", Duration::from_secs(30), || {
        (checkpoints(&svc.metrics()) > checkpoints(&seen)).then_some(())
    });

    // More, and a kill -9 as soon as they are rejected, before the next checkpoint (5 s).
    let mut batch = traffic.next(300, ts);
    for (m, reason, field) in second {
        expected.push((m.value.clone().unwrap(), reason, field));
        batch.push(m);
    }
    produce(&tansu.brokers(), &batch);
    wait_for("the second rejections", Duration::from_secs(60), || {
        (svc.metrics().sum("ecom_pulse_events_rejected_total") == 14.0).then_some(())
    });
    kill9(&mut svc);

    // The restart reads the second batch again and rejects it again, but sends none of its
    // dead letters again: they are in the topic already.
    let svc = Service::start(&config, port);
    svc.wait_ready(Duration::from_secs(120));
    let m = wait_for("exact after the restart", Duration::from_secs(60), || {
        let m = svc.metrics();
        (counter_totals(&[&m]) == traffic.total()).then_some(m)
    });
    let replayed = m.sum("ecom_pulse_events_rejected_total");
    assert!(
        replayed >= 7.0,
        "the restart read the rejected events again: {replayed}"
    );
    assert_eq!(
        m.get(r#"ecom_pulse_dead_letters_total{result="ok"}"#),
        Some(0.0),
        "dead letters sent again after the restart\n{}",
        svc.log()
    );

    let letters = read_dead_letters(&tansu.brokers(), expected.len());
    assert_eq!(letters.len(), expected.len(), "{letters:#?}");
    let mut by_origin = BTreeMap::new();
    for letter in &letters {
        let origin = (
            letter.headers["ecom_pulse.topic"].clone(),
            letter.headers["ecom_pulse.partition"].clone(),
            letter.headers["ecom_pulse.offset"].clone(),
        );
        assert!(
            by_origin.insert(origin.clone(), letter).is_none(),
            "{origin:?} twice"
        );
    }
    for (value, reason, field) in &expected {
        let letter = letters
            .iter()
            .find(|l| l.value.as_deref() == Some(&value[..]))
            .unwrap_or_else(|| panic!("no dead letter for {:?}", String::from_utf8_lossy(value)));
        assert_eq!(letter.headers["ecom_pulse.reason"], *reason, "{letter:?}");
        assert_eq!(
            letter.headers.get("ecom_pulse.field").map(String::as_str),
            *field,
            "{letter:?}"
        );
        assert!(
            letter.key.as_deref().unwrap().ends_with(b"-key"),
            "{letter:?}"
        );
    }
}

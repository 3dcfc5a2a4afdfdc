//! A real Kafka-protocol broker (Tansu with SQLite storage), and producing to and reading from it.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::pki::Pki;
use super::*;

/// A Tansu broker on its own port, storing into SQLite in its own directory.
pub struct Tansu {
    pub port: u16,
    // Fields drop in order: the processes stop before their directory goes.
    proc: Option<Proc>,
    /// stunnel terminating TLS in front of the broker.
    tls: Option<Proc>,
    pub dir: tempfile::TempDir,
    /// SASL (SCRAM) required of clients.
    authentication: bool,
    /// The port advertised to clients when it is not `port` (a TLS terminator's).
    advertised: Option<u16>,
}

/// A SCRAM user to create in a secured Tansu: name, password, `scram256` or `scram512`.
pub type ScramUser<'a> = (&'a str, &'a str, &'a str);

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_on(free_port(), tempfile::tempdir().unwrap())
    }

    /// Starts (or restarts) a broker on `port` with the SQLite file in `dir`.
    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Tansu {
        let mut t = Tansu {
            port,
            dir,
            proc: None,
            authentication: false,
            advertised: None,
            tls: None,
        };
        t.restart();
        t
    }

    /// A broker that requires SASL/SCRAM of every client, with `users` and `topics` (3
    /// partitions) made first. With `tls`, clients reach it only through stunnel, which
    /// presents `server.pem` of that authority: Tansu 0.6.0 cannot do TLS itself (its
    /// `--cert` and `--key` are mutually exclusive options, and the acceptor it builds is
    /// never used).
    pub fn start_secured(users: &[ScramUser], topics: &[&str], tls: Option<&Pki>) -> Tansu {
        let mut t = Tansu::start();
        // Users can only be made while authentication is off: the `tansu user` client
        // cannot authenticate. The SQLite file keeps them over the restart.
        for (name, password, mechanism) in users {
            t.cli(&["user", "create", name, password, "--mechanism", mechanism]);
        }
        t.create_topics(topics, 3);
        t.stop();
        t.authentication = true;
        if let Some(pki) = tls {
            let port = free_port();
            let conf = t.dir.path().join("stunnel.conf");
            std::fs::write(
                &conf,
                format!(
                    "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{}\ncert = {}\nkey = {}\n",
                    t.port,
                    pki.path("server.pem"),
                    pki.path("server.key"),
                ),
            )
            .unwrap();
            let child = Command::new(tool("stunnel4", "apt-get install stunnel4"))
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start stunnel");
            t.tls = Some(Proc {
                child,
                name: "stunnel".into(),
            });
            wait_for("stunnel to listen", Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            });
            t.advertised = Some(port);
        }
        t.restart();
        t
    }

    /// Where clients connect: the TLS terminator if there is one.
    pub fn client_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let child = Command::new(tool(
            "tansu",
            "cargo install --locked tansu --version 0.6.0 --features dynostore,libsql",
        ))
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .args(self.authentication.then_some("--authentication"))
        .current_dir(self.dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
        self.proc = Some(Proc {
            child,
            name: "tansu".into(),
        });
        let port = self.port;
        wait_for("tansu to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topics(&self, names: &[&str], partitions: u32) {
        for name in names {
            self.cli(&[
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ]);
        }
    }

    /// Runs a `tansu` administration command against this broker; it must succeed.
    fn cli(&self, args: &[&str]) {
        let status = Command::new(tool("tansu", "see above"))
            .args(args)
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .expect("run tansu");
        assert!(status.success(), "tansu {args:?} failed");
    }
}

/// A message to produce: topic, key (empty: a record without a key), value (`None`: a record
/// without a value).
pub struct Msg {
    pub topic: &'static str,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl Msg {
    pub fn json(topic: &'static str, key: &str, value: String) -> Msg {
        Msg {
            topic,
            key: key.to_string(),
            value: Some(value.into_bytes()),
        }
    }
}

/// Produces all messages and waits until the broker acknowledged every one.
pub fn produce(brokers: &str, messages: &[Msg]) {
    produce_with(brokers, &[], messages)
}

/// Like `produce`, with more librdkafka properties (security settings).
pub fn produce_with(brokers: &str, properties: &[(&str, &str)], messages: &[Msg]) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let producer: BaseProducer = config.create().expect("producer");
    for m in messages {
        send(&producer, m, None);
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every message acknowledged");
    assert_eq!(producer.in_flight_count(), 0);
}

/// Hands one message to `producer`, waiting while its queue is full: to `partition` if
/// given, else by key (an empty key: no key, librdkafka's partitioner chooses).
pub fn send(producer: &BaseProducer, m: &Msg, partition: Option<i32>) {
    let mut record: BaseRecord<str, [u8]> = BaseRecord::to(m.topic);
    if !m.key.is_empty() {
        record = record.key(m.key.as_str());
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(v) = &m.value {
        record = record.payload(v.as_slice());
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(20));
            }
        }
    }
}

/// Reads every message of `topic` (all partitions, from the start) with an independent
/// consumer, until `done` says enough or the timeout passes.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}: {} messages {:?}",
            out.len(),
            out.last()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON message");
            out.push((key, value));
        }
    }
    out
}

//! Shared harness for end-to-end tests: a real Tansu broker with SQLite storage, the
//! `ecom-pulse` binary, a producer, a scraper and promtool. Every process started here is
//! killed when its guard drops, so a failing test leaves nothing behind.
//!
//! Missing tools are failures, not skips: `scripts/test` installs them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub const TOPICS: [&str; 3] = ["visits", "orders", "ad-spend"];

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a tool on PATH or in ~/.cargo/bin; panics with the install hint if it is missing.
pub fn tool(name: &str, hint: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; {hint} (scripts/test does this)"))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` saying `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// A message to produce: topic, key, value (`None`: a record without a value).
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
        let mut record = BaseRecord::to(m.topic).key(&m.key);
        if let Some(v) = &m.value {
            record = record.payload(v);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every message acknowledged");
    assert_eq!(producer.in_flight_count(), 0);
}

/// The `ecom-pulse` binary under test, with its config file and HTTP port.
pub struct Service {
    pub http_port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
}

/// Minimal config for a test service; `extra` is appended (more TOML sections).
pub fn service_config(brokers: &str, group: &str, http_port: u16, extra: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["visits", "orders", "ad-spend"]
[kafka.properties]
"session.timeout.ms" = "6000"
"topic.metadata.refresh.interval.ms" = "1000"
[http]
listen = "127.0.0.1:{http_port}"
[log]
level = "info,librdkafka=warn"
{extra}
"#
    )
}

impl Service {
    pub fn start(config_toml: &str, http_port: u16) -> Service {
        let s = Service::spawn(config_toml, http_port);
        wait_for(
            "ecom-pulse to serve /healthz",
            Duration::from_secs(30),
            || s.get("/healthz").ok().filter(|(status, _)| *status == 200),
        );
        s
    }

    /// Starts the process without waiting for it to serve (for servers that plain HTTP
    /// cannot probe).
    pub fn spawn(config_toml: &str, http_port: u16) -> Service {
        Service::spawn_with_env(config_toml, http_port, &[])
    }

    /// Like `spawn`, with environment variables added.
    pub fn spawn_with_env(config_toml: &str, http_port: u16, env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecom-pulse.toml");
        std::fs::write(&path, config_toml).unwrap();
        let log = std::fs::File::create(dir.path().join("service.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ecom-pulse");
        Service {
            http_port,
            dir,
            proc: Proc {
                child,
                name: "ecom-pulse".into(),
            },
        }
    }

    /// GET `path`: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.http_port, path)
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Waits for /readyz to answer 200; on timeout, panics with its last answer and the log.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.get("/readyz");
            if matches!(answer, Ok((200, _))) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "not ready after {timeout:?}: {answer:?}\n--- service log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.proc.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_for("ecom-pulse to exit", timeout, || {
            self.proc.child.try_wait().unwrap()
        })
    }
}

/// A plain HTTP/1.1 GET, enough for our own endpoints (`/metrics` comes chunked, as it is
/// sent while it is rendered).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8(raw[..split].to_vec()).expect("an ASCII head");
    let body = &raw[split + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Ok((status, String::from_utf8(body).expect("utf-8 response")))
}

/// A chunked body's data. An error unless it ends with the last (empty) chunk: a body cut
/// short must not pass for a whole one.
fn dechunk(mut rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let cut = |what: &str| std::io::Error::other(format!("chunked body cut short: {what}"));
    let mut out = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| cut("no chunk size"))?;
        let size = std::str::from_utf8(&rest[..line])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| cut("a bad chunk size"))?;
        rest = &rest[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(cut("a short chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A scrape, as series text → value.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub series: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            series.insert(name.to_string(), value);
        }
        Metrics {
            text: text.to_string(),
            series,
        }
    }

    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// Sum over every series of `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    /// A key's counter summed over its partitions; `None` when no partition exports it.
    pub fn counter(&self, name: &str, campaign: &str, channel: &str) -> Option<f64> {
        let prefix = total(name, campaign, channel);
        let values: Vec<f64> = self
            .series
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| *v)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    pub fn names_with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.series
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }
}

/// Label value escaping of the Prometheus text format.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `name{campaign=..,channel=..,window=..}` as the exposition writes it.
pub fn windowed(name: &str, campaign: &str, channel: &str, window: &str) -> String {
    format!(
        r#"{name}{{campaign="{}",channel="{}",window="{window}"}}"#,
        escape_label(campaign),
        escape_label(channel)
    )
}

/// The start of every series of counter `name` for one key: the counters have one series per
/// input partition (labels `topic`, `partition` follow).
pub fn total(name: &str, campaign: &str, channel: &str) -> String {
    format!(
        r#"{name}{{campaign="{}",channel="{}","#,
        escape_label(campaign),
        escape_label(channel)
    )
}

/// Runs `promtool check metrics` on an exposition and requires no findings.
pub fn promtool_check(text: &str) {
    let mut child = Command::new(tool("promtool", "apt-get install prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );
}

pub fn now_ms() -> i64 {
    ecom_pulse::now_ms()
}

/// RFC 3339 text of an epoch-millisecond time.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Sums per (campaign, channel) of events known to have been produced once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    pub visits: u64,
    pub orders: u64,
    pub new_customers: u64,
    pub gmv_micros: u128,
    pub ad_spend_micros: u128,
}

impl Expected {
    pub fn gmv(&self) -> f64 {
        self.gmv_micros as f64 / 1e6
    }
    pub fn ad_spend(&self) -> f64 {
        self.ad_spend_micros as f64 / 1e6
    }
}

/// Deterministic shop traffic with a ledger of what it produced.
pub struct Traffic {
    pub prefix: String,
    pub campaigns: usize,
    pub channels: &'static [&'static str],
    seq: u64,
    pub ledger: BTreeMap<(String, String), Expected>,
    pub produced: Vec<Msg>,
}

impl Traffic {
    pub fn new(prefix: &str, campaigns: usize, channels: &'static [&'static str]) -> Traffic {
        Traffic {
            prefix: prefix.into(),
            campaigns,
            channels,
            seq: 0,
            ledger: BTreeMap::new(),
            produced: Vec::new(),
        }
    }

    /// The next `n` events (about 85 % visits, 10 % orders, 5 % spend), stamped `ts`, recorded.
    pub fn next(&mut self, n: usize, ts: i64) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            self.seq += 1;
            let s = self.seq;
            let campaign = format!("{}-c{}", self.prefix, s % self.campaigns as u64);
            let channel = self.channels[(s / 7) as usize % self.channels.len()].to_string();
            let id = format!("{}-{s}", self.prefix);
            let e = self
                .ledger
                .entry((campaign.clone(), channel.clone()))
                .or_default();
            let (topic, json) = match s % 20 {
                0 | 1 => {
                    let cents = 1_000 + (s * 37) % 9_000;
                    let new = s.is_multiple_of(3);
                    e.orders += 1;
                    e.new_customers += u64::from(new);
                    e.gmv_micros += cents as u128 * 10_000;
                    (
                        "orders",
                        format!(
                            r#"{{"type":"order","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}","amount":"{}.{:02}","new_customer":{new}}}"#,
                            cents / 100,
                            cents % 100
                        ),
                    )
                }
                2 => {
                    let cents = 500 + (s * 13) % 2_000;
                    e.ad_spend_micros += cents as u128 * 10_000;
                    (
                        "ad-spend",
                        format!(
                            r#"{{"type":"ad_spend","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}","amount":{}.{:02}}}"#,
                            cents / 100,
                            cents % 100
                        ),
                    )
                }
                _ => {
                    e.visits += 1;
                    (
                        "visits",
                        format!(
                            r#"{{"type":"visit","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}"}}"#
                        ),
                    )
                }
            };
            let m = Msg::json(topic, &campaign, json);
            self.produced.push(Msg {
                topic: m.topic,
                key: m.key.clone(),
                value: m.value.clone(),
            });
            out.push(m);
        }
        out
    }

    pub fn total(&self) -> Expected {
        let mut t = Expected::default();
        for e in self.ledger.values() {
            t.visits += e.visits;
            t.orders += e.orders;
            t.new_customers += e.new_customers;
            t.gmv_micros += e.gmv_micros;
            t.ad_spend_micros += e.ad_spend_micros;
        }
        t
    }

    /// Copies of already produced messages (producer retries, at-least-once upstream).
    pub fn resend(&self, every: usize) -> Vec<Msg> {
        self.produced
            .iter()
            .step_by(every)
            .map(|m| Msg {
                topic: m.topic,
                key: m.key.clone(),
                value: m.value.clone(),
            })
            .collect()
    }
}

/// The per-key counters.
pub const COUNTERS: [&str; 5] = [
    "ecom_visits_total",
    "ecom_orders_total",
    "ecom_new_customers_total",
    "ecom_gmv_total",
    "ecom_ad_spend_total",
];

/// Counter totals summed over every key of one or more scrapes.
pub fn counter_totals(scrapes: &[&Metrics]) -> Expected {
    let sum = |name: &str| scrapes.iter().map(|m| m.sum(name)).sum::<f64>();
    Expected {
        visits: sum("ecom_visits_total") as u64,
        orders: sum("ecom_orders_total") as u64,
        new_customers: sum("ecom_new_customers_total") as u64,
        gmv_micros: (sum("ecom_gmv_total") * 1e6).round() as u128,
        ad_spend_micros: (sum("ecom_ad_spend_total") * 1e6).round() as u128,
    }
}

/// Asserts that, across the scrapes of all instances, every key of the ledger is exported by
/// exactly one instance, with exactly the ledger's sums in every window and counter.
pub fn assert_exact(
    ledger: &BTreeMap<(String, String), Expected>,
    scrapes: &[&Metrics],
    windows: &[&str],
) {
    for ((campaign, channel), e) in ledger {
        let owners: Vec<&&Metrics> = scrapes
            .iter()
            .filter(|m| {
                COUNTERS
                    .iter()
                    .any(|name| m.counter(name, campaign, channel).is_some())
            })
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "{campaign}/{channel} exported by {} instances",
            owners.len()
        );
        let m = owners[0];
        // A counter exists where its partition counted that event type; none is none.
        let c = |name| Some(m.counter(name, campaign, channel).unwrap_or(0.0));
        assert_eq!(
            c("ecom_visits_total"),
            Some(e.visits as f64),
            "{campaign}/{channel} visits_total"
        );
        assert_eq!(
            c("ecom_orders_total"),
            Some(e.orders as f64),
            "{campaign}/{channel} orders_total"
        );
        assert_eq!(c("ecom_new_customers_total"), Some(e.new_customers as f64));
        assert_eq!(
            c("ecom_gmv_total"),
            Some(e.gmv()),
            "{campaign}/{channel} gmv_total"
        );
        assert_eq!(
            c("ecom_ad_spend_total"),
            Some(e.ad_spend()),
            "{campaign}/{channel} ad_spend_total"
        );
        for w in windows {
            let g = |name| m.get(&windowed(name, campaign, channel, w));
            assert_eq!(
                g("ecom_visits"),
                Some(e.visits as f64),
                "{campaign}/{channel} visits {w}"
            );
            assert_eq!(
                g("ecom_orders"),
                Some(e.orders as f64),
                "{campaign}/{channel} orders {w}"
            );
            assert_eq!(g("ecom_new_customers"), Some(e.new_customers as f64));
            assert_eq!(g("ecom_gmv"), Some(e.gmv()), "{campaign}/{channel} gmv {w}");
            assert_eq!(
                g("ecom_ad_spend"),
                Some(e.ad_spend()),
                "{campaign}/{channel} ad_spend {w}"
            );
        }
    }
    let keys: usize = scrapes
        .iter()
        .map(|m| m.get("ecom_pulse_tracked_keys").unwrap_or(0.0) as usize)
        .sum();
    assert_eq!(keys, ledger.len(), "tracked keys across instances");
}

/// Sends SIGKILL (no shutdown, no final checkpoint) and reaps the process.
pub fn kill9(svc: &mut Service) {
    svc.proc.child.kill().unwrap();
    svc.proc.child.wait().unwrap();
}

/// Alertmanager's configuration when notifications do not matter: a receiver that drops them.
const BLACKHOLE: &str = "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n";

/// A real Alertmanager (Debian's prometheus-alertmanager) on its own port, no clustering.
pub struct Alertmanager {
    pub port: u16,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Alertmanager {
        let am = Self::spawn(port, None, BLACKHOLE);
        am.wait_ready();
        am
    }

    /// Started with this `alertmanager.yml` (routes and receivers) instead.
    pub fn start_with_config(config_yaml: &str) -> Alertmanager {
        let am = Self::spawn(free_port(), None, config_yaml);
        am.wait_ready();
        am
    }

    /// Started with `--web.config.file` holding `web_yaml` (TLS, basic auth); the caller
    /// waits for it with the right credentials.
    pub fn start_with_web_config(web_yaml: &str) -> Alertmanager {
        Self::spawn(free_port(), Some(web_yaml), BLACKHOLE)
    }

    fn wait_ready(&self) {
        let port = self.port;
        wait_for("alertmanager to be ready", Duration::from_secs(30), || {
            http_get(port, "/-/ready").ok().filter(|(s, _)| *s == 200)
        });
    }

    fn spawn(port: u16, web_yaml: Option<&str>, config_yaml: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let web = web_yaml.map(|yaml| {
            let path = dir.path().join("web.yml");
            std::fs::write(&path, yaml).unwrap();
            format!("--web.config.file={}", path.display())
        });
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, config_yaml).unwrap();
        let child = Command::new(tool(
            "prometheus-alertmanager",
            "apt-get install prometheus-alertmanager",
        ))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .args(web)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
        Alertmanager {
            port,
            _dir: dir,
            _proc: Proc {
                child,
                name: "alertmanager".into(),
            },
        }
    }

    /// Active alerts, as Alertmanager's v2 API lists them.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.port, "/api/v2/alerts").expect("alertmanager API");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
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

/// A real Prometheus (Debian's `prometheus`) scraping `targets` every second and evaluating
/// `rule_files` every second.
pub struct Prometheus {
    pub port: u16,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Prometheus {
    pub fn start(targets: &[String], rule_files: &[&str]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        Self::start_with(
            &format!(
                "  - job_name: ecom-pulse\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
            rule_files,
        )
    }

    /// Like `start`, with the `scrape_configs` list written out (YAML, indented by two).
    pub fn start_with(scrape_configs: &str, rule_files: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules: String = rule_files.iter().map(|f| format!("  - {f}\n")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}scrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(tool("prometheus", "apt-get install prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            port,
            _dir: dir,
            _proc: Proc {
                child,
                name: "prometheus".into(),
            },
        };
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            http_get(port, "/-/ready").ok().filter(|(s, _)| *s == 200)
        });
        p
    }

    /// An instant query's result vector (empty if none), or the error Prometheus gave.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        self.query_params(promql, "")
    }

    /// An instant query evaluated at `time` (Unix seconds) instead of now.
    pub fn query_at(&self, promql: &str, time: f64) -> Result<Vec<serde_json::Value>, String> {
        self.query_params(promql, &format!("&time={time:.3}"))
    }

    fn query_params(&self, promql: &str, params: &str) -> Result<Vec<serde_json::Value>, String> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}{params}"))
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// A throw-away certificate authority made with the `openssl` command: `ca.pem` signs
/// `server.pem` (localhost, 127.0.0.1) and `client.pem`; `other-ca.pem` signs `server2.pem`
/// (a certificate to rotate to).
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=test {ca}"),
            );
            let mut args = vec![
                "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem,
            ];
            args.extend(ec);
            openssl(&args);
        }
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("server2.ext"),
            std::fs::read(dir.path().join("server.ext")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("client.ext"),
            "extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, cn, ca) in [
            ("server", "localhost", "ca"),
            ("client", "prometheus", "ca"),
            ("server2", "localhost", "other-ca"),
        ] {
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ]);
        }
        Pki { dir }
    }

    /// The absolute path of one of the files, as text for config files.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

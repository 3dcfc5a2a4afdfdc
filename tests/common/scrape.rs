//! A plain HTTP client and the Prometheus exposition it reads: series by name, sums, label escaping.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
#[derive(Debug, Clone, Default)]
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

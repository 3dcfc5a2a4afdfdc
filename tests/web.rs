//! Secured HTTP: a web config in Prometheus' exporter-toolkit format turns on TLS,
//! client certificates, basic auth and bearer tokens for every endpoint; a real Prometheus
//! scrapes through it. No broker is needed: the endpoints answer while Kafka is unreachable.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use common::{pki::*, prometheus::*, service::*};

const ENDPOINTS: &[&str] = &[
    "/metrics",
    "/readyz",
    "/api/v1/kpis?window=1h",
    "/api/v1/alerts",
    "/api/v1/history",
    "/",
];
const PASSWORD: &str = "correct horse battery staple";
const TOKEN: &str = "a-long-random-bearer-token-0123456789";

/// `curl` with `args`: (curl's exit code, HTTP status or 0).
fn curl(args: &[&str]) -> (i32, u16) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (out.status.code().unwrap_or(-1), status)
}

fn start(pki: &Pki, web_yaml: &str, open_healthz: bool) -> Service {
    let web = pki.dir.path().join(format!("web-{}.yml", free_port()));
    std::fs::write(&web, web_yaml).unwrap();
    let port = free_port();
    let config = service_config("127.0.0.1:1", "web-test", port, "").replace(
        "[log]",
        &format!(
            "web_config_file = \"{}\"\nopen_healthz = {open_healthz}\n[log]",
            web.display()
        ),
    );
    let svc = Service::spawn(&config, port);
    // The socket is bound before anything is served; connections wait in its backlog.
    wait_for("ecom-pulse to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    svc
}

#[test]
fn every_endpoint_needs_credentials_over_tls_and_prometheus_scrapes_with_them() {
    let pki = Pki::new();
    let hash = bcrypt::hash(PASSWORD, 6).unwrap();
    std::fs::write(pki.dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(pki.dir.path().join("password"), PASSWORD).unwrap();
    std::fs::write(pki.dir.path().join("wrong"), "not the password").unwrap();
    let svc = start(
        &pki,
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: {hash}\nbearer_token_files:\n  - {}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("token"),
        ),
        true,
    );
    let base = format!("https://127.0.0.1:{}", svc.http_port);
    let ca = pki.path("ca.pem");
    let user = format!("prometheus:{PASSWORD}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    for path in ENDPOINTS {
        let url = format!("{base}{path}");
        assert_eq!(
            curl(&["--cacert", &ca, &url]),
            (0, 401),
            "{path} without credentials"
        );
        assert_eq!(
            curl(&["--cacert", &ca, "-u", "prometheus:wrong", &url]),
            (0, 401),
            "{path} with a wrong password"
        );
        assert_eq!(
            curl(&[
                "--cacert",
                &ca,
                "-H",
                "Authorization: Bearer wrong-token-0123456789",
                &url
            ]),
            (0, 401),
            "{path} with a wrong token"
        );
        let expected = if path.starts_with("/readyz") {
            503
        } else {
            200
        };
        assert_eq!(
            curl(&["--cacert", &ca, "-u", &user, &url]),
            (0, expected),
            "{path} basic"
        );
        assert_eq!(
            curl(&["--cacert", &ca, "-H", &bearer, &url]),
            (0, expected),
            "{path} bearer"
        );
    }
    // open_healthz: the probe needs no credentials, but TLS still.
    assert_eq!(
        curl(&["--cacert", &ca, &format!("{base}/healthz")]),
        (0, 200)
    );
    // The challenge tells clients what to send.
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
            &format!("{base}/metrics"),
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        headers.contains("www-authenticate: basic realm=\"ecom-pulse\""),
        "{headers}"
    );
    // TLS is real: plain HTTP gets no page, and a client trusting another CA refuses the
    // server (curl exit 60: peer certificate cannot be authenticated).
    let plain = curl(&[
        "-u",
        &user,
        &format!("http://127.0.0.1:{}/metrics", svc.http_port),
    ]);
    assert_ne!(plain.1, 200, "plain HTTP must not be served: {plain:?}");
    assert_eq!(
        curl(&[
            "--cacert",
            &pki.path("other-ca.pem"),
            &format!("{base}/healthz")
        ])
        .0,
        60
    );

    // A real Prometheus scrapes it the way its docs say: https, the CA, basic auth from a
    // password file, and a second job with a bearer token file; a third with a wrong
    // password must be down.
    let target = format!("127.0.0.1:{}", svc.http_port);
    let job = |name: &str, auth: String| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n{auth}    static_configs:\n      - targets: [\"{target}\"]\n"
        )
    };
    let prometheus = Prometheus::start_with(
        &[
            job(
                "basic",
                format!(
                    "    basic_auth:\n      username: prometheus\n      password_file: {}\n",
                    pki.path("password")
                ),
            ),
            job(
                "bearer",
                format!(
                    "    authorization:\n      credentials_file: {}\n",
                    pki.path("token")
                ),
            ),
            job(
                "wrong",
                format!(
                    "    basic_auth:\n      username: prometheus\n      password_file: {}\n",
                    pki.path("wrong")
                ),
            ),
        ]
        .concat(),
        &[],
    );
    let up = |job: &str| {
        prometheus
            .query(&format!("up{{job=\"{job}\"}}"))
            .ok()
            .and_then(|r| {
                r.first()
                    .map(|s| s["value"][1].as_str().unwrap().to_string())
            })
    };
    wait_for(
        "Prometheus to scrape every job",
        Duration::from_secs(60),
        || {
            let states = (up("basic")?, up("bearer")?, up("wrong")?);
            (states == ("1".into(), "1".into(), "0".into())).then_some(())
        },
    );
    let scraped = prometheus
        .query("ecom_pulse_build_info{job=\"basic\"}")
        .unwrap();
    assert_eq!(
        scraped.len(),
        1,
        "ecom-pulse's own series arrived: {scraped:?}"
    );
}

#[test]
fn client_certificates_and_a_closed_healthz() {
    let pki = Pki::new();
    let hash = bcrypt::hash(PASSWORD, 6).unwrap();
    let svc = start(
        &pki,
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS13\nbasic_auth_users:\n  prometheus: {hash}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        ),
        false,
    );
    let base = format!("https://127.0.0.1:{}", svc.http_port);
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let user = format!("prometheus:{PASSWORD}");
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    // Without a client certificate the handshake fails: no HTTP status at all.
    let (code, status) = curl(&["--cacert", &ca, "-u", &user, &format!("{base}/metrics")]);
    assert!(
        code != 0 && status == 0,
        "served without a client certificate: {code} {status}"
    );
    // With one, credentials are still required, for /healthz too (open_healthz = false).
    for path in ["/metrics", "/healthz"] {
        let url = format!("{base}{path}");
        assert_eq!(
            curl(&[&with_cert[..], &[url.as_str()]].concat()),
            (0, 401),
            "{path}"
        );
        assert_eq!(
            curl(&[&with_cert[..], &["-u", &user, url.as_str()]].concat()),
            (0, 200),
            "{path}"
        );
    }
    // min_version TLS13 refuses a TLS 1.2 client.
    let (code, _) = curl(
        &[
            &with_cert[..],
            &["--tls-max", "1.2", "-u", &user, &format!("{base}/healthz")],
        ]
        .concat(),
    );
    assert_ne!(code, 0, "TLS 1.2 accepted with min_version TLS13");
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let svc = start(
        &pki,
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
        ),
        false,
    );
    let url = format!("https://127.0.0.1:{}/healthz", svc.http_port);
    let (ca, other) = (pki.path("ca.pem"), pki.path("other-ca.pem"));
    assert_eq!(curl(&["--cacert", &ca, &url]), (0, 200));
    assert_eq!(curl(&["--cacert", &other, &url]).0, 60);
    // Rotate: key first, then certificate, as a secret update might.
    std::fs::copy(pki.path("server2.key"), pki.path("server.key")).unwrap();
    std::fs::copy(pki.path("server2.pem"), pki.path("server.pem")).unwrap();
    wait_for(
        "the new certificate to be served",
        Duration::from_secs(60),
        || (curl(&["--cacert", &other, &url]) == (0, 200)).then_some(()),
    );
    assert_eq!(
        curl(&["--cacert", &ca, &url]).0,
        60,
        "the old chain is gone"
    );
    assert!(
        svc.log().contains("TLS certificate reloaded"),
        "{}",
        svc.log()
    );
}

#[test]
fn a_broken_web_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(&web, "basic_auth_users:\n  prometheus: plain-text-secret\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nweb_config_file = \"{}\"\n",
            web.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("basic_auth_users.prometheus"), "{stderr}");
    assert!(!stderr.contains("plain-text-secret"), "{stderr}");
}

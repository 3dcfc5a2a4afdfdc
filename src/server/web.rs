//! Securing the HTTP endpoints the way Prometheus and its exporters do: a web config file in
//! the exporter-toolkit format (what `--web.config.file` takes), named by
//! `http.web_config_file`. It may turn on TLS (optionally with client certificates) and
//! basic auth with bcrypt hashes; ecom-pulse adds bearer tokens, read from files.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/ecom-pulse/tls/tls.crt
//!   key_file: /etc/ecom-pulse/tls/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
//!   client_ca_file: /etc/ecom-pulse/tls/ca.crt
//!   min_version: TLS12                             # TLS12 (default) or TLS13
//! basic_auth_users:                                # user: bcrypt hash (htpasswd -nBC 10)
//!   prometheus: $2y$10$...
//! bearer_token_files:                              # ecom-pulse only: one token per file
//!   - /run/secrets/ecom-pulse-token
//! ```
//!
//! The file is read once at start-up and a mistake stops it, naming the key; certificates are
//! re-read when their files change, so a rotated certificate needs no restart.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("http.web_config_file: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Wrong YAML, an unknown key or a wrong type; the parser's message names the key.
    #[error("http.web_config_file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("http.web_config_file, key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The file as written. Unknown keys are errors, so a setting ecom-pulse does not implement
/// (exporter-toolkit's `http_server_config`, say) is refused instead of silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    #[serde(default)]
    bearer_token_files: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: MinVersion,
}

/// exporter-toolkit's names for Go's `tls.ClientAuthType` values that make sense here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
enum MinVersion {
    #[default]
    TLS12,
    TLS13,
}

/// What the HTTP server does with a loaded web config.
#[derive(Clone, Default)]
pub struct Web {
    pub tls: Option<Tls>,
    pub auth: Option<Arc<Auth>>,
}

impl std::fmt::Debug for Web {
    // Never prints hashes or tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

impl Web {
    /// Reads and checks the file; an empty path means plain, open HTTP.
    pub fn load(path: &str, open_healthz: bool) -> Result<Web, WebConfigError> {
        if path.is_empty() {
            return Ok(Web::default());
        }
        let path = Path::new(path);
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| WebConfigError::Parse {
                path: path.to_owned(),
                message: without_quoted_values(&e.to_string()),
            })?
        };
        let tls = file.tls_server_config.map(Tls::new).transpose()?;
        let auth = Auth::new(
            &file.basic_auth_users,
            &file.bearer_token_files,
            open_healthz,
        )?;
        Ok(Web {
            tls,
            auth: auth.map(Arc::new),
        })
    }
}

/// The parser's message with every quoted value blanked: a typo in the file may make a hash
/// or a token land where a key was expected, and the message would quote it.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if quoted {
                out.push_str("...\"");
            } else {
                out.push('"');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// A TLS server configuration, and the files it came from so that it can be reloaded.
#[derive(Clone)]
pub struct Tls {
    file: Arc<TlsFile>,
    /// What the files looked like just before `config` was read from them.
    seen: Vec<FileId>,
    pub config: Arc<rustls::ServerConfig>,
}

/// Enough of a file's metadata to notice it was replaced or rewritten, whatever its new
/// timestamp: modification time, size and inode.
type FileId = Option<(SystemTime, u64, u64)>;

impl Tls {
    fn new(file: TlsFile) -> Result<Tls, WebConfigError> {
        let seen = file_ids(&file);
        let config = Arc::new(build_tls(&file)?);
        Ok(Tls {
            file: Arc::new(file),
            seen,
            config,
        })
    }

    /// Re-reads the certificate, key and client CA whenever one of the files changes, until
    /// `shutdown`. A file caught half-written is retried at the next look; the server keeps
    /// the previous certificate meanwhile.
    pub async fn reload_on_change(
        self,
        target: axum_server::tls_rustls::RustlsConfig,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut seen = self.seen.clone();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = file_ids(&self.file);
            if now == seen {
                continue;
            }
            match build_tls(&self.file) {
                Ok(config) => {
                    target.reload_from_config(Arc::new(config));
                    seen = now;
                    tracing::info!("TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous certificate")
                }
            }
        }
    }
}

fn file_ids(file: &TlsFile) -> Vec<FileId> {
    use std::os::unix::fs::MetadataExt;
    [
        Some(&file.cert_file),
        Some(&file.key_file),
        file.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    })
    .collect()
}

fn build_tls(file: &TlsFile) -> Result<rustls::ServerConfig, WebConfigError> {
    // As exporter-toolkit: a CA without a policy is a mistake, not "no client certificates".
    if file.client_auth_type == ClientAuth::NoClientCert && file.client_ca_file.is_some() {
        return Err(invalid(
            "tls_server_config.client_auth_type",
            "client_ca_file is set: say RequireAndVerifyClientCert or VerifyClientCertIfGiven",
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&file.cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            invalid(
                "tls_server_config.cert_file",
                format!("{}: {e}", file.cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "tls_server_config.cert_file",
            format!("{}: no certificate in it", file.cert_file.display()),
        ));
    }
    // The key file's content is never quoted in errors.
    let key = PrivateKeyDer::from_pem_file(&file.key_file).map_err(|e| {
        invalid(
            "tls_server_config.key_file",
            format!("{}: {e}", file.key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match file.min_version {
        MinVersion::TLS12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::TLS13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| invalid("tls_server_config.min_version", e.to_string()))?;
    let builder = match (file.client_auth_type, &file.client_ca_file) {
        (ClientAuth::NoClientCert, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "is required when client_auth_type verifies client certificates",
            ));
        }
        (mode, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| {
                invalid(
                    "tls_server_config.client_ca_file",
                    format!("{}: {e}", ca.display()),
                )
            })? {
                let cert = cert.map_err(|e| {
                    invalid(
                        "tls_server_config.client_ca_file",
                        format!("{}: {e}", ca.display()),
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    invalid(
                        "tls_server_config.client_ca_file",
                        format!("{}: {e}", ca.display()),
                    )
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = if mode == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| {
                invalid(
                    "tls_server_config.client_ca_file",
                    format!("{}: {e}", ca.display()),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "tls_server_config.key_file",
            format!("does not match cert_file: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Who may call: basic-auth users (bcrypt hashes) and bearer tokens (kept as SHA-256).
pub struct Auth {
    users: BTreeMap<String, String>,
    token_hashes: Vec<[u8; 32]>,
    open_healthz: bool,
    /// Credentials that passed bcrypt once, as SHA-256 of user, hash and password: bcrypt
    /// costs ~50 ms by design, which a scrape every few seconds must not pay each time
    /// (exporter-toolkit caches the same way).
    verified: Mutex<HashSet<[u8; 32]>>,
    /// A bcrypt hash of a random password at the highest cost configured: unknown users are
    /// checked against it so that they take as long to refuse as known ones.
    dummy_hash: String,
    /// Held during a bcrypt check: one at a time, so a flood of wrong passwords costs at most
    /// one core, not the consumer's (exporter-toolkit serialises them too).
    bcrypt_gate: Mutex<()>,
}

/// Cached verified credentials at most; past it the cache starts over.
const MAX_CACHED: usize = 1024;

impl Auth {
    fn new(
        users: &BTreeMap<String, String>,
        token_files: &[PathBuf],
        open_healthz: bool,
    ) -> Result<Option<Auth>, WebConfigError> {
        if users.is_empty() && token_files.is_empty() {
            return Ok(None);
        }
        for (user, hash) in users {
            if user.is_empty() || user.contains(':') {
                return Err(invalid(
                    "basic_auth_users",
                    "a user name must be non-empty and without ':'",
                ));
            }
            // Only the user's name is quoted: the hash is a secret too.
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(
                    &format!("basic_auth_users.{user}"),
                    "is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)",
                ));
            }
        }
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|h| h.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let password: [u8; 16] = rand::random();
        let dummy_hash = bcrypt::hash(password, cost).expect("bcrypt of 16 bytes");
        let mut token_hashes = Vec::new();
        for (i, path) in token_files.iter().enumerate() {
            let key = format!("bearer_token_files[{i}]");
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("{}: {e}", path.display())))?;
            let token = text.trim();
            if token.len() < 16 {
                return Err(invalid(
                    &key,
                    format!(
                        "{}: a token must have at least 16 characters",
                        path.display()
                    ),
                ));
            }
            token_hashes.push(Sha256::digest(token.as_bytes()).into());
        }
        Ok(Some(Auth {
            users: users.clone(),
            token_hashes,
            open_healthz,
            verified: Mutex::new(HashSet::new()),
            dummy_hash,
            bcrypt_gate: Mutex::new(()),
        }))
    }

    /// Whether the request's `Authorization` header lets it in. May take a bcrypt
    /// verification: call it off the async workers.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let presented: [u8; 32] = Sha256::digest(credentials.as_bytes()).into();
            // Every token is compared, in constant time, whichever matches.
            return self
                .token_hashes
                .iter()
                .fold(0u8, |hit, t| hit | t.ct_eq(&presented).unwrap_u8())
                == 1;
        }
        if !scheme.eq_ignore_ascii_case("basic") || self.users.is_empty() {
            return false;
        }
        let Some((user, password)) = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy_hash.as_str(), false),
        };
        let mut key = Sha256::new();
        for part in [user.as_bytes(), hash.as_bytes(), password.as_bytes()] {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part);
        }
        let key: [u8; 32] = key.finalize().into();
        if known && self.verified.lock().contains(&key) {
            return true;
        }
        let ok = {
            let _one_at_a_time = self.bcrypt_gate.lock();
            bcrypt::verify(&password, hash).unwrap_or(false) && known
        };
        if ok {
            let mut cache = self.verified.lock();
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    fn challenge(&self) -> &'static str {
        if self.users.is_empty() {
            "Bearer"
        } else {
            "Basic realm=\"ecom-pulse\""
        }
    }
}

/// The router, behind the authentication the web config asks for (if any).
pub fn protect(router: axum::Router, web: &Web) -> axum::Router {
    match &web.auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_auth,
        )),
        None => router,
    }
}

/// Middleware: lets a request through when it is authorised (or is a probe of an open
/// `/healthz`), answers 401 with a challenge otherwise.
pub async fn require_auth(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if auth.open_healthz && request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let headers = request.headers().clone();
    let checker = auth.clone();
    let allowed = tokio::task::spawn_blocking(move || checker.allows(&headers))
        .await
        .unwrap_or(false);
    if allowed {
        return next.run(request).await;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(auth.challenge()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {v}")).unwrap(),
        );
        h
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn basic_auth_checks_the_bcrypt_hash_and_caches_only_successes() {
        let hash = bcrypt::hash("s3cret-pass", 4).unwrap();
        let users = BTreeMap::from([("prom".to_string(), hash)]);
        let auth = Auth::new(&users, &[], false).unwrap().unwrap();
        assert!(auth.allows(&basic("prom", "s3cret-pass")));
        assert_eq!(auth.verified.lock().len(), 1);
        assert!(auth.allows(&basic("prom", "s3cret-pass")), "from the cache");
        assert!(!auth.allows(&basic("prom", "wrong")));
        assert!(!auth.allows(&basic("other", "s3cret-pass")));
        assert!(!auth.allows(&HeaderMap::new()));
        assert!(!auth.allows(&bearer("s3cret-pass")), "no tokens configured");
        assert_eq!(auth.verified.lock().len(), 1);
    }

    #[test]
    fn bearer_tokens_come_from_files_and_must_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", "0123456789abcdef-token-a\n");
        let b = write(dir.path(), "b", "0123456789abcdef-token-b");
        let auth = Auth::new(&BTreeMap::new(), &[a, b], true).unwrap().unwrap();
        assert!(auth.allows(&bearer("0123456789abcdef-token-a")));
        assert!(auth.allows(&bearer("0123456789abcdef-token-b")));
        assert!(!auth.allows(&bearer("0123456789abcdef-token-")));
        assert!(!auth.allows(&basic("x", "0123456789abcdef-token-a")));
        assert_eq!(auth.challenge(), "Bearer");
        let short = write(dir.path(), "short", "tiny");
        let err = Auth::new(&BTreeMap::new(), &[short], true)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bearer_token_files[0]"), "{err}");
        assert!(!err.contains("tiny"), "{err}");
    }

    #[test]
    fn mistakes_name_the_key_and_never_quote_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let check = |yaml: &str, key: &str| {
            let p = write(dir.path(), "web.yml", yaml);
            let err = Web::load(p.to_str().unwrap(), false)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
            assert!(!err.contains("not-a-hash-secret"), "{err}");
        };
        check(
            "basic_auth_users:\n  prom: not-a-hash-secret\n",
            "basic_auth_users.prom",
        );
        check(
            "http_server_config:\n  http2: false\n",
            "http_server_config",
        );
        check(
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            "tls_server_config.cert_file",
        );
        check(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
            "client_auth_type",
        );
        check(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            "tls_server_config.client_auth_type",
        );
        // A missing space makes the hash part of a string where a map belongs.
        check(
            "basic_auth_users: prometheus:not-a-hash-secret\n",
            "basic_auth_users",
        );
        let missing = Web::load("/nonexistent/web.yml", false).unwrap_err();
        assert!(missing.to_string().contains("http.web_config_file"));
        // An empty file is valid and changes nothing, as in exporter-toolkit.
        let p = write(dir.path(), "empty.yml", "");
        let web = Web::load(p.to_str().unwrap(), false).unwrap();
        assert!(web.tls.is_none() && web.auth.is_none());
    }
}

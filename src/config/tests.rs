//! Tests of loading: defaults, layering of file and environment, secrets, and every bad value
//! failing with the key it concerns.

use super::*;
use crate::pure::window::WindowLength;

fn env(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn load_toml(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    Config::load_with_env(Some(&path), env(&[]))
}

fn labels(lengths: &[WindowLength]) -> Vec<&str> {
    lengths.iter().map(|w| w.label.as_str()).collect()
}

fn error_of(text: &str) -> String {
    load_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_spec() {
    let c = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.kafka.group_id, "ecom-pulse");
    assert_eq!(c.kafka.topics, ["visits", "orders", "ad-spend"]);
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:9898");
    assert_eq!(labels(&c.windows.lengths), ["5m", "1h", "24h"]);
    assert_eq!(c.kpi.reporting_currency, "USD");
    assert_eq!(c.kpi.purchases_per_year, 4.0);
    assert_eq!(c.kpi.lifetime_years, 3.0);
    assert_eq!(c.currency_rates().get("EUR"), Some(&1.08));
    assert!(c.dedup.horizon >= Duration::from_secs(15 * 60));
    assert!(c.kafka.properties.is_empty());
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn environment_overrides_file_and_parses_lists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "alerts = []\n[kafka]\nbrokers = \"file:1\"\ngroup_id = \"g\"\n",
    )
    .unwrap();
    let c = Config::load_with_env(
        Some(&path),
        env(&[
            ("ECOM_PULSE__KAFKA__BROKERS", "env:1,env:2"),
            ("ECOM_PULSE__WINDOWS__LENGTHS", "10s,2m"),
            ("ECOM_PULSE__KAFKA__TOPICS", "a,b"),
            ("ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD", "secret"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "env:1,env:2");
    assert_eq!(c.kafka.group_id, "g");
    assert_eq!(labels(&c.windows.lengths), ["10s", "2m"]);
    assert_eq!(c.kafka.topics, ["a", "b"]);
    assert_eq!(c.kafka.properties.get("sasl.password").unwrap(), "secret");
}

#[test]
fn secrets_come_from_files_and_the_environment_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "from-a-file-s3cret\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[kafka.properties]\n\"sasl.password\" = \"${{file:{}}}\"\n\"sasl.username\" = \"${{env:KAFKA_USER}}\"\n\"ssl.key.password\" = \"plain-s3cret\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let c = Config::load_with_env(Some(&path), env(&[("KAFKA_USER", "env-user-s3cret")])).unwrap();
    let p = &c.kafka.properties;
    assert_eq!(
        p.get("sasl.password").unwrap(),
        "from-a-file-s3cret",
        "final newline dropped"
    );
    assert_eq!(p.get("sasl.username").unwrap(), "env-user-s3cret");
    let shown = format!("{c:?}");
    for secret in ["from-a-file-s3cret", "env-user-s3cret", "plain-s3cret"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
        let message = format!("Unsupported value \"{secret}\" for a property");
        assert_eq!(
            p.redact(&message),
            "Unsupported value \"[redacted]\" for a property"
        );
    }
    assert!(
        shown.contains("SCRAM-SHA-512"),
        "ordinary values stay visible"
    );
    assert_eq!(p.redact("nothing secret"), "nothing secret");

    // A reference that cannot be resolved names the key, not a value.
    std::fs::write(
        &path,
        "[kafka.properties]\n\"sasl.password\" = \"${file:/nonexistent/pw}\"\n",
    )
    .unwrap();
    let err = Config::load_with_env(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("kafka.properties.sasl.password"), "{err}");
    assert!(err.contains("/nonexistent/pw"), "{err}");
    std::fs::write(
        &path,
        "[kafka.properties]\n\"sasl.password\" = \"${env:NOT_SET_ANYWHERE}\"\n",
    )
    .unwrap();
    let err = Config::load_with_env(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kafka.properties.sasl.password") && err.contains("NOT_SET_ANYWHERE"),
        "{err}"
    );
}

#[test]
fn a_parse_error_does_not_quote_the_line_it_is_about() {
    let err = load_toml("[kafka.properties]\n\"sasl.password\" = hunter2-secret\n").unwrap_err();
    assert!(
        err.to_string().contains("hunter2-secret"),
        "the parser quotes it"
    );
    let shown = err.without_source_lines();
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(shown.contains("line 2"), "{shown}");
}

#[test]
fn short_secrets_are_not_searched_for() {
    let c = Config::load_with_env(
        None,
        env(&[("ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD", "x")]),
    )
    .unwrap();
    let m = "increase receive.message.max.bytes";
    assert_eq!(c.kafka.properties.redact(m), m);
}

#[test]
fn alertmanager_security_settings_go_together() {
    for (toml, key) in [
        (
            "[alertmanager]\ncert_file = \"c.pem\"\n",
            "alertmanager.cert_file",
        ),
        (
            "[alertmanager]\nbasic_auth_username = \"u\"\n",
            "alertmanager.basic_auth_password_file",
        ),
        (
            "[alertmanager]\nbasic_auth_username = \"u\"\nbasic_auth_password_file = \"p\"\nbearer_token_file = \"t\"\n",
            "alertmanager.bearer_token_file",
        ),
    ] {
        let err = error_of(toml);
        assert!(err.contains(key), "{err} should name {key}");
    }
}

#[test]
fn environment_text_stays_text_and_numbers_still_parse() {
    let c = Config::load_with_env(
        None,
        env(&[
            ("ECOM_PULSE__KAFKA__GROUP_ID", "0042"),
            ("ECOM_PULSE__KAFKA__PROPERTIES__SASL_USERNAME", "007"),
            ("ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD", "1e3"),
            ("ECOM_PULSE__KPI__PURCHASES_PER_YEAR", "5.5"),
            ("ECOM_PULSE__WINDOWS__BUCKETS", "30"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.group_id, "0042");
    assert_eq!(c.kafka.properties.get("sasl.username").unwrap(), "007");
    assert_eq!(c.kafka.properties.get("sasl.password").unwrap(), "1e3");
    assert_eq!(c.kpi.purchases_per_year, 5.5);
    assert_eq!(c.windows.buckets, 30);
}

#[test]
fn kafka_properties_accept_nested_and_quoted_keys() {
    let c = load_toml(
        "[kafka.properties]\nsession.timeout.ms = 6000\n\"security.protocol\" = \"SSL\"\nenable.partition.eof = false\n",
    )
    .unwrap();
    let p = &c.kafka.properties;
    assert_eq!(p.get("session.timeout.ms").unwrap(), "6000");
    assert_eq!(p.get("security.protocol").unwrap(), "SSL");
    assert_eq!(p.get("enable.partition.eof").unwrap(), "false");
}

/// The default cap holds the horizon at 5,000 events/s per partition: ids live up to 1.25
/// horizons (a generation past it), 5,625,000 of them.
#[test]
fn the_default_cap_holds_15_minutes_at_5000_events_per_second() {
    let config = Config::load_with_env(None, Some(Default::default())).unwrap();
    let horizon_s = config.dedup.horizon.as_secs() as usize;
    assert_eq!(horizon_s, 900);
    assert!(config.dedup.max_ids_per_partition >= 5_000 * horizon_s * 5 / 4);
}

/// `log_level` is one of librdkafka's names with `_`: it reaches the client as written,
/// from a file or from the environment, while `_` elsewhere still stands for `.`.
#[test]
fn kafka_properties_keep_librdkafkas_underscored_names() {
    let c = load_toml(
        "[kafka.properties]
log_level = 3
",
    )
    .unwrap();
    assert_eq!(c.kafka.properties.get("log_level").unwrap(), "3");
    assert!(c.kafka.properties.get("log.level").is_none());
    let c = Config::load_with_env(
        None,
        env(&[
            ("ECOM_PULSE__KAFKA__PROPERTIES__LOG_LEVEL", "7"),
            ("ECOM_PULSE__KAFKA__PROPERTIES__FETCH_MIN_BYTES", "10"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.properties.get("log_level").unwrap(), "7");
    assert_eq!(c.kafka.properties.get("fetch.min.bytes").unwrap(), "10");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "[kpi]\npurchases_per_year = \"many\"\n",
            "kpi.purchases_per_year",
        ),
        (
            "[kpi]\npurchases_per_year = -1.0\n",
            "kpi.purchases_per_year",
        ),
        ("[kpi]\nlifetime_years = 0.0\n", "kpi.lifetime_years"),
        (
            "[kpi]\nreporting_currency = \"dollars\"\n",
            "kpi.reporting_currency",
        ),
        (
            "[kpi.currency_rates]\nGBP = -2.0\n",
            "kpi.currency_rates.GBP",
        ),
        (
            "[windows]\nlengths = [\"5m\", \"5x\"]\n",
            "windows.lengths[1]",
        ),
        (
            "[windows]\nlengths = [\"5m\", \"300s\"]\n",
            "windows.lengths[1]",
        ),
        ("[windows]\nlengths = []\n", "windows.lengths"),
        ("[windows]\nbuckets = 0\n", "windows.buckets"),
        ("[kafka]\nconsumer_nice = 20\n", "kafka.consumer_nice"),
        ("[kafka]\nconsumer_nice = -1\n", "kafka.consumer_nice"),
        (
            "[windows]\nmax_future_skew = \"soon\"\n",
            "windows.max_future_skew",
        ),
        ("[dedup]\nhorizon = \"0s\"\n", "dedup.horizon"),
        ("[dedup]\nhorizon = \"60d\"\n", "dedup.horizon"),
        (
            "[windows]\nmax_future_skew = \"300000000years\"\n",
            "windows.max_future_skew",
        ),
        ("[windows]\nlengths = [\"1009ms\"]\n", "windows.lengths[0]"),
        ("[checkpoint]\ninterval = \"1ms\"\n", "checkpoint.interval"),
        ("[checkpoint]\npartitions = 0\n", "checkpoint.partitions"),
        ("[checkpoint]\ntopic = \"visits\"\n", "checkpoint.topic"),
        (
            "[[alerts]]\nname = \"roas low\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"warning\"\n",
            "alerts[0].name",
        ),
        (
            "[[alerts]]\nname = \"RoasLow\"\nkpi = \"romi\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"warning\"\n",
            "alerts[0].kpi",
        ),
        (
            "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"2h\"\nseverity = \"warning\"\n",
            "alerts[0].window",
        ),
        (
            "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"=\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"warning\"\n",
            "alerts[0].op",
        ),
        (
            "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\ndrop = 1.5\nwindow = \"1h\"\nseverity = \"warning\"\n",
            "alerts[0].drop",
        ),
        (
            "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"page\"\n",
            "alerts[0].severity",
        ),
        (
            "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nfor = \"soon\"\nseverity = \"info\"\n",
            "alerts",
        ),
        (
            "[alertmanager]\nurl = \"alertmanager:9093\"\n",
            "alertmanager.url",
        ),
        (
            "[dedup]\nmax_ids_per_partition = 10\n",
            "dedup.max_ids_per_partition",
        ),
        ("[limits]\nmax_keys = 0\n", "limits.max_keys"),
        ("[limits]\nmax_label_bytes = 4\n", "limits.max_label_bytes"),
        ("[http]\nlisten = \"not an address\"\n", "http.listen"),
        ("[kafka]\nbrokers = \"\"\n", "kafka.brokers"),
        ("[kafka]\ntopics = [\"a\", \" \"]\n", "kafka.topics[1]"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
    ];
    for (toml, key) in cases {
        let message = error_of(toml);
        assert!(
            message.contains(key),
            "{toml:?}: {message:?} does not name {key}"
        );
    }
}

#[test]
fn a_file_with_alert_rules_replaces_the_default_rules() {
    let defaults = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(
        defaults
            .alerts
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        [
            "RoasBelowBreakEven",
            "RoasBelowOne",
            "ClvCacBelowThree",
            "RoasDrop"
        ]
    );
    let one = load_toml("[[alerts]]\nname = \"AovLow\"\nkpi = \"aov\"\nop = \"<\"\nthreshold = 20.0\nwindow = \"5m\"\nseverity = \"info\"\n").unwrap();
    assert_eq!(one.alerts.len(), 1);
    assert_eq!(one.alerts[0].name, "AovLow");
    assert_eq!(one.alerts[0].hysteresis, 0.05);
    assert!(load_toml("alerts = []\n").unwrap().alerts.is_empty());
}

#[test]
fn unknown_keys_are_refused() {
    let message = error_of("[kpi]\npurchases_per_yaer = 5.0\n");
    assert!(message.contains("purchases_per_yaer"), "{message}");
    let message = error_of("[kafak]\nbrokers = \"x\"\n");
    assert!(message.contains("kafak"), "{message}");
}

#[test]
fn missing_file_is_an_error() {
    let err = Config::load_with_env(Some(Path::new("/nonexistent/ecom.toml")), env(&[]));
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("/nonexistent/ecom.toml")
    );
}

#[test]
fn a_value_of_the_wrong_shape_names_the_table_expected() {
    let message = error_of("windows = \"5m\"\n");
    assert!(message.contains("expected a [windows] table"), "{message}");
    let message = error_of("alerts = [\"RoasLow\"]\n");
    assert!(message.contains("expected an [[alerts]] rule"), "{message}");
    assert!(message.contains("alerts[0]"), "{message}");
}

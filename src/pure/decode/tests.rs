//! Tests of decoding: every rejection reason, both timestamp and amount forms, currencies,
//! and the fast parser against the general one.

use super::*;

const RECORD_TS: i64 = 1_700_000_000_000;

fn decoder() -> Decoder {
    Decoder::new(
        "USD",
        [("EUR".to_string(), 1.08), ("JPY".to_string(), 0.0067)],
    )
}

fn ok(json: &str) -> Event<'_> {
    decoder()
        .decode(json.as_bytes(), RECORD_TS)
        .unwrap_or_else(|r| panic!("{json} rejected: {r}"))
}

fn rejected(json: &str) -> Rejection {
    match decoder().decode(json.as_bytes(), RECORD_TS) {
        Ok(e) => panic!("{json} accepted as {e:?}"),
        Err(r) => r,
    }
}

#[test]
fn spec_examples_decode() {
    let v = ok(
        r#"{"type":"visit","event_id":"v-1","timestamp":"2026-11-22T08:00:00Z","visitor_id":"u-7","campaign":"spring_sale","channel":"paid_social","device":"mobile"}"#,
    );
    assert_eq!(v.kind, EventType::Visit);
    assert_eq!(v.timestamp_ms, 1_795_334_400_000);
    assert_eq!(v.campaign, "spring_sale");
    assert_eq!(v.channel, "paid_social");
    assert_eq!(v.amount_micros, 0);

    let o = ok(
        r#"{"type":"order","event_id":"o-1","timestamp":1763798400000,"order_id":"o-1","customer_id":"c-3","amount":49.9,"currency":"USD","new_customer":true,"campaign":"spring_sale","channel":"paid_social"}"#,
    );
    assert_eq!(o.kind, EventType::Order);
    assert_eq!(o.timestamp_ms, 1_763_798_400_000);
    assert_eq!(o.amount_micros, 49_900_000);
    assert!(o.new_customer);

    let s = ok(
        r#"{"type":"ad_spend","event_id":"s-1","timestamp":"2026-11-22T08:00:05Z","campaign":"spring_sale","channel":"paid_social","amount":12.5,"currency":"USD"}"#,
    );
    assert_eq!(s.kind, EventType::AdSpend);
    assert_eq!(s.timestamp_ms, 1_795_334_405_000);
    assert_eq!(s.amount_micros, 12_500_000);
}

#[test]
fn both_timestamp_forms_and_the_record_fallback() {
    let rfc = ok(r#"{"type":"visit","event_id":"a","timestamp":"2026-11-22T09:30:00.250+01:30"}"#);
    assert_eq!(rfc.timestamp_ms, 1_795_334_400_250);
    let millis = ok(r#"{"type":"visit","event_id":"a","timestamp":1795334400250}"#);
    assert_eq!(millis.timestamp_ms, 1_795_334_400_250);
    let absent = ok(r#"{"type":"visit","event_id":"a"}"#);
    assert_eq!(absent.timestamp_ms, RECORD_TS);
    let null = ok(r#"{"type":"visit","event_id":"a","timestamp":null}"#);
    assert_eq!(null.timestamp_ms, RECORD_TS);
}

#[test]
fn both_amount_forms_agree_and_are_exact() {
    let n = ok(r#"{"type":"order","event_id":"a","amount":49.9}"#);
    let s = ok(r#"{"type":"order","event_id":"a","amount":"49.90"}"#);
    assert_eq!(n.amount_micros, 49_900_000);
    assert_eq!(s.amount_micros, 49_900_000);
    assert_eq!(
        ok(r#"{"type":"order","event_id":"a","amount":40}"#).amount_micros,
        40_000_000
    );
    assert_eq!(
        ok(r#"{"type":"order","event_id":"a","amount":"0"}"#).amount_micros,
        0
    );
    assert_eq!(
        ok(r#"{"type":"order","event_id":"a","amount":0.1}"#).amount_micros
            + ok(r#"{"type":"order","event_id":"a","amount":0.2}"#).amount_micros,
        300_000
    );
}

#[test]
fn currencies_convert_with_configured_rates() {
    let eur = ok(r#"{"type":"order","event_id":"a","amount":"10","currency":"EUR"}"#);
    assert_eq!(eur.amount_micros, 10_800_000);
    let lower =
        ok(r#"{"type":"ad_spend","event_id":"a","campaign":"c","amount":100,"currency":"eur"}"#);
    assert_eq!(lower.amount_micros, 108_000_000);
    let jpy = ok(r#"{"type":"order","event_id":"a","amount":1000,"currency":"JPY"}"#);
    assert_eq!(jpy.amount_micros, 6_700_000);
    let usd = ok(r#"{"type":"order","event_id":"a","amount":5,"currency":"USD"}"#);
    assert_eq!(usd.amount_micros, 5_000_000);
}

/// The cap is on the reporting currency: an amount within it in its own currency but
/// above it once converted is refused, not clamped to the largest integer.
#[test]
fn the_amount_cap_holds_after_conversion() {
    let at_cap = ok(r#"{"type":"order","event_id":"a","amount":1e12,"currency":"JPY"}"#);
    assert_eq!(at_cap.amount_micros, 6_700_000_000_000_000);
    let rejected = rejected(r#"{"type":"order","event_id":"a","amount":1e12,"currency":"EUR"}"#);
    assert_eq!(rejected, reject(Reason::InvalidValue, "amount"));
    let just_under = 1e12 / 1.08;
    let json =
        format!(r#"{{"type":"order","event_id":"a","amount":{just_under},"currency":"EUR"}}"#);
    assert!(ok(&json).amount_micros <= 1_000_000_000_000_000_000);
}

#[test]
fn labels_default_to_none_and_keep_odd_characters() {
    let v = ok(r#"{"type":"visit","event_id":"a","campaign":"","channel":null}"#);
    assert_eq!(v.campaign, NONE_LABEL);
    assert_eq!(v.channel, NONE_LABEL);
    let odd = ok(r#"{"type":"visit","event_id":"a","campaign":"say \"hi\"\\\nnow"}"#);
    assert_eq!(odd.campaign, "say \"hi\"\\\nnow");
}

#[test]
fn unknown_fields_are_ignored() {
    let v = ok(r#"{"type":"visit","event_id":"a","extra":{"nested":[1,2,{"x":null}]},"n":-5}"#);
    assert_eq!(v.kind, EventType::Visit);
}

#[test]
fn short_ids_of_different_types_do_not_collide() {
    let mut seen = std::collections::HashSet::new();
    for kind in EventType::ALL {
        for i in 0..20_000 {
            assert!(
                seen.insert(id_hash(kind, &format!("e{i}"))),
                "{kind:?} e{i}"
            );
        }
    }
    assert_ne!(
        id_hash(EventType::AdSpend, "e12"),
        id_hash(EventType::Visit, "e14")
    );
}

#[test]
fn event_id_hash_depends_on_type_and_id() {
    let a = ok(r#"{"type":"visit","event_id":"x"}"#);
    let b = ok(r#"{"type":"visit","event_id":"x","campaign":"other"}"#);
    let c = ok(r#"{"type":"order","event_id":"x","amount":1}"#);
    let d = ok(r#"{"type":"visit","event_id":"y"}"#);
    assert_eq!(a.id_hash, b.id_hash);
    assert_ne!(a.id_hash, c.id_hash);
    assert_ne!(a.id_hash, d.id_hash);
}

#[test]
fn every_rejection_reason() {
    use Reason::*;
    let long_id = format!(r#"{{"type":"visit","event_id":"{}"}}"#, "x".repeat(129));
    let cases: Vec<(&str, Reason, &str)> = vec![
        ("", MalformedJson, ""),
        ("not json", MalformedJson, ""),
        (r#"{"type":"visit","event_id":"a""#, MalformedJson, ""),
        (r#"[{"type":"visit"}]"#, MalformedJson, ""),
        (r#""visit""#, MalformedJson, ""),
        (
            r#"{"type":"visit","event_id":"a"} trailing"#,
            MalformedJson,
            "",
        ),
        (r#"{"event_id":"a"}"#, MissingField, "type"),
        (r#"{"type":null,"event_id":"a"}"#, MissingField, "type"),
        (r#"{"type":"click","event_id":"a"}"#, UnknownType, "type"),
        (r#"{"type":"Visit","event_id":"a"}"#, UnknownType, "type"),
        (r#"{"type":7,"event_id":"a"}"#, UnknownType, "type"),
        (r#"{"type":"visit"}"#, MissingField, "event_id"),
        (
            r#"{"type":"visit","event_id":""}"#,
            InvalidValue,
            "event_id",
        ),
        (
            r#"{"type":"visit","event_id":12}"#,
            InvalidValue,
            "event_id",
        ),
        (&long_id, InvalidValue, "event_id"),
        (
            r#"{"type":"visit","event_id":"a","timestamp":"yesterday"}"#,
            InvalidValue,
            "timestamp",
        ),
        (
            r#"{"type":"visit","event_id":"a","timestamp":"2026-11-22 08:00:00"}"#,
            InvalidValue,
            "timestamp",
        ),
        (
            r#"{"type":"visit","event_id":"a","timestamp":-5}"#,
            InvalidValue,
            "timestamp",
        ),
        (
            r#"{"type":"visit","event_id":"a","timestamp":1.5}"#,
            InvalidValue,
            "timestamp",
        ),
        (
            r#"{"type":"visit","event_id":"a","timestamp":true}"#,
            InvalidValue,
            "timestamp",
        ),
        (
            r#"{"type":"visit","event_id":"a","campaign":5}"#,
            InvalidValue,
            "campaign",
        ),
        (
            r#"{"type":"visit","event_id":"a","channel":["x"]}"#,
            InvalidValue,
            "channel",
        ),
        (
            r#"{"type":"visit","event_id":"a","visitor_id":7}"#,
            InvalidValue,
            "visitor_id",
        ),
        (
            r#"{"type":"visit","event_id":"a","type":"order"}"#,
            InvalidValue,
            "type",
        ),
        (r#"{"type":"order","event_id":"a"}"#, MissingField, "amount"),
        (
            r#"{"type":"order","event_id":"a","amount":null}"#,
            MissingField,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":-1}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":-0.5}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":"-1"}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":"1e3"}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":"NaN"}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":"12."}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":" 12"}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":1e300}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":true}"#,
            InvalidValue,
            "amount",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":1,"new_customer":"yes"}"#,
            InvalidValue,
            "new_customer",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":1,"currency":"GBP"}"#,
            UnknownCurrency,
            "currency",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":1,"currency":"dollars"}"#,
            UnknownCurrency,
            "currency",
        ),
        (
            r#"{"type":"order","event_id":"a","amount":1,"currency":840}"#,
            InvalidValue,
            "currency",
        ),
        (
            r#"{"type":"ad_spend","event_id":"a","amount":1}"#,
            MissingField,
            "campaign",
        ),
        (
            r#"{"type":"ad_spend","event_id":"a","campaign":"","amount":1}"#,
            MissingField,
            "campaign",
        ),
        (
            r#"{"type":"ad_spend","event_id":"a","campaign":"c"}"#,
            MissingField,
            "amount",
        ),
    ];
    for (json, reason, detail) in cases {
        let r = rejected(json);
        assert_eq!(r.reason, reason, "{json}");
        if !detail.is_empty() {
            assert_eq!(r.detail, detail, "{json}");
        }
    }
    assert_eq!(
        decoder()
            .decode(&[0xff, 0xfe, b'{'], RECORD_TS)
            .unwrap_err()
            .reason,
        MalformedJson
    );
    // Bytes that are not UTF-8 anywhere in the value: past the first 64 bytes (where the
    // validator works a block at a time), in a field that is otherwise ignored.
    let visit = r#"{"type":"visit","event_id":"v-1","timestamp":1763798400000,"campaign":"spring_sale","channel":"paid_social","device":"CUT"}"#;
    let (head, tail) = visit.split_once("CUT").unwrap();
    for bad in [&[0xffu8][..], &[0xc3], &[0xe2, 0x82], &[0xed, 0xa0, 0x80]] {
        let value = [head.as_bytes(), bad, tail.as_bytes()].concat();
        assert_eq!(
            decoder().decode(&value, RECORD_TS).unwrap_err().reason,
            MalformedJson,
            "{bad:?}"
        );
    }
    // Multi-byte characters that are UTF-8 pass, escaped or not.
    let ok = visit
        .replace("CUT", "t\\u00e9l\u{e9}phone \u{1f4f1}")
        .replace("spring_sale", "\u{e9}t\u{e9}");
    assert!(decoder().decode(ok.as_bytes(), RECORD_TS).is_ok());
}

#[test]
fn reason_labels_are_the_spec_names() {
    let names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    for spec in [
        "malformed_json",
        "unknown_type",
        "missing_field",
        "invalid_value",
        "unknown_currency",
        "too_late",
    ] {
        assert!(names.contains(&spec), "{spec}");
    }
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""type":"visit""#.to_string()),
            Just(r#""type":"order""#.to_string()),
            Just(r#""type":"ad_spend""#.to_string()),
            Just(r#""type":"click""#.to_string()),
            "[a-z0-9-]{0,12}".prop_map(|id| format!(r#""event_id":"{id}""#)),
            // Long enough to span the fast path's eight-byte words, with every byte
            // that ends a plain string somewhere in them.
            r#"[a-zé"\\\n\u{1}\u{1f}]{0,20}"#
                .prop_map(|c| format!(r#""campaign":{}"#, serde_json::to_string(&c).unwrap())),
            // Keys that start like known ones, or are known ones escaped.
            prop_oneof![
                Just("types"),
                Just("ty"),
                Just("t"),
                Just("channel_"),
                Just("campaig"),
                Just("customer"),
                Just("\\u0074ype"),
                Just(""),
                Just("é"),
            ]
            .prop_map(|k| format!(r#""{k}":"x""#)),
            "[a-z_]{0,8}".prop_map(|c| format!(r#""channel":"{c}""#)),
            // Unescaped control characters: invalid JSON, wherever they sit.
            "[a-zé_]{0,12}[\u{0}\u{1f}\n][a-z]{0,9}".prop_map(|c| format!(r#""device":"{c}""#)),
            (0u64..10_000_000, 0u32..3).prop_map(|(n, d)| match d {
                0 => format!(r#""amount":{n}"#),
                1 => format!(r#""amount":{}.{}"#, n / 100, n % 100),
                _ => format!(r#""amount":"{}.{:02}""#, n / 100, n % 100),
            }),
            (0u64..1e13 as u64).prop_map(|n| format!(r#""amount":{n}e-3"#)),
            (1_600_000_000_000i64..1_900_000_000_000).prop_map(|ms| format!(r#""timestamp":{ms}"#)),
            (1_600_000_000_000i64..1_900_000_000_000, 0usize..4).prop_map(|(ms, f)| {
                let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
                let text = match f {
                    0 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    1 => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    2 => t.format("%Y-%m-%dT%H:%M:%S%.6f+05:30").to_string(),
                    _ => t.format("%Y-%m-%dt%H:%M:%S-00:00").to_string(),
                };
                format!(r#""timestamp":"{text}""#)
            }),
            Just(r#""currency":"EUR""#.to_string()),
            Just(r#""currency":"GBP""#.to_string()),
            any::<bool>().prop_map(|b| format!(r#""new_customer":{b}"#)),
            Just(r#""new_customer":null"#.to_string()),
            Just(r#""amount":-5"#.to_string()),
            Just(r#""amount":01"#.to_string()),
            Just(r#""extra":{"a":[1,2]}"#.to_string()),
            Just(r#""n":1.5e+3"#.to_string()),
            // Beyond f64, for a field a visit never reads and one every event does.
            Just(r#""amount":1e400"#.to_string()),
            // Long significands: serde_json (without `float_roundtrip`) and std may differ
            // in the last bit; the micro-units an amount becomes must not.
            "[1-9][0-9]{18,30}\\.[0-9]{1,30}".prop_map(|n| format!(r#""amount":{n}e-20"#)),
            "0\\.[0-9]{20,40}".prop_map(|n| format!(r#""amount":{n}"#)),
            Just(r#""timestamp":1e400"#.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The fast path and serde_json agree on every event, valid or not.
        #[test]
        fn fast_and_general_paths_agree(
            fields in proptest::collection::vec(field(), 0..9),
            spaces in proptest::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n\t ")], 9),
            cut in proptest::option::of(0usize..200),
        ) {
            let mut json = String::from("{");
            for (i, f) in fields.iter().enumerate() {
                if i > 0 { json.push(','); }
                json.push_str(spaces[i]);
                json.push_str(f);
            }
            json.push('}');
            // Cut by bytes: possibly inside a character, which both must reject.
            let mut json = json.into_bytes();
            if let Some(cut) = cut {
                json.truncate(cut.min(json.len()));
            }
            let d = decoder();
            let fast = d.decode(&json, RECORD_TS);
            let general = d.decode_general(&json, RECORD_TS);
            prop_assert_eq!(fast, general, "{}", String::from_utf8_lossy(&json));
        }

        /// The fast timestamp parser agrees with chrono wherever it answers.
        #[test]
        fn fast_rfc3339_agrees_with_chrono(ms in -2_000_000_000_000i64..5_000_000_000_000, frac in 0usize..10, offset in -1439i64..1439) {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap()
                .with_timezone(&chrono::FixedOffset::east_opt((offset * 60) as i32).unwrap());
            let text = match frac {
                0 => t.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                3 => t.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
                6 => t.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string(),
                9 => t.format("%Y-%m-%dT%H:%M:%S%.9f%:z").to_string(),
                _ => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            };
            let chrono_ms = chrono::DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_millis());
            if let Some(fast_ms) = fast::rfc3339_ms(&text) {
                prop_assert_eq!(Some(fast_ms), chrono_ms, "{}", text);
            }
            prop_assert_eq!(parse_rfc3339_ms(&text), chrono_ms, "{}", text);
        }
    }

    #[test]
    fn the_fast_path_takes_the_common_events() {
        let spec = r#"{"type":"order","event_id":"o-1","timestamp":1763798400000,"order_id":"o-1","customer_id":"c-3","amount":49.9,"currency":"USD","new_customer":true,"campaign":"spring_sale","channel":"paid_social"}"#;
        assert!(fast::parse(spec.as_bytes(), &mut RawEvent::default()));
        assert!(fast::rfc3339_ms("2026-11-22T08:00:05Z").is_some());
        assert!(fast::rfc3339_ms("2026-11-22T08:00:05.250+01:30").is_some());
        // Escapes and nesting are left to serde_json.
        assert!(!fast::parse(
            br#"{"campaign":"a\"b"}"#,
            &mut RawEvent::default()
        ));
        assert!(!fast::parse(br#"{"x":{}}"#, &mut RawEvent::default()));
    }
}

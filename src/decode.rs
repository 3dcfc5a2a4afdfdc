//! Decoding and validation of one Kafka message value into an [`Event`] (SPEC §2).
//!
//! Every rule of the event schema is checked here and every failure becomes a [`Rejection`]
//! with a reason and the field at fault, so a bad event is counted and explained instead of
//! stalling a partition. The decoder borrows strings from the message where JSON escaping
//! allows and does not allocate on the common path.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Label value for an absent or empty campaign or channel.
pub const NONE_LABEL: &str = "(none)";
/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Largest accepted amount, in currency units. Keeps money sums far from overflow.
pub const MAX_AMOUNT: f64 = 1e12;
/// Money is carried as integer millionths of the reporting currency, so sums are exact and do
/// not depend on the order events arrive in.
pub const MICROS_PER_UNIT: f64 = 1e6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Visit,
    Order,
    AdSpend,
}

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::Visit, EventType::Order, EventType::AdSpend];

    /// The `type` field value, also the `event_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Visit => "visit",
            EventType::Order => "order",
            EventType::AdSpend => "ad_spend",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why an event was rejected: the `reason` label of `ecom_pulse_events_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not UTF-8 JSON, or not a JSON object.
    MalformedJson,
    /// `type` is not one of `visit`, `order`, `ad_spend`.
    UnknownType,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type or an out-of-range value.
    InvalidValue,
    /// `currency` is neither the reporting currency nor configured.
    UnknownCurrency,
    /// Older than the longest window: it could not change any exported value.
    TooLate,
    /// Stamped further in the future than `windows.max_future_skew`.
    TooEarly,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::MalformedJson,
        Reason::UnknownType,
        Reason::MissingField,
        Reason::InvalidValue,
        Reason::UnknownCurrency,
        Reason::TooLate,
        Reason::TooEarly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::UnknownType => "unknown_type",
            Reason::MissingField => "missing_field",
            Reason::InvalidValue => "invalid_value",
            Reason::UnknownCurrency => "unknown_currency",
            Reason::TooLate => "too_late",
            Reason::TooEarly => "too_early",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejected event: the reason, and the field (or problem) for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: &'static str,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

fn reject(reason: Reason, detail: &'static str) -> Rejection {
    Rejection { reason, detail }
}

/// A valid event, as the aggregates need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: EventType,
    /// 64-bit hash of (type, event_id): what de-duplication remembers.
    pub id_hash: u64,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    pub campaign: Cow<'a, str>,
    pub channel: Cow<'a, str>,
    /// Order or spend amount in micro-units of the reporting currency; 0 for visits.
    pub amount_micros: u64,
    /// Orders only.
    pub new_customer: bool,
}

/// Turns message values into events. Holds the currency table.
#[derive(Debug, Clone)]
pub struct Decoder {
    reporting_currency: String,
    /// (code, rate) pairs; few enough that a linear scan beats hashing.
    rates: Vec<(String, f64)>,
}

impl Decoder {
    pub fn new(reporting_currency: &str, rates: impl IntoIterator<Item = (String, f64)>) -> Self {
        Decoder {
            reporting_currency: reporting_currency.to_ascii_uppercase(),
            rates: rates
                .into_iter()
                .map(|(code, rate)| (code.to_ascii_uppercase(), rate))
                .collect(),
        }
    }

    pub fn reporting_currency(&self) -> &str {
        &self.reporting_currency
    }

    /// Decodes and validates one message value. `fallback_ts_ms` (the Kafka record timestamp)
    /// is used when the event carries none.
    pub fn decode<'a>(
        &self,
        payload: &'a [u8],
        fallback_ts_ms: i64,
    ) -> Result<Event<'a>, Rejection> {
        let raw: RawEvent<'a> = serde_json::from_slice(payload)
            .map_err(|_| reject(Reason::MalformedJson, "not a JSON object"))?;
        if let Some(field) = raw.duplicate {
            return Err(reject(Reason::InvalidValue, field));
        }
        let kind = match raw.kind {
            None | Some(Scalar::Null) => return Err(reject(Reason::MissingField, "type")),
            Some(Scalar::Str(ref s)) => match s.as_ref() {
                "visit" => EventType::Visit,
                "order" => EventType::Order,
                "ad_spend" => EventType::AdSpend,
                _ => return Err(reject(Reason::UnknownType, "type")),
            },
            Some(_) => return Err(reject(Reason::UnknownType, "type")),
        };
        let event_id = match raw.event_id {
            None | Some(Scalar::Null) => return Err(reject(Reason::MissingField, "event_id")),
            Some(Scalar::Str(s)) if !s.is_empty() && s.len() <= MAX_EVENT_ID_BYTES => s,
            Some(_) => return Err(reject(Reason::InvalidValue, "event_id")),
        };
        let timestamp_ms = match raw.timestamp {
            None | Some(Scalar::Null) => fallback_ts_ms,
            Some(Scalar::Str(s)) => {
                parse_rfc3339_ms(&s).ok_or(reject(Reason::InvalidValue, "timestamp"))?
            }
            Some(Scalar::U64(ms)) => {
                i64::try_from(ms).map_err(|_| reject(Reason::InvalidValue, "timestamp"))?
            }
            Some(_) => return Err(reject(Reason::InvalidValue, "timestamp")),
        };
        let campaign = label(raw.campaign, "campaign")?;
        let channel = label(raw.channel, "channel")?;
        for (field, value) in [
            ("visitor_id", &raw.visitor_id),
            ("customer_id", &raw.customer_id),
            ("order_id", &raw.order_id),
            ("device", &raw.device),
        ] {
            if !matches!(value, None | Some(Scalar::Null) | Some(Scalar::Str(_))) {
                return Err(reject(Reason::InvalidValue, field));
            }
        }

        let (amount_micros, new_customer) = match kind {
            EventType::Visit => (0, false),
            EventType::Order | EventType::AdSpend => {
                let micros = parse_amount(raw.amount)?;
                let micros = self.convert(micros, raw.currency)?;
                let new_customer = match (kind, raw.new_customer) {
                    (EventType::Order, Some(Scalar::Bool(b))) => b,
                    (EventType::Order, None | Some(Scalar::Null)) => false,
                    (EventType::Order, Some(_)) => {
                        return Err(reject(Reason::InvalidValue, "new_customer"));
                    }
                    _ => false,
                };
                (micros, new_customer)
            }
        };
        let campaign = match (kind, campaign) {
            (EventType::AdSpend, None) => return Err(reject(Reason::MissingField, "campaign")),
            (_, c) => c.unwrap_or(Cow::Borrowed(NONE_LABEL)),
        };
        Ok(Event {
            kind,
            id_hash: id_hash(kind, &event_id),
            timestamp_ms,
            campaign,
            channel: channel.unwrap_or(Cow::Borrowed(NONE_LABEL)),
            amount_micros,
            new_customer,
        })
    }

    fn convert(&self, micros: u64, currency: Option<Scalar<'_>>) -> Result<u64, Rejection> {
        let code = match currency {
            None | Some(Scalar::Null) => return Ok(micros),
            Some(Scalar::Str(code)) => code,
            Some(_) => return Err(reject(Reason::InvalidValue, "currency")),
        };
        if code.eq_ignore_ascii_case(&self.reporting_currency) {
            return Ok(micros);
        }
        let rate = self
            .rates
            .iter()
            .find(|(known, _)| code.eq_ignore_ascii_case(known))
            .map(|(_, rate)| *rate)
            .ok_or(reject(Reason::UnknownCurrency, "currency"))?;
        Ok((micros as f64 * rate).round() as u64)
    }
}

/// Hash of (type, event_id). The type is hashed as a prefix byte, not as xxh3's seed: for
/// short inputs the seed only shifts the hash linearly, so `("ad_spend", "e12")` and
/// `("visit", "e14")` would collide.
fn id_hash(kind: EventType, event_id: &str) -> u64 {
    let mut buf = [0u8; MAX_EVENT_ID_BYTES + 1];
    buf[0] = kind as u8;
    buf[1..=event_id.len()].copy_from_slice(event_id.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf[..=event_id.len()])
}

/// `campaign` / `channel`: absent, null or empty is `None` (the `(none)` label).
fn label<'a>(
    value: Option<Scalar<'a>>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) if s.is_empty() => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(_) => Err(reject(Reason::InvalidValue, field)),
    }
}

/// `amount`: a finite, non-negative JSON number or decimal string, as micro-units.
fn parse_amount(value: Option<Scalar<'_>>) -> Result<u64, Rejection> {
    let invalid = reject(Reason::InvalidValue, "amount");
    let amount = match value {
        None | Some(Scalar::Null) => return Err(reject(Reason::MissingField, "amount")),
        Some(Scalar::U64(n)) => n as f64,
        Some(Scalar::F64(f)) => f,
        Some(Scalar::Str(s)) if is_decimal(&s) => s.parse::<f64>().map_err(|_| invalid)?,
        Some(_) => return Err(invalid),
    };
    if !(amount.is_finite() && (0.0..=MAX_AMOUNT).contains(&amount)) {
        return Err(invalid);
    }
    Ok((amount * MICROS_PER_UNIT).round() as u64)
}

/// Plain decimal notation, as money is written: `49`, `49.90`. No sign, exponent or spaces.
fn is_decimal(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// RFC 3339 with any offset, to epoch milliseconds (sub-millisecond digits are truncated).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Any JSON value, reduced to what validation needs to tell apart.
#[derive(Debug)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    /// Negative integers: never valid for any field, kept apart from `U64`.
    I64,
    F64(f64),
    Str(Cow<'a, str>),
    /// An array or object, skipped over.
    Composite,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(match u64::try_from(v) {
                    Ok(u) => Scalar::U64(u),
                    Err(_) => Scalar::I64,
                })
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::F64(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite)
            }
        }
        de.deserialize_any(ScalarVisitor)
    }
}

/// The fields of SPEC §2, each as whatever JSON value it held.
#[derive(Default)]
struct RawEvent<'a> {
    kind: Option<Scalar<'a>>,
    event_id: Option<Scalar<'a>>,
    timestamp: Option<Scalar<'a>>,
    campaign: Option<Scalar<'a>>,
    channel: Option<Scalar<'a>>,
    amount: Option<Scalar<'a>>,
    currency: Option<Scalar<'a>>,
    new_customer: Option<Scalar<'a>>,
    visitor_id: Option<Scalar<'a>>,
    customer_id: Option<Scalar<'a>>,
    order_id: Option<Scalar<'a>>,
    device: Option<Scalar<'a>>,
    /// A field given twice: ambiguous, so rejected rather than guessed.
    duplicate: Option<&'static str>,
}

enum Field {
    Type,
    EventId,
    Timestamp,
    Campaign,
    Channel,
    Amount,
    Currency,
    NewCustomer,
    VisitorId,
    CustomerId,
    OrderId,
    Device,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "type" => Field::Type,
                    "event_id" => Field::EventId,
                    "timestamp" => Field::Timestamp,
                    "campaign" => Field::Campaign,
                    "channel" => Field::Channel,
                    "amount" => Field::Amount,
                    "currency" => Field::Currency,
                    "new_customer" => Field::NewCustomer,
                    "visitor_id" => Field::VisitorId,
                    "customer_id" => Field::CustomerId,
                    "order_id" => Field::OrderId,
                    "device" => Field::Device,
                    _ => Field::Other,
                })
            }
        }
        de.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawEvent::default();
                while let Some(field) = map.next_key::<Field>()? {
                    let (slot, name) = match field {
                        Field::Type => (&mut raw.kind, "type"),
                        Field::EventId => (&mut raw.event_id, "event_id"),
                        Field::Timestamp => (&mut raw.timestamp, "timestamp"),
                        Field::Campaign => (&mut raw.campaign, "campaign"),
                        Field::Channel => (&mut raw.channel, "channel"),
                        Field::Amount => (&mut raw.amount, "amount"),
                        Field::Currency => (&mut raw.currency, "currency"),
                        Field::NewCustomer => (&mut raw.new_customer, "new_customer"),
                        Field::VisitorId => (&mut raw.visitor_id, "visitor_id"),
                        Field::CustomerId => (&mut raw.customer_id, "customer_id"),
                        Field::OrderId => (&mut raw.order_id, "order_id"),
                        Field::Device => (&mut raw.device, "device"),
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value = map.next_value::<Scalar<'de>>()?;
                    if slot.replace(value).is_some() {
                        raw.duplicate.get_or_insert(name);
                    }
                }
                Ok(raw)
            }
        }
        de.deserialize_map(EventVisitor)
    }
}

#[cfg(test)]
mod tests {
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
        let rfc =
            ok(r#"{"type":"visit","event_id":"a","timestamp":"2026-11-22T09:30:00.250+01:30"}"#);
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
        let lower = ok(
            r#"{"type":"ad_spend","event_id":"a","campaign":"c","amount":100,"currency":"eur"}"#,
        );
        assert_eq!(lower.amount_micros, 108_000_000);
        let jpy = ok(r#"{"type":"order","event_id":"a","amount":1000,"currency":"JPY"}"#);
        assert_eq!(jpy.amount_micros, 6_700_000);
        let usd = ok(r#"{"type":"order","event_id":"a","amount":5,"currency":"USD"}"#);
        assert_eq!(usd.amount_micros, 5_000_000);
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
}

//! Decoding and validation of one Kafka message value into an [`Event`] (the schema:
//! docs/contract.md, "Events").
//!
//! Every rule of the event schema is checked here and every failure becomes a [`Rejection`]
//! with a reason and the field at fault, so a bad event is counted and explained instead of
//! stalling a partition. The decoder borrows strings from the message where JSON escaping
//! allows and does not allocate on the common path.

use std::borrow::Cow;
use std::fmt;

/// Label value for an absent or empty campaign or channel.
pub const NONE_LABEL: &str = "(none)";
/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Largest accepted amount, in units of the reporting currency (after conversion).
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

/// A rejected event: the reason, the offending field where there is one (for the
/// dead-letter headers), and the field or problem for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub field: Option<&'static str>,
    pub detail: &'static str,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// A rejection for `field`.
fn reject(reason: Reason, field: &'static str) -> Rejection {
    Rejection {
        reason,
        field: Some(field),
        detail: field,
    }
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
        // The fast path handles the flat events producers send; anything else (escapes,
        // nested values, odd numbers, errors) goes through serde_json, which has the last word.
        let mut raw = RawEvent::default();
        if fast::parse(payload, &mut raw) {
            self.validate(raw, fallback_ts_ms)
        } else {
            self.decode_general(payload, fallback_ts_ms)
        }
    }

    /// Decoding through serde_json alone: the reference the fast path must agree with.
    fn decode_general<'a>(
        &self,
        payload: &'a [u8],
        fallback_ts_ms: i64,
    ) -> Result<Event<'a>, Rejection> {
        let raw: RawEvent<'a> = serde_json::from_slice(payload).map_err(|_| Rejection {
            reason: Reason::MalformedJson,
            field: None,
            detail: "not a JSON object",
        })?;
        self.validate(raw, fallback_ts_ms)
    }

    // Inlined, so the 400-byte RawEvent is read where `decode` built it instead of being
    // copied into this call: copies of it were a visible share of decoding (figures in
    // docs/performance.md).
    #[inline(always)]
    fn validate<'a>(&self, raw: RawEvent<'a>, fallback_ts_ms: i64) -> Result<Event<'a>, Rejection> {
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
        // The cap holds after conversion too: a float-to-integer `as` would saturate silently.
        let converted = (micros as f64 * rate).round();
        if converted > MAX_AMOUNT * MICROS_PER_UNIT {
            return Err(reject(Reason::InvalidValue, "amount"));
        }
        Ok(converted as u64)
    }
}

/// Hash of (type, event_id). For short inputs xxh3's seed only shifts the hash linearly, so
/// seeds that differ in a few low bits (0, 1, 2) made `("ad_spend", "e12")` and
/// `("visit", "e14")` collide; seeds that differ in all 64 bits do not.
fn id_hash(kind: EventType, event_id: &str) -> u64 {
    const SEEDS: [u64; 3] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
    ];
    xxhash_rust::xxh3::xxh3_64_with_seed(event_id.as_bytes(), SEEDS[kind.index()])
}

/// `campaign` / `channel`: absent, null or empty is `None` (the `(none)` label).
#[inline(always)]
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
    fast::rfc3339_ms(s).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

mod fast;
mod raw;

use raw::{RawEvent, Scalar};

#[cfg(test)]
mod tests;

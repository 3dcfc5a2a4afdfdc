//! Decoding and validation of one Kafka message value into an [`Event`] (the schema:
//! docs/contract.md, "Events").
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

/// A parser for the common case: a flat JSON object of strings without escapes, plain
/// numbers, booleans and nulls; and the common `YYYY-MM-DDTHH:MM:SS(.fff)(Z|±HH:MM)`
/// timestamp. It returns `None` for anything else, and the general path takes over.
mod fast {
    use std::borrow::Cow;

    use super::{Field, RawEvent, Scalar};

    /// Fills `raw` (default on entry) from `bytes`; false when the general parser must
    /// decide. Filled in place rather than returned: `RawEvent` is 400 bytes.
    pub(super) fn parse<'a>(bytes: &'a [u8], raw: &mut RawEvent<'a>) -> bool {
        parse_into(bytes, raw).is_some()
    }

    fn parse_into<'a>(bytes: &'a [u8], raw: &mut RawEvent<'a>) -> Option<()> {
        // One UTF-8 check for the whole value; slices cut at ASCII delimiters stay valid.
        let text = simdutf8::basic::from_utf8(bytes).ok()?;
        let b = text.as_bytes();
        let mut i = ws(b, 0);
        if b.get(i) != Some(&b'{') {
            return None;
        }
        i = ws(b, i + 1);
        if b.get(i) == Some(&b'}') {
            return (ws(b, i + 1) == b.len()).then_some(());
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (field, next) = key(text, i)?;
            i = ws(b, next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let (value, next) = value(text, ws(b, i + 1))?;
            if let Some(field) = field {
                raw.set(field, value);
            }
            i = ws(b, next);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
        (ws(b, i + 1) == b.len()).then_some(())
    }

    fn ws(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// The object key whose opening quote is at `i`: which field it names (`None` for an
    /// unknown one) and where it ends. Producers send the same dozen names over and over, so
    /// each is recognised by comparing it whole, a few word loads, instead of scanning for its
    /// closing quote and then matching the name (perf: that was the largest part of decoding).
    #[inline(always)]
    fn key(text: &str, i: usize) -> Option<(Option<Field>, usize)> {
        let rest = &text.as_bytes()[i + 1..];
        macro_rules! known {
            ($($name:literal => $field:ident),+) => {{
                $(
                    if rest.starts_with(concat!($name, "\"").as_bytes()) {
                        return Some((Some(Field::$field), i + 2 + $name.len()));
                    }
                )+
            }};
        }
        match rest.first() {
            Some(b't') => known!("type" => Kind, "timestamp" => Timestamp),
            Some(b'e') => known!("event_id" => EventId),
            Some(b'c') => known!(
                "campaign" => Campaign,
                "channel" => Channel,
                "currency" => Currency,
                "customer_id" => CustomerId
            ),
            Some(b'a') => known!("amount" => Amount),
            Some(b'n') => known!("new_customer" => NewCustomer),
            Some(b'v') => known!("visitor_id" => VisitorId),
            Some(b'o') => known!("order_id" => OrderId),
            Some(b'd') => known!("device" => Device),
            _ => {}
        }
        // Any other key (known names reach here only if escaped, and then `string` declines).
        let (name, next) = string(text, i)?;
        Some((Field::from_name(name), next))
    }

    /// A string starting at the quote at `i`, if it has no escapes or control characters.
    #[inline(always)]
    fn string(text: &str, i: usize) -> Option<(&str, usize)> {
        let b = text.as_bytes();
        let start = i + 1;
        let mut j = start;
        // Eight bytes at a time while they last, then byte by byte.
        while let Some(word) = b.get(j..j + 8) {
            let special = special_bytes(u64::from_le_bytes(word.try_into().ok()?));
            if special != 0 {
                j += (special.trailing_zeros() / 8) as usize;
                return (b[j] == b'"').then(|| (&text[start..j], j + 1));
            }
            j += 8;
        }
        loop {
            match *b.get(j)? {
                b'"' => return Some((&text[start..j], j + 1)),
                b'\\' | 0..=0x1f => return None,
                _ => j += 1,
            }
        }
    }

    /// The high bit of each byte of `word` that ends a plain string (a quote, a backslash or
    /// a control character), plus possibly some above the lowest: borrows only run upwards,
    /// so the lowest set bit marks the first such byte exactly.
    #[inline(always)]
    fn special_bytes(word: u64) -> u64 {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero = |x: u64| x.wrapping_sub(ONES) & !x;
        let quote = zero(word ^ (ONES * u64::from(b'"')));
        let backslash = zero(word ^ (ONES * u64::from(b'\\')));
        let control = word.wrapping_sub(ONES * 0x20) & !word;
        (quote | backslash | control) & HIGH
    }

    #[inline(always)]
    fn value(text: &str, i: usize) -> Option<(Scalar<'_>, usize)> {
        let b = text.as_bytes();
        match *b.get(i)? {
            b'"' => string(text, i).map(|(s, next)| (Scalar::Str(Cow::Borrowed(s)), next)),
            b'0'..=b'9' => number(text, i),
            b't' if b[i..].starts_with(b"true") => Some((Scalar::Bool(true), i + 4)),
            b'f' if b[i..].starts_with(b"false") => Some((Scalar::Bool(false), i + 5)),
            b'n' if b[i..].starts_with(b"null") => Some((Scalar::Null, i + 4)),
            // Negative numbers, objects, arrays: rare, and the general path's business.
            _ => None,
        }
    }

    /// A non-negative JSON number, with the grammar's rules (no leading zeros).
    fn number(text: &str, i: usize) -> Option<(Scalar<'_>, usize)> {
        let b = text.as_bytes();
        let digits = |mut j: usize| {
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            j
        };
        // The integer part is read as it is scanned: most numbers are integers (millisecond
        // timestamps), and a second pass through `str::parse` was a tenth of decoding.
        // `None` past u64: serde_json reads such a number as a float; let it.
        let mut int_value = Some(0u64);
        let mut int_end = i;
        while let Some(d) = b.get(int_end).filter(|d| d.is_ascii_digit()) {
            int_value = int_value
                .and_then(|v| v.checked_mul(10))
                .and_then(|v| v.checked_add(u64::from(d - b'0')));
            int_end += 1;
        }
        if b[i] == b'0' && int_end > i + 1 {
            return None;
        }
        let mut end = int_end;
        let mut integral = true;
        if b.get(end) == Some(&b'.') {
            let frac_end = digits(end + 1);
            if frac_end == end + 1 {
                return None;
            }
            end = frac_end;
            integral = false;
        }
        if matches!(b.get(end), Some(b'e' | b'E')) {
            let mut j = end + 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            let exp_end = digits(j);
            if exp_end == j {
                return None;
            }
            end = exp_end;
            integral = false;
        }
        let scalar = if integral {
            Scalar::U64(int_value?)
        } else {
            // Past f64's range std gives infinity where serde_json rejects the number.
            Scalar::F64(text[i..end].parse().ok().filter(|f: &f64| f.is_finite())?)
        };
        Some((scalar, end))
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` to epoch milliseconds.
    pub(super) fn rfc3339_ms(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |from: usize, len: usize| -> Option<i64> {
            b.get(from..from + len)?.iter().try_fold(0i64, |acc, c| {
                c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
            })
        };
        let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        // Leap seconds and anything unusual: the general parser.
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let mut i = 19;
        let mut millis = 0;
        if b[i] == b'.' {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return None;
            }
            // Truncated to milliseconds, like chrono's timestamp_millis.
            let ms_digits = n.min(3);
            millis = num(start, ms_digits)? * 10i64.pow(3 - ms_digits as u32);
        }
        let offset_minutes = match b.get(i..)? {
            [b'Z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let h = num(i + 1, 2)?;
                let m = num(i + 4, 2)?;
                let _ = (h1, h2, m1, m2);
                if h > 23 || m > 59 {
                    return None;
                }
                let total = h * 60 + m;
                if *sign == b'-' { -total } else { total }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
        Some(seconds * 1000 + millis)
    }

    fn days_in_month(year: i64, month: i64) -> i64 {
        match month {
            2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
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

/// The event fields (docs/contract.md, "Events"), each as whatever JSON value it held.
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

/// A key of the event object: one of the known fields, or `None` for any other.
struct FieldName(Option<Field>);

/// The event fields (docs/contract.md, "Events"), in the order of `Field::NAMES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Kind,
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
}

impl Field {
    const ALL: [Field; 12] = [
        Field::Kind,
        Field::EventId,
        Field::Timestamp,
        Field::Campaign,
        Field::Channel,
        Field::Amount,
        Field::Currency,
        Field::NewCustomer,
        Field::VisitorId,
        Field::CustomerId,
        Field::OrderId,
        Field::Device,
    ];
    const NAMES: [&'static str; 12] = [
        "type",
        "event_id",
        "timestamp",
        "campaign",
        "channel",
        "amount",
        "currency",
        "new_customer",
        "visitor_id",
        "customer_id",
        "order_id",
        "device",
    ];

    fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    fn from_name(name: &str) -> Option<Field> {
        let i = Self::NAMES.iter().position(|known| *known == name)?;
        Some(Self::ALL[i])
    }
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldName, E> {
                Ok(FieldName(Field::from_name(v)))
            }
        }
        de.deserialize_identifier(FieldVisitor)
    }
}

impl<'a> RawEvent<'a> {
    /// Stores a field's value; a repeated field is remembered.
    #[inline(always)]
    fn set(&mut self, field: Field, value: Scalar<'a>) {
        let slot = match field {
            Field::Kind => &mut self.kind,
            Field::EventId => &mut self.event_id,
            Field::Timestamp => &mut self.timestamp,
            Field::Campaign => &mut self.campaign,
            Field::Channel => &mut self.channel,
            Field::Amount => &mut self.amount,
            Field::Currency => &mut self.currency,
            Field::NewCustomer => &mut self.new_customer,
            Field::VisitorId => &mut self.visitor_id,
            Field::CustomerId => &mut self.customer_id,
            Field::OrderId => &mut self.order_id,
            Field::Device => &mut self.device,
        };
        if slot.replace(value).is_some() {
            self.duplicate.get_or_insert(field.name());
        }
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
                while let Some(FieldName(field)) = map.next_key::<FieldName>()? {
                    match field {
                        Some(field) => raw.set(field, map.next_value::<Scalar<'de>>()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
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

    /// The cap is on the reporting currency: an amount within it in its own currency but
    /// above it once converted is refused, not clamped to the largest integer.
    #[test]
    fn the_amount_cap_holds_after_conversion() {
        let at_cap = ok(r#"{"type":"order","event_id":"a","amount":1e12,"currency":"JPY"}"#);
        assert_eq!(at_cap.amount_micros, 6_700_000_000_000_000);
        let rejected =
            rejected(r#"{"type":"order","event_id":"a","amount":1e12,"currency":"EUR"}"#);
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
                (1_600_000_000_000i64..1_900_000_000_000)
                    .prop_map(|ms| format!(r#""timestamp":{ms}"#)),
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
}

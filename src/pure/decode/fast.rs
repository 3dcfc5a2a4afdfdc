//! A parser for the common case: a flat JSON object of strings without escapes, plain
//! numbers, booleans and nulls; and the common `YYYY-MM-DDTHH:MM:SS(.fff)(Z|±HH:MM)`
//! timestamp. It returns `None` for anything else, and the general path takes over.

use std::borrow::Cow;

use super::raw::{Field, RawEvent, Scalar};

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

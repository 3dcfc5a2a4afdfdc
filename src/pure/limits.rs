//! Cardinality limits: how many keys a partition keeps and how long a name may be, and
//! where what exceeds them goes.

use std::borrow::Cow;

/// Cardinality limits, applied when a new key appears (config section `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys per partition before new ones fold into campaign "(other)".
    pub max_keys: usize,
    /// Longest campaign or channel name kept, in bytes.
    pub max_label_bytes: usize,
}

impl Default for Limits {
    /// The defaults of `config/default.toml`.
    fn default() -> Self {
        Limits {
            max_keys: 10_000,
            max_label_bytes: 128,
        }
    }
}

/// The campaign (and, past `OTHER_CHANNELS`, the channel) of events over `limits.max_keys`.
pub const OTHER: &str = "(other)";
/// How many "(other)" keys beyond `max_keys` keep their channel apart: channels are few by
/// nature, and a flood of made-up channels must stay bounded too.
pub(crate) const OTHER_CHANNELS: usize = 16;

/// A name as it is kept and exported: control characters removed and cut to `max` bytes (at
/// a character boundary). Borrowed when already clean, the common case.
pub fn clean_label(value: &str, max: usize) -> Cow<'_, str> {
    let printable_ascii = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    if value.len() <= max && (printable_ascii || !value.chars().any(char::is_control)) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        // Nothing but control characters: as if the name were empty.
        return Cow::Borrowed(crate::pure::decode::NONE_LABEL);
    }
    Cow::Owned(out)
}

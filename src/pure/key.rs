//! A (campaign, channel) pair, the identity of every exported series.

use std::hash::{Hash, Hasher};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A (campaign, channel) pair: the identity of every exported series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    // Inline up to 24 bytes each: comparing a key while probing the hash table then reads
    // the entry itself, not two more heap allocations.
    pub campaign: CompactString,
    pub channel: CompactString,
}

impl Key {
    pub fn new(campaign: &str, channel: &str) -> Key {
        Key {
            campaign: CompactString::new(campaign),
            channel: CompactString::new(channel),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef(&self.campaign, &self.channel).hash(state)
    }
}

/// A borrowed key, so an event's labels can be looked up without allocating.
#[derive(PartialEq, Eq)]
pub(crate) struct KeyRef<'a>(pub(crate) &'a str, pub(crate) &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.campaign == *self.0 && *key.channel == *self.1
    }
}

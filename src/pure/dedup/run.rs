//! A sorted set of de-duplication entries in about five bytes each.
//!
//! An entry is a 56-bit key (bits of an id hash) and a 3-bit generation tag, as one 59-bit
//! number: `key << 3 | tag`. Entries are sorted and split into `2^k` buckets by their top `k`
//! bits, which the bucket index (`starts`) stands for, so each entry stores only its other
//! `59 - k` bits. `k` grows with the entry count, about 16 entries a bucket: at 4.5 M entries
//! (`k = 18`) an entry takes 41 bits and the index a quarter of a byte more, 5.4 bytes in
//! all, against 9 and more in a hash table of 64-bit words.
//!
//! Of those bits, the top 8 (a "hint") are kept apart, one byte an entry, and the rest
//! bit-packed. Most lookups are of new ids, which a run does not hold: the bucket's hints,
//! 16 or so bytes side by side, show that without reading the packed bits (unless a hint
//! matches, about 1 time in 16), so a miss touches the index and one line of hints, a fifth
//! of the run's bytes, rather than the packed bits, where most of a lookup's time went waiting
//! for the line when every field was packed whole (`perf`; docs/performance.md). Keys are
//! uniformly distributed hashes, so a lookup starts at the place in its bucket that the hint
//! predicts.
//!
//! A run changes only by [`Run::rewrite`], which drops entries by tag and merges in sorted
//! new ones in its own memory.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bits of an id hash compared: with 5.6 M ids held, a new id matches one of them by chance
/// with probability 5.6·10⁶ / 2⁵⁶ = 7.8·10⁻¹¹.
pub(super) const KEY_BITS: u32 = 56;
/// Bits of an entry naming its generation, modulo 8.
pub(super) const TAG_BITS: u32 = 3;
pub(super) const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const ENTRY_BITS: u32 = KEY_BITS + TAG_BITS;
/// Bits of an entry's field kept apart, as a byte.
const HINT_BITS: u32 = 8;
/// Fewest bucket bits: the packed part of a field (at most 48 bits) and its offset within a
/// byte fit one 64-bit read.
const MIN_BUCKET_BITS: u32 = 3;
/// Most bucket bits (an index of 256 MiB would serve 1 G entries, far past any cap).
const MAX_BUCKET_BITS: u32 = 26;
/// Entries per bucket aimed at: the index then costs 2–4 bits an entry, and a bucket's hints
/// a cache line or two.
const PER_BUCKET: usize = 16;
/// Bytes after the packed bits, so that the last field too reads as a whole word.
const PAD: usize = 8;
/// Buckets per entry of the coarse index (as a shift).
const COARSE_SHIFT: u32 = 6;

fn mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

/// Bits of an entry below its bucket bits (its field), with `k` bucket bits.
fn width(k: u32) -> u32 {
    ENTRY_BITS - k
}

/// Bits of a field that are packed (below its hint).
fn low_width(k: u32) -> u32 {
    width(k) - HINT_BITS
}

/// Bytes `len` packed parts of `width` bits take.
fn data_bytes(len: usize, width: u32) -> usize {
    (len * width as usize).div_ceil(8)
}

/// Bucket bits for `len` entries: about `PER_BUCKET` entries a bucket.
fn bucket_bits_for(len: usize) -> u32 {
    let buckets = (len / PER_BUCKET).max(1);
    (usize::BITS - 1 - buckets.leading_zeros()).clamp(MIN_BUCKET_BITS, MAX_BUCKET_BITS)
}

/// The `width` bits at bit `bit` of `bits`.
#[inline(always)]
fn field(bits: &[u8], bit: usize, width: u32) -> u64 {
    let at = bit / 8;
    let word = u64::from_le_bytes(bits[at..at + 8].try_into().expect("eight bytes"));
    (word >> (bit % 8)) & mask(width)
}

/// Grows `v` to `len`, with a 32nd to spare when it must reallocate (so that a run whose
/// size wobbles is not reallocated at every rewrite).
fn grow(v: &mut Vec<u8>, len: usize) {
    if len > v.capacity() {
        v.reserve_exact(len + len / 32 - v.len());
    }
    if len > v.len() {
        v.resize(len, 0);
    }
}

/// Gives back what `v` holds beyond its length and a 32nd.
fn trim(v: &mut Vec<u8>) {
    let len = v.len();
    if v.capacity() > len + len / 16 {
        v.shrink_to(len + len / 32);
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Run {
    /// Bits of an entry that choose its bucket (0 while empty).
    bucket_bits: u32,
    /// Index of each bucket's first entry, and the entry count last: `2^k + 1` of them.
    starts: Vec<u32>,
    /// Every 64th start, and the entry count last: small enough to stay in cache, and close
    /// enough to predict where a key's hint lies before `starts` is read.
    coarse: Vec<u32>,
    /// The top `HINT_BITS` of each entry's field.
    hints: Vec<u8>,
    /// The rest of each field, `low_width(k)` bits each from bit 0 up, then `PAD` bytes.
    bits: Vec<u8>,
    len: usize,
    /// Entries by tag.
    tags: [u32; 8],
}

impl Run {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Entries with each tag.
    pub(super) fn tags(&self) -> &[u32; 8] {
        &self.tags
    }

    /// Entries whose tag `keep` accepts.
    pub(super) fn count(&self, keep: impl Fn(u64) -> bool) -> usize {
        (0..8)
            .filter(|&t| keep(t))
            .map(|t| self.tags[t as usize] as usize)
            .sum()
    }

    /// Bytes allocated.
    pub(super) fn heap_bytes(&self) -> usize {
        self.bits.capacity()
            + self.hints.capacity()
            + (self.starts.capacity() + self.coarse.capacity()) * 4
    }

    /// Where `key` would be: its bucket's range of entries, where in it to start looking, and
    /// the hint found there. Apart from [`Run::holds`], which branches on what it reads, so
    /// that a caller can have the loads of several runs in flight together.
    pub(super) fn locate(&self, key: u64) -> Located {
        if self.len == 0 {
            return Located::default();
        }
        let rest_bits = KEY_BITS - self.bucket_bits;
        let bucket = (key >> rest_bits) as usize;
        let rest = key & mask(rest_bits);
        let hint = (rest >> (rest_bits - HINT_BITS)) as u8;
        // Reading the hints needs the bucket's start, itself a read that misses the cache in a
        // large run: first read the hint where the coarse index predicts it, a load of its own
        // (keys are uniform: the same line 84 % of the time, the next one otherwise), so that
        // the exact read that follows finds its line on the way (what that saves is in
        // docs/performance.md).
        let shift = COARSE_SHIFT.min(self.bucket_bits);
        let (c0, c1) = (
            self.coarse[bucket >> shift] as usize,
            self.coarse[(bucket >> shift) + 1] as usize,
        );
        let within = ((bucket & ((1 << shift) - 1)) << HINT_BITS) | usize::from(hint);
        let predicted = c0 + ((within * (c1 - c0)) >> (shift + HINT_BITS));
        std::hint::black_box(self.hints[predicted.min(self.len - 1)]);
        let (lo, hi) = (
            self.starts[bucket] as usize,
            self.starts[bucket + 1] as usize,
        );
        // Hints ascend within a bucket and are uniform: start where this one would be if
        // evenly spaced.
        let guess = lo + ((usize::from(hint) * (hi - lo)) >> HINT_BITS);
        Located {
            lo,
            hi,
            rest,
            guess,
            // The run's last hint stands in for an empty bucket's: `holds` never uses it.
            found: self.hints[guess.min(self.len - 1)],
        }
    }

    /// Whether the key `locate` was given is in the run.
    pub(super) fn holds(&self, at: Located) -> bool {
        let Located {
            lo,
            hi,
            rest,
            guess,
            found,
        } = at;
        if lo == hi {
            return false;
        }
        let low_bits = KEY_BITS - self.bucket_bits - HINT_BITS;
        let hint = (rest >> low_bits) as u8;
        let low = rest & mask(low_bits);
        let hints = &self.hints[lo..hi];
        // The first entry whose hint is not below this one.
        let mut i = guess - lo;
        if found < hint {
            while i < hints.len() && hints[i] < hint {
                i += 1;
            }
        } else {
            while i > 0 && hints[i - 1] >= hint {
                i -= 1;
            }
        }
        let lw = low_width(self.bucket_bits);
        while i < hints.len() && hints[i] == hint {
            if field(&self.bits, (lo + i) * lw as usize, lw) >> TAG_BITS == low {
                return true;
            }
            i += 1;
        }
        false
    }

    #[cfg(test)]
    pub(super) fn contains(&self, key: u64) -> bool {
        self.holds(self.locate(key))
    }

    /// Entry `i`, whose bucket is `bucket`, in a layout of `k` bucket bits.
    #[inline(always)]
    fn entry(&self, i: usize, bucket: usize, k: u32) -> u64 {
        let (w, lw) = (width(k), low_width(k));
        ((bucket as u64) << w)
            | (u64::from(self.hints[i]) << lw)
            | field(&self.bits, i * lw as usize, lw)
    }

    /// The entries, ascending.
    pub(super) fn iter(&self) -> Iter<'_> {
        Iter {
            run: self,
            i: 0,
            bucket: 0,
            end: self.starts.get(1).map_or(0, |&s| s as usize),
        }
    }

    /// The entries, descending.
    pub(super) fn iter_rev(&self) -> IterRev<'_> {
        IterRev {
            run: self,
            i: self.len,
            bucket: self.starts.len().saturating_sub(2),
        }
    }

    /// Keeps the entries whose tag `keep` accepts and merges in `add` (**descending**, none
    /// already here, `add_tags` of each tag), in the run's own memory: a forward pass drops
    /// entries (and narrows the fields if the run grows into more bucket bits), then a
    /// backward pass merges from the top of the grown run down (and widens the fields if it
    /// shrank into fewer). Each pass writes only where it has already read, so nothing is
    /// allocated but the growth itself, and a run that drops about what it adds (a steady
    /// stream's sealed generations) allocates nothing at all.
    pub(super) fn rewrite(
        &mut self,
        keep: impl Fn(u64) -> bool,
        add: impl Iterator<Item = u64>,
        add_tags: [u32; 8],
    ) {
        let add_len = add_tags.iter().map(|&n| n as usize).sum::<usize>();
        let kept = self.count(&keep);
        let len = kept + add_len;
        if len == 0 {
            *self = Run::default();
            return;
        }
        let k = bucket_bits_for(len);
        if self.len == 0 {
            // A layout to merge into: no entries, `k` bucket bits.
            self.bucket_bits = k;
            self.starts.clear();
            self.starts.resize((1 << k) + 1, 0);
            self.hints.clear();
            self.bits.clear();
            self.bits.resize(PAD, 0);
        } else if kept < self.len || k > self.bucket_bits {
            let k_mid = k.max(self.bucket_bits);
            if k_mid == self.bucket_bits {
                let mut starts = InPlace(std::mem::take(&mut self.starts));
                self.forward(&mut starts, &keep, k_mid);
                self.starts = starts.0;
            } else {
                let mut starts = Apart::new(std::mem::take(&mut self.starts), k_mid);
                self.forward(&mut starts, &keep, k_mid);
                self.starts = starts.new;
            }
        }
        if add_len > 0 || k != self.bucket_bits {
            if k == self.bucket_bits && self.len > 0 {
                let mut starts = InPlace(std::mem::take(&mut self.starts));
                self.backward(&mut starts, add, add_len, k);
                self.starts = starts.0;
            } else {
                let mut starts = Apart::new(std::mem::take(&mut self.starts), k);
                self.backward(&mut starts, add, add_len, k);
                self.starts = starts.new;
            }
            // Counted from what the caller knows, not per entry in the pass.
            for (t, n) in add_tags.iter().enumerate() {
                self.tags[t] += n;
            }
        }
        debug_assert_eq!(self.len, len, "add_tags did not count add");
        trim(&mut self.bits);
        trim(&mut self.hints);
        self.index_coarsely();
    }

    /// Sets `coarse` from `starts`.
    fn index_coarsely(&mut self) {
        let shift = COARSE_SHIFT.min(self.bucket_bits);
        self.coarse.clear();
        self.coarse
            .extend(self.starts.iter().step_by(1 << shift).copied());
    }

    /// Drops the entries `keep` refuses and re-encodes the rest with `k` bucket bits (no fewer
    /// than now: fields no wider), writing from the start behind the reader.
    fn forward<S: Starts>(&mut self, starts: &mut S, keep: impl Fn(u64) -> bool, k: u32) {
        let (old_k, old_len) = (self.bucket_bits, self.len);
        let old_lw = low_width(old_k);
        debug_assert!(k >= old_k);
        if k == old_k {
            return self.drop_in_place(starts, keep);
        }
        let mut out = Forward {
            k,
            lw: low_width(k),
            written: 0,
            acc: 0,
            acc_bits: 0,
            at: 0,
            next_bucket: 0,
        };
        let mut bucket = 0usize;
        let mut end = starts.old(1);
        for i in 0..old_len {
            // The reader moves to the next bucket only after the writer has set the starts up
            // to this entry's: it never reads a start the writer has set.
            while i == end {
                bucket += 1;
                end = starts.old(bucket + 1);
            }
            let low = field(&self.bits, i * old_lw as usize, old_lw);
            if keep(low & TAG_MASK) {
                let entry =
                    ((bucket as u64) << width(old_k)) | (u64::from(self.hints[i]) << old_lw) | low;
                out.push(&mut self.hints, &mut self.bits, starts, entry);
            }
        }
        out.finish(&mut self.bits, starts);
        self.bucket_bits = k;
        self.len = out.written;
        for (t, n) in self.tags.iter_mut().enumerate() {
            if !keep(t as u64) {
                *n = 0;
            }
        }
        self.hints.truncate(self.len);
        self.bits.truncate(data_bytes(self.len, out.lw) + PAD);
        let tail = self.bits.len() - PAD;
        self.bits[tail..].fill(0);
    }

    /// [`Run::forward`] when the layout stays (as it does when a steady stream's generation
    /// closes): bucket by bucket, each entry kept or not without a branch, since which of four
    /// or five generations an entry belongs to is not predictable.
    fn drop_in_place<S: Starts>(&mut self, starts: &mut S, keep: impl Fn(u64) -> bool) {
        let k = self.bucket_bits;
        let lw = low_width(k);
        let keep_mask = (0..8u64).filter(|&t| keep(t)).fold(0u64, |m, t| m | 1 << t);
        let (mut acc, mut acc_bits, mut at, mut j) = (0u64, 0u32, 0usize, 0usize);
        // Slices of their own, so that the stores into one are not taken to change the other's
        // length (which kept both reloaded at every entry).
        let (hints, bits) = (&mut self.hints[..], &mut self.bits[..]);
        let mut hi = 0;
        for bucket in 0..1usize << k {
            let lo = hi;
            // Read before the start of this bucket is set, and the next one's is not yet.
            hi = starts.old(bucket + 1);
            starts.set(bucket, j);
            for i in lo..hi {
                let low = field(bits, i * lw as usize, lw);
                let kept = (keep_mask >> (low & TAG_MASK)) & 1;
                hints[j] = hints[i];
                acc |= (low & kept.wrapping_neg()) << acc_bits;
                let total = acc_bits + (lw & (kept as u32).wrapping_neg());
                if total >= 64 {
                    bits[at..at + 8].copy_from_slice(&acc.to_le_bytes());
                    at += 8;
                    acc_bits = total - 64;
                    acc = (low >> (lw - acc_bits)) & mask(acc_bits);
                } else {
                    acc_bits = total;
                }
                j += kept as usize;
            }
        }
        starts.set(1 << k, j);
        self.bits[at..at + 8].copy_from_slice(&acc.to_le_bytes());
        self.len = j;
        for (t, n) in self.tags.iter_mut().enumerate() {
            if !keep(t as u64) {
                *n = 0;
            }
        }
        self.hints.truncate(j);
        self.bits.truncate(data_bytes(j, lw) + PAD);
        let tail = self.bits.len() - PAD;
        self.bits[tail..].fill(0);
    }

    /// Merges `add` (descending) in, re-encoding with `k` bucket bits (no more than now: fields
    /// no narrower), writing from the top of the grown run down, above the reader.
    fn backward<S: Starts>(
        &mut self,
        starts: &mut S,
        add: impl Iterator<Item = u64>,
        add_len: usize,
        k: u32,
    ) {
        let (old_k, old_len) = (self.bucket_bits, self.len);
        debug_assert!(k <= old_k || old_len == 0);
        let len = old_len + add_len;
        let lw = low_width(k);
        grow(&mut self.hints, len);
        grow(&mut self.bits, data_bytes(len, lw) + PAD);
        let mut out = Backward {
            k,
            lw,
            next: len,
            word: (len * lw as usize).saturating_sub(1) / 64,
            acc: 0,
            fill: 1 << k,
        };
        starts.set(1 << k, len);
        // The reader: entries below `i` are unread; `bucket` is entry `i - 1`'s. It moves down
        // right after each old entry is written, before anything below it is: the writer sets
        // only the starts of buckets above the entry it writes.
        let mut i = old_len;
        let mut bucket = (1usize << old_k).saturating_sub(1);
        let (w_old, lw_old) = (width(old_k), low_width(old_k));
        // Slices of their own: see `drop_in_place`.
        let (hints, bits) = (&mut self.hints[..], &mut self.bits[..]);
        let next_old = |hints: &[u8], bits: &[u8], starts: &S, i: usize, bucket: &mut usize| {
            if i == 0 {
                return None;
            }
            while starts.old(*bucket) > i - 1 {
                *bucket -= 1;
            }
            Some(
                ((*bucket as u64) << w_old)
                    | (u64::from(hints[i - 1]) << lw_old)
                    | field(bits, (i - 1) * lw_old as usize, lw_old),
            )
        };
        let mut old = next_old(hints, bits, starts, i, &mut bucket);
        let mut add = add.peekable();
        loop {
            let take_old = match (old, add.peek()) {
                (Some(o), Some(&a)) => o > a,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_old {
                out.push(hints, bits, starts, old.expect("an old entry"));
                i -= 1;
                old = next_old(hints, bits, starts, i, &mut bucket);
            } else {
                let entry = add.next().expect("an added entry");
                out.push(hints, bits, starts, entry);
            }
        }
        out.finish(bits, starts);
        debug_assert_eq!(out.next, 0, "add_tags did not count add");
        self.bucket_bits = k;
        self.len = len;
    }
}

/// A key's bucket range in a run, and the hint where its search starts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Located {
    lo: usize,
    hi: usize,
    rest: u64,
    guess: usize,
    found: u8,
}

/// Bucket starts as a pass reads the old ones and sets the new ones.
trait Starts {
    fn old(&self, bucket: usize) -> usize;
    fn set(&mut self, bucket: usize, start: usize);
}

/// The same bucket bits before and after: one index, set where the reader has passed.
struct InPlace(Vec<u32>);

impl Starts for InPlace {
    fn old(&self, bucket: usize) -> usize {
        self.0[bucket] as usize
    }
    fn set(&mut self, bucket: usize, start: usize) {
        self.0[bucket] = start as u32;
    }
}

struct Apart {
    old: Vec<u32>,
    new: Vec<u32>,
}

impl Apart {
    fn new(old: Vec<u32>, k: u32) -> Apart {
        Apart {
            old,
            new: vec![0; (1 << k) + 1],
        }
    }
}

impl Starts for Apart {
    fn old(&self, bucket: usize) -> usize {
        self.old[bucket] as usize
    }
    fn set(&mut self, bucket: usize, start: usize) {
        self.new[bucket] = start as u32;
    }
}

/// The writer of a forward pass. Packed bits are kept in `acc` and stored a whole word at a
/// time: a read-modify-write of each field stalled on the store before it (3x slower).
struct Forward {
    k: u32,
    lw: u32,
    written: usize,
    acc: u64,
    acc_bits: u32,
    /// Byte the next whole word goes to.
    at: usize,
    /// First bucket whose start is not yet set.
    next_bucket: usize,
}

impl Forward {
    // Inlined, so that its state stays in registers (called, each push spilled it).
    #[inline(always)]
    fn push<S: Starts>(&mut self, hints: &mut [u8], bits: &mut [u8], starts: &mut S, entry: u64) {
        let bucket = (entry >> width(self.k)) as usize;
        while self.next_bucket <= bucket {
            starts.set(self.next_bucket, self.written);
            self.next_bucket += 1;
        }
        hints[self.written] = (entry >> self.lw) as u8;
        self.written += 1;
        let low = entry & mask(self.lw);
        self.acc |= low << self.acc_bits;
        self.acc_bits += self.lw;
        if self.acc_bits >= 64 {
            bits[self.at..self.at + 8].copy_from_slice(&self.acc.to_le_bytes());
            self.at += 8;
            self.acc_bits -= 64;
            // The bits of `low` that did not fit (none when it ended the word exactly).
            self.acc = (low >> (self.lw - self.acc_bits)) & mask(self.acc_bits);
        }
    }

    /// Stores the last partial word and sets the starts of the buckets after the last entry.
    fn finish<S: Starts>(&mut self, bits: &mut [u8], starts: &mut S) {
        bits[self.at..self.at + 8].copy_from_slice(&self.acc.to_le_bytes());
        while self.next_bucket <= 1 << self.k {
            starts.set(self.next_bucket, self.written);
            self.next_bucket += 1;
        }
    }
}

/// The writer of a backward pass: from the top down, each 64-bit word of packed bits stored
/// once all of its bits are known.
struct Backward {
    k: u32,
    lw: u32,
    /// Entries still to write: the next goes to `next - 1`.
    next: usize,
    /// The word being filled, and its bits so far.
    word: usize,
    acc: u64,
    /// Buckets below this one have no start set yet.
    fill: usize,
}

impl Backward {
    // Inlined, so that its state stays in registers (called, each push spilled it).
    #[inline(always)]
    fn push<S: Starts>(&mut self, hints: &mut [u8], bits: &mut [u8], starts: &mut S, entry: u64) {
        self.next -= 1;
        let p = self.next;
        let bucket = (entry >> width(self.k)) as usize;
        while self.fill > bucket + 1 {
            self.fill -= 1;
            starts.set(self.fill, p + 1);
        }
        hints[p] = (entry >> self.lw) as u8;
        let low = entry & mask(self.lw);
        let lo = p * self.lw as usize;
        if lo / 64 == self.word {
            self.acc |= low << (lo % 64);
        } else {
            // The field ends in this word (or just below it) and starts in the one below:
            // this word is complete. (It starts within a word, since the field after it ended
            // in this one and fields are narrower than words.)
            let shift = (lo % 64) as u32;
            self.acc |= low >> (64 - shift);
            let at = self.word * 8;
            bits[at..at + 8].copy_from_slice(&self.acc.to_le_bytes());
            self.word = lo / 64;
            self.acc = low << shift;
        }
    }

    fn finish<S: Starts>(&mut self, bits: &mut [u8], starts: &mut S) {
        let at = self.word * 8;
        bits[at..at + 8].copy_from_slice(&self.acc.to_le_bytes());
        while self.fill > 0 {
            self.fill -= 1;
            starts.set(self.fill, 0);
        }
    }
}

/// Entries of a run, ascending.
pub(super) struct Iter<'a> {
    run: &'a Run,
    i: usize,
    bucket: usize,
    end: usize,
}

impl Iterator for Iter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.i == self.run.len {
            return None;
        }
        while self.i == self.end {
            self.bucket += 1;
            self.end = self.run.starts[self.bucket + 1] as usize;
        }
        self.i += 1;
        Some(
            self.run
                .entry(self.i - 1, self.bucket, self.run.bucket_bits),
        )
    }
}

/// Entries of a run, descending.
pub(super) struct IterRev<'a> {
    run: &'a Run,
    /// Entries below this one are still to come.
    i: usize,
    bucket: usize,
}

impl Iterator for IterRev<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.i == 0 {
            return None;
        }
        self.i -= 1;
        while self.run.starts[self.bucket] as usize > self.i {
            self.bucket -= 1;
        }
        Some(self.run.entry(self.i, self.bucket, self.run.bucket_bits))
    }
}

/// Entries of each tag among `entries`.
pub(super) fn tags_of(entries: impl Iterator<Item = u64>) -> [u32; 8] {
    let mut tags = [0; 8];
    for e in entries {
        tags[(e & TAG_MASK) as usize] += 1;
    }
    tags
}

/// Two descending iterators as one.
pub(super) fn merged_descending(
    a: impl Iterator<Item = u64>,
    b: impl Iterator<Item = u64>,
) -> impl Iterator<Item = u64> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x > y => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// A checkpoint holds a run as its bucket bits, its length, each bucket's entry count (about
/// 16, one byte as a varint), then its hints and packed bits as they are in memory: 5.3 bytes
/// an entry at 4.5 M entries, and nothing to do to write them but copy.
impl Serialize for Run {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Sizes<'a>(&'a [u32]);
        impl Serialize for Sizes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.windows(2).map(|w| w[1] - w[0]))
            }
        }
        let data = data_bytes(self.len, low_width(self.bucket_bits)).min(self.bits.len());
        let mut t = s.serialize_tuple(5)?;
        t.serialize_element(&(self.bucket_bits as u8))?;
        t.serialize_element(&(self.len as u64))?;
        t.serialize_element(&Sizes(&self.starts))?;
        t.serialize_element(&Bytes(&self.hints[..self.len]))?;
        t.serialize_element(&Bytes(&self.bits[..data]))?;
        t.end()
    }
}

/// Reads a run back, checking everything a lookup or a rewrite relies on: the counts add up,
/// the hints and packed bits have their lengths, and the entries ascend.
impl<'de> Deserialize<'de> for Run {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Run, D::Error> {
        struct ByteVec(Vec<u8>);
        impl<'de> Deserialize<'de> for ByteVec {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteVec, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = ByteVec;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteVec, E> {
                        let mut bits = Vec::with_capacity(v.len() + PAD);
                        bits.extend_from_slice(v);
                        Ok(ByteVec(bits))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Run;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a run of de-duplication entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Run, A::Error> {
                let missing = || de::Error::custom("a run cut short");
                let k: u8 = seq.next_element()?.ok_or_else(missing)?;
                let len: u64 = seq.next_element()?.ok_or_else(missing)?;
                let sizes: Vec<u32> = seq.next_element()?.ok_or_else(missing)?;
                let ByteVec(hints) = seq.next_element()?.ok_or_else(missing)?;
                let ByteVec(bits) = seq.next_element()?.ok_or_else(missing)?;
                Run::from_parts(u32::from(k), len, &sizes, hints, bits).map_err(de::Error::custom)
            }
        }
        d.deserialize_tuple(5, V)
    }
}

impl Run {
    /// A run from its saved parts, checked.
    fn from_parts(
        k: u32,
        len: u64,
        sizes: &[u32],
        hints: Vec<u8>,
        mut bits: Vec<u8>,
    ) -> Result<Run, String> {
        if len == 0 && sizes.is_empty() && hints.is_empty() && bits.is_empty() {
            return Ok(Run::default());
        }
        if !(MIN_BUCKET_BITS..=MAX_BUCKET_BITS).contains(&k) || sizes.len() != 1 << k {
            return Err(format!(
                "a run of {} buckets with {k} bucket bits",
                sizes.len()
            ));
        }
        let len = u32::try_from(len).map_err(|_| format!("a run of {len} entries"))?;
        let mut starts = Vec::with_capacity(sizes.len() + 1);
        let mut at = 0u64;
        starts.push(0);
        for &size in sizes {
            at += u64::from(size);
            starts.push(u32::try_from(at).map_err(|_| "bucket sizes overflow".to_string())?);
        }
        if at != u64::from(len) {
            return Err(format!("bucket sizes add up to {at}, not {len}"));
        }
        let len = len as usize;
        if hints.len() != len || bits.len() != data_bytes(len, low_width(k)) {
            return Err(format!(
                "{} hints and {} bytes for {len} entries",
                hints.len(),
                bits.len()
            ));
        }
        bits.resize(bits.len() + PAD, 0);
        let mut run = Run {
            bucket_bits: k,
            starts,
            coarse: Vec::new(),
            hints,
            bits,
            len,
            tags: [0; 8],
        };
        let mut tags = [0u32; 8];
        let mut last = None;
        for entry in run.iter() {
            if last.is_some_and(|l| l >= entry) {
                return Err("entries out of order".into());
            }
            last = Some(entry);
            tags[(entry & TAG_MASK) as usize] += 1;
        }
        run.tags = tags;
        run.index_coarsely();
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn entry(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) >> (64 - ENTRY_BITS)
    }

    fn run_of(entries: &BTreeSet<u64>) -> Run {
        let mut run = Run::default();
        run.rewrite(
            |_| true,
            entries.iter().rev().copied(),
            tags_of(entries.iter().copied()),
        );
        run
    }

    fn check(run: &Run, model: &BTreeSet<u64>) {
        assert_eq!(run.len(), model.len());
        assert!(run.iter().eq(model.iter().copied()), "entries differ");
        for (t, n) in run.tags().iter().enumerate() {
            let want = model.iter().filter(|e| *e & TAG_MASK == t as u64).count();
            assert_eq!(*n as usize, want, "tag {t}");
        }
        for e in model {
            assert!(run.contains(e >> TAG_BITS), "{e:#x} not found");
        }
    }

    #[test]
    fn bucket_bits_follow_the_entry_count() {
        assert_eq!(bucket_bits_for(0), MIN_BUCKET_BITS);
        assert_eq!(bucket_bits_for(1000), MIN_BUCKET_BITS + 2);
        // 4.5 M entries: 2^18 buckets of 17, 41-bit fields (a hint byte and 33 bits).
        assert_eq!(bucket_bits_for(4_500_000), 18);
        assert_eq!((width(18), low_width(18)), (41, 33));
    }

    /// A run grows through every bucket-bit count from a few entries to 300,000, merging
    /// batches in (fields narrow, the index is rebuilt), then drops tags until it is small
    /// again (fields widen); at every step it holds exactly the model's entries.
    #[test]
    fn a_run_grows_and_shrinks_through_its_layouts() {
        let mut model = BTreeSet::new();
        let mut run = Run::default();
        let mut next = 0u64;
        for batch in [1usize, 7, 100, 1_000, 5_000, 30_000, 60_000, 200_000] {
            let add: BTreeSet<u64> = (next..next + batch as u64).map(entry).collect();
            next += batch as u64;
            run.rewrite(
                |_| true,
                add.iter().rev().copied(),
                tags_of(add.iter().copied()),
            );
            model.extend(add);
            check(&run, &model);
        }
        for gone in 0..8u64 {
            run.rewrite(|t| t > gone, std::iter::empty(), [0; 8]);
            model.retain(|e| e & TAG_MASK > gone);
            check(&run, &model);
        }
        assert_eq!(run.len(), 0);
        assert_eq!(run.heap_bytes(), 0);
        // Down again: merged into a run emptied by dropping, then rebuilt from nothing.
        let add: BTreeSet<u64> = (0..3_000).map(entry).collect();
        run.rewrite(
            |_| true,
            add.iter().rev().copied(),
            tags_of(add.iter().copied()),
        );
        check(&run, &add);
        // Keys never added are not found.
        for i in next..next + 10_000 {
            assert!(!run.contains(entry(i) >> TAG_BITS));
        }
    }

    #[test]
    fn keys_that_were_not_added_are_not_found() {
        let model: BTreeSet<u64> = (0..50_000).map(entry).collect();
        let run = run_of(&model);
        for i in 50_000..150_000 {
            let key = entry(i) >> TAG_BITS;
            assert_eq!(run.contains(key), model.contains(&entry(i)));
        }
        // Neighbours of held keys, which land in the same bucket.
        for e in model.iter().take(2_000) {
            let key = e >> TAG_BITS;
            for near in [key.wrapping_sub(1), key + 1] {
                let held = model.range(near << TAG_BITS..(near + 1) << TAG_BITS).next();
                assert_eq!(run.contains(near), held.is_some());
            }
        }
    }

    #[test]
    fn the_smallest_and_largest_keys_are_found() {
        let model: BTreeSet<u64> = [0, 1 << TAG_BITS, mask(ENTRY_BITS), mask(ENTRY_BITS) - 15]
            .into_iter()
            .collect();
        let run = run_of(&model);
        check(&run, &model);
        assert!(!run.contains(2));
        assert!(!run.contains(mask(KEY_BITS) - 2));
    }

    #[test]
    fn a_run_reads_back_from_a_checkpoint() {
        let model: BTreeSet<u64> = (0..40_000).map(entry).collect();
        let run = run_of(&model);
        let bytes = postcard::to_allocvec(&run).unwrap();
        // The fields (44 bits at 40,000 entries), one byte per bucket of 16–31, a few more.
        let fields = data_bytes(40_000, width(bucket_bits_for(40_000)));
        assert!(
            bytes.len() < fields + (1 << 11) + 16,
            "{} bytes",
            bytes.len()
        );
        let back: Run = postcard::from_bytes(&bytes).unwrap();
        check(&back, &model);
        let empty: Run =
            postcard::from_bytes(&postcard::to_allocvec(&Run::default()).unwrap()).unwrap();
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn damaged_runs_are_errors() {
        let model: BTreeSet<u64> = (0..1_000).map(entry).collect();
        let run = run_of(&model);
        let k = run.bucket_bits;
        let sizes: Vec<u32> = run.starts.windows(2).map(|w| w[1] - w[0]).collect();
        let data = run.bits[..run.bits.len() - PAD].to_vec();
        let hints = run.hints.clone();
        let parts = |k, len, sizes: &[u32], hints: &[u8], data: &[u8]| {
            Run::from_parts(k, len, sizes, hints.to_vec(), data.to_vec())
        };
        assert!(parts(k, 1_000, &sizes, &hints, &data).is_ok());
        assert!(parts(k, 999, &sizes, &hints, &data).is_err());
        assert!(parts(k + 1, 1_000, &sizes, &hints, &data).is_err());
        assert!(parts(40, 1_000, &sizes, &hints, &data).is_err());
        assert!(parts(k, 1_000, &sizes, &hints, &data[1..]).is_err());
        assert!(parts(k, 1_000, &sizes, &hints[1..], &data).is_err());
        // Two buckets' counts swapped: the entries no longer ascend.
        let mut swapped = sizes.clone();
        let (a, b) = (0..sizes.len())
            .flat_map(|a| (a + 1..sizes.len()).map(move |b| (a, b)))
            .find(|&(a, b)| sizes[a] != sizes[b])
            .unwrap();
        swapped.swap(a, b);
        assert!(parts(k, 1_000, &swapped, &hints, &data).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any sequence of rewrites (entries dropped by tag, sorted batches merged in) leaves
        /// exactly the entries of a sorted set that did the same.
        #[test]
        fn rewrites_match_a_sorted_set(
            steps in proptest::collection::vec((0u8..=255, 0usize..3_000, any::<u64>()), 1..12),
        ) {
            let mut model = BTreeSet::new();
            let mut run = Run::default();
            for (dropped, n, seed) in steps {
                let keep = |t: u64| dropped & (1 << t) == 0;
                let held: std::collections::HashSet<u64> =
                    model.iter().map(|e| e >> TAG_BITS).collect();
                let add: BTreeSet<u64> = (0..n as u64)
                    .map(|i| entry(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                    .filter(|e| !held.contains(&(e >> TAG_BITS)))
                    .collect();
                run.rewrite(keep, add.iter().rev().copied(), tags_of(add.iter().copied()));
                model.retain(|e| keep(e & TAG_MASK));
                model.extend(add);
                prop_assert_eq!(run.len(), model.len());
                prop_assert!(run.iter().eq(model.iter().copied()));
                for e in &model {
                    prop_assert!(run.contains(e >> TAG_BITS));
                }
            }
        }
    }
}

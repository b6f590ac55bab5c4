//! A shard's hash index: user hash to slab slot, open addressing with linear probing.
//!
//! Each bucket is one `u64`: the low 32 bits of the user's hash above the slot number, so a
//! lookup needs no other memory than its bucket's cache line (eight buckets) until it checks
//! the candidate slot's id, and growing needs no slab access at all. The bucket of a hash is a
//! pure function of the hash, so a batch can prefetch the buckets of the events it will apply
//! next ([`Index::prefetch`]) and then their slab entries ([`Index::candidate`]) while it
//! applies the current one; a table whose layout is private (such as `hashbrown`'s) cannot be
//! prefetched that way without probing it, which waits on the very misses to be overlapped.
//!
//! Removal shifts the following entries of the cluster back (no tombstones), so probe lengths
//! depend only on the load, which stays at most 4/5.

/// Asks the CPU to start loading the cache line of `value`, without waiting for it.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it never
    // faults and never changes memory, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// An empty bucket. No real bucket equals it: slot `u32::MAX` is never used.
const EMPTY: u64 = u64::MAX;

/// The smallest table allocated.
const MIN_BUCKETS: usize = 16;

#[inline]
fn bucket(hash: u64, slot: u32) -> u64 {
    (hash & 0xffff_ffff) << 32 | u64::from(slot)
}

#[inline]
fn slot_of(bucket: u64) -> u32 {
    bucket as u32
}

#[inline]
fn tag_of(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

/// Slot numbers by user hash. The caller checks the slot's real id: equal tags (32 bits of
/// hash) are only candidates.
pub(crate) struct Index {
    buckets: Vec<u64>,
    len: usize,
}

impl Index {
    pub(crate) fn new() -> Index {
        Index {
            buckets: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len().wrapping_sub(1)
    }

    /// Starts loading the bucket where a probe for `hash` begins.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        if let Some(b) = self.buckets.get(hash as usize & self.mask()) {
            prefetch(b);
        }
    }

    /// The first slot whose tag matches `hash`, without checking the id: the slot to prefetch
    /// for an event about to be applied.
    #[inline]
    pub(crate) fn candidate(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// The slot of `hash` for which `is_it` holds, if any.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is_it: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        if self.buckets.is_empty() {
            return None;
        }
        let tag = hash as u32;
        let mut at = hash as usize & mask;
        loop {
            let b = self.buckets[at];
            if b == EMPTY {
                return None;
            }
            if tag_of(b) == tag && is_it(slot_of(b)) {
                return Some(slot_of(b));
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds `slot` under `hash`; the caller knows that the user is not in the index yet.
    pub(crate) fn insert(&mut self, hash: u64, slot: u32) {
        if (self.len + 1) * 5 > self.buckets.len() * 4 {
            self.grow();
        }
        self.place(bucket(hash, slot));
        self.len += 1;
    }

    fn place(&mut self, b: u64) {
        let mask = self.mask();
        let mut at = tag_of(b) as usize & mask;
        while self.buckets[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.buckets[at] = b;
    }

    fn grow(&mut self) {
        let size = (self.buckets.len() * 2).max(MIN_BUCKETS);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        for b in old.into_iter().filter(|&b| b != EMPTY) {
            self.place(b);
        }
    }

    /// Removes `slot`, held under `hash`; does nothing if it is not there.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) {
        let Some(mut hole) = self.position(hash, slot) else {
            return;
        };
        let mask = self.mask();
        // Backward shift: move each later entry of the cluster into the hole when its home
        // bucket is not after the hole, so that every entry stays reachable from its home.
        let mut at = (hole + 1) & mask;
        loop {
            let b = self.buckets[at];
            if b == EMPTY {
                break;
            }
            let home = tag_of(b) as usize & mask;
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.buckets[hole] = b;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
    }

    fn position(&self, hash: u64, slot: u32) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.mask();
        let want = bucket(hash, slot);
        let mut at = hash as usize & mask;
        loop {
            match self.buckets[at] {
                b if b == want => return Some(at),
                EMPTY => return None,
                _ => at = (at + 1) & mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A deliberately poor hash for some keys, so that clusters and wrap-around are common.
    fn hash(key: u32) -> u64 {
        if key.is_multiple_of(3) {
            u64::from(key % 7)
        } else {
            presence_frame::UserId::Relay(key).mix64()
        }
    }

    #[test]
    fn matches_a_map_through_inserts_and_removals() {
        let mut index = Index::new();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u32 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let key = (s % 3_000) as u32;
            // A key's slot is its number: enough to tell entries apart.
            match model.get(&key) {
                Some(&slot) if s >> 60 < 7 => {
                    index.remove(hash(key), slot);
                    model.remove(&key);
                }
                Some(_) => {}
                None => {
                    index.insert(hash(key), key);
                    model.insert(key, key);
                }
            }
            assert_eq!(index.len(), model.len());
            if step % 1_000 == 0 {
                for key in 0..3_000 {
                    let found = index.find(hash(key), |slot| slot == key);
                    assert_eq!(found, model.get(&key).copied(), "key {key} at step {step}");
                }
            }
        }
        for key in 0..3_000 {
            let found = index.find(hash(key), |slot| slot == key);
            assert_eq!(found, model.get(&key).copied(), "key {key}");
        }
    }

    #[test]
    fn load_stays_at_most_four_fifths() {
        let mut index = Index::new();
        for key in 0..10_000 {
            index.insert(hash(key), key);
            assert!(index.len() * 5 <= index.buckets.len() * 4);
        }
    }
}

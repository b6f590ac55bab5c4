//! Which partition of the presence topic a user's records land in, and which users an
//! instance owns (the users of the partitions the consumer group assigned to it; see
//! `docs/decisions/0002-scale-out.md`).
//!
//! The placement is the producer's own (`partitioner=murmur2_random`, the Java client's):
//! `(murmur2(key) & 0x7fffffff) % partitions`, the key being the record key
//! ([`record_key`](crate::record::record_key)'s bytes). [`partition_of`] computes it without
//! librdkafka, and a test holds the two together.

use std::sync::atomic::{AtomicU64, Ordering};

use presence_frame::{Owner, UserId};

use crate::record::UserKey;

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`, librdkafka's
/// `rd_murmur2`): seed `0x9747b28c`, little-endian 4-byte blocks.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition (of `partitions`, at least 1) that the producer puts `user`'s records in.
/// Consulted once or twice per event: the key is written on the stack, never allocated.
pub fn partition_of(user: UserId, partitions: u32) -> u32 {
    (murmur2(UserKey::new(user).as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

/// The partitions of the presence topic this instance owns, as a bitset that readers on any
/// thread consult without a lock (the source asks it once per event).
#[derive(Debug)]
pub struct Ownership {
    partitions: u32,
    owned: Box<[AtomicU64]>,
}

impl Ownership {
    /// Owns none of `partitions` (at least 1) yet.
    pub fn none(partitions: u32) -> Ownership {
        let partitions = partitions.max(1);
        Ownership {
            partitions,
            owned: (0..partitions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Owns every one of `partitions`.
    pub fn all(partitions: u32) -> Ownership {
        let ownership = Ownership::none(partitions);
        ownership.assign((0..ownership.partitions).collect::<Vec<_>>().as_slice());
        ownership
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Adds `partitions` to the owned ones (those out of range are ignored).
    pub fn assign(&self, partitions: &[u32]) {
        self.update(partitions, true);
    }

    /// Removes `partitions` from the owned ones (those out of range are ignored).
    pub fn revoke(&self, partitions: &[u32]) {
        self.update(partitions, false);
    }

    fn update(&self, partitions: &[u32], owned: bool) {
        for &p in partitions.iter().filter(|p| **p < self.partitions) {
            let word = &self.owned[(p / 64) as usize];
            let bit = 1u64 << (p % 64);
            if owned {
                word.fetch_or(bit, Ordering::AcqRel);
            } else {
                word.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// Whether partition `partition` is owned.
    pub fn owns_partition(&self, partition: u32) -> bool {
        partition < self.partitions
            && self.owned[(partition / 64) as usize].load(Ordering::Acquire)
                & (1 << (partition % 64))
                != 0
    }

    /// Whether `user` is owned: its records' partition is.
    pub fn owns(&self, user: UserId) -> bool {
        self.owns_partition(partition_of(user, self.partitions))
    }

    /// The owned partitions, in order.
    pub fn owned(&self) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.owns_partition(*p))
            .collect()
    }
}

impl Owner for Ownership {
    fn owns(&self, user: UserId) -> bool {
        Ownership::owns(self, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::record_key;
    use presence_frame::Guid;
    use proptest::prelude::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`), as Java's signed ints.
    #[test]
    fn murmur2_matches_kafkas_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(
                murmur2(data) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    /// librdkafka's own partitioner, the one the producer uses.
    fn librdkafka_partition(key: &[u8], partitions: i32) -> i32 {
        // SAFETY: the murmur2 partitioner reads `keylen` bytes of `key` and nothing else (the
        // topic and opaques are unused when a key is given).
        unsafe {
            rdkafka::bindings::rd_kafka_msg_partitioner_murmur2(
                std::ptr::null(),
                key.as_ptr().cast(),
                key.len(),
                partitions,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
    }

    proptest! {
        #[test]
        fn partition_of_is_where_librdkafka_puts_the_record(
            guid in any::<u128>(),
            relay in any::<u32>(),
            partitions in 1u32..200,
        ) {
            for user in [UserId::Genesys(Guid(guid)), UserId::Relay(relay)] {
                let mut key = Vec::new();
                record_key(&mut key, user);
                prop_assert_eq!(
                    partition_of(user, partitions) as i32,
                    librdkafka_partition(&key, partitions as i32)
                );
            }
        }
    }

    #[test]
    fn ownership_follows_assignments_and_revocations() {
        let ownership = Ownership::none(130);
        assert!(ownership.owned().is_empty());
        ownership.assign(&[0, 63, 64, 129, 130, 7000]);
        assert_eq!(ownership.owned(), vec![0, 63, 64, 129]);
        ownership.revoke(&[63, 129]);
        assert_eq!(ownership.owned(), vec![0, 64]);
        assert!(!ownership.owns_partition(130));
        assert_eq!(Ownership::all(12).owned().len(), 12);
    }

    #[test]
    fn every_user_is_owned_by_exactly_one_of_a_split() {
        let (a, b) = (Ownership::none(12), Ownership::none(12));
        a.assign(&[0, 1, 2, 3, 4, 5]);
        b.assign(&[6, 7, 8, 9, 10, 11]);
        let mut owned_by_a = 0;
        for n in 0..10_000u32 {
            let user = UserId::Relay(n);
            assert!(a.owns(user) != b.owns(user), "user {n}");
            owned_by_a += u32::from(a.owns(user));
        }
        // murmur2 spreads keys evenly: about half each.
        assert!((4_500..5_500).contains(&owned_by_a), "{owned_by_a}");
    }
}

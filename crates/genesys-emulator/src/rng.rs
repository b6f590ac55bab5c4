//! A small seeded PRNG (SplitMix64) whose stream is fixed by this file, so a seed gives the
//! same workload in every version of the emulator, and GUIDs derived from the seed.

use presence_frame::Guid;

/// SplitMix64 (Steele, Lea and Flood): one 64-bit word of state, good statistical quality for a
/// workload generator, and trivially stable across versions. Not for secrets.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for one purpose (`stream`) of one seed; different streams are independent.
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        Rng {
            state: mix(seed ^ mix(stream.wrapping_add(GOLDEN))),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// A random version-4-shaped GUID.
    pub(crate) fn guid(&mut self) -> Guid {
        let high = u128::from(self.next_u64());
        let low = u128::from(self.next_u64());
        shape_v4((high << 64) | low)
    }

    /// `n` random lowercase hex digits.
    pub(crate) fn hex(&mut self, n: usize) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(n);
        let mut word = 0u64;
        for i in 0..n {
            if i % 16 == 0 {
                word = self.next_u64();
            }
            out.push(char::from(DIGITS[(word & 0xf) as usize]));
            word >>= 4;
        }
        out
    }
}

/// Sets the version (4) and variant (10xx) bits so the value looks like a random UUID.
fn shape_v4(v: u128) -> Guid {
    let v = (v & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    let v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    Guid(v)
}

/// Purposes of derived values, so that e.g. user 3 and group 3 never share a GUID.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    User = 1,
    Group = 2,
    Definition = 3,
    Division = 4,
}

/// The GUID of the `index`th thing of `kind` for `seed`: stable across runs and versions.
pub(crate) fn derived_guid(seed: u64, kind: Kind, index: u64) -> Guid {
    let mut rng = Rng::new(seed, ((kind as u64) << 56) ^ index);
    rng.guid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_stable() {
        // Pinned values: if these change, every seeded workload (user GUIDs, states,
        // changes) changes with them, which users of a seed would notice.
        let mut rng = Rng::new(1, 0);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            first,
            [
                0x85c6_1a30_0ec7_0fa1,
                0x4952_c2a6_e1ef_0b78,
                0xf30f_1e31_8359_884b
            ]
        );
        assert_eq!(
            derived_guid(42, Kind::User, 0).to_string(),
            "8d37b6fd-9aaf-4edf-8c45-2fd3747066cd"
        );
        assert_ne!(Rng::new(1, 0).next_u64(), Rng::new(1, 1).next_u64());
        assert_ne!(Rng::new(1, 0).next_u64(), Rng::new(2, 0).next_u64());
        assert_eq!(
            derived_guid(42, Kind::User, 0),
            derived_guid(42, Kind::User, 0)
        );
        assert_ne!(
            derived_guid(42, Kind::User, 0),
            derived_guid(42, Kind::Group, 0)
        );
    }

    #[test]
    fn guids_look_like_v4() {
        let g = derived_guid(7, Kind::User, 9).to_string();
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        assert!(matches!(&g[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn below_and_f64_stay_in_range() {
        let mut rng = Rng::new(3, 3);
        for _ in 0..10_000 {
            assert!(rng.below(7) < 7);
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.hex(40).len(), 40);
    }
}

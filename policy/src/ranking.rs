//! Rendezvous (highest random weight) ranking of scorers for a model id.
//!
//! The ranking is a pure function of (model id, set of scorer names): every proxy replica,
//! every restart and the simulator rank the same way, with no shared state. Removing one of
//! N scorers moves only the models it ranked first (about 1/N of them), each to its
//! next-ranked scorer; adding one takes about 1/(N+1) from the others.

use std::hash::{Hash, Hasher};

use rendezvous_hash::{NodeHasher, RendezvousNodes};

/// FNV-1a with a SplitMix64 finish: fixed forever, unlike `DefaultHasher`, so rankings do
/// not change when the proxy is rebuilt with another Rust version.
#[derive(Clone, Copy, Debug, Default)]
pub struct StableHasher(u64);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Hashes (node, item) with [`StableHasher`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StableNodeHasher;

impl<N: Hash> NodeHasher<N> for StableNodeHasher {
    fn hash<T: Hash>(&self, node: &N, item: &T) -> u64 {
        let mut hasher = StableHasher::default();
        item.hash(&mut hasher);
        node.hash(&mut hasher);
        hasher.finish()
    }
}

/// Scorer names, best first, for `model_id`.
pub fn rank<'a>(model_id: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut nodes = RendezvousNodes::new(StableNodeHasher);
    for name in names {
        nodes.insert(name);
    }
    nodes.calc_candidates(&model_id).copied().collect()
}

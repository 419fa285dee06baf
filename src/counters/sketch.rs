//! The unique-visitor sketch the embedded store keeps per counter and day: HyperLogLog++
//! (the `hyperloglogplus` crate) at precision 14, Redis's own, so both stores estimate
//! with the same error (about 0.8 %), and exactly while few visitors have come (its
//! sparse representation). The visitors it takes are already hashes (salted, see
//! `visitor`), which it uses as they are.

use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

/// Registers: 2^14, as Redis's HyperLogLog.
const PRECISION: u8 = 14;

/// Hashes a `u64` to itself: the visitors are hashes already.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct AlreadyHashed;

/// The hasher of `AlreadyHashed`.
#[derive(Default)]
pub struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl BuildHasher for AlreadyHashed {
    type Hasher = Passthrough;

    fn build_hasher(&self) -> Passthrough {
        Passthrough::default()
    }
}

/// One counter's visitors of one day.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sketch(HyperLogLogPlus<u64, AlreadyHashed>);

impl Default for Sketch {
    fn default() -> Self {
        Self(HyperLogLogPlus::new(PRECISION, AlreadyHashed).expect("a valid precision"))
    }
}

impl Sketch {
    pub fn add(&mut self, visitor: u64) {
        self.0.insert(&visitor);
    }

    /// About how many distinct visitors it has taken.
    pub fn count(&mut self) -> u64 {
        self.0.count().round() as u64
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.0).expect("a sketch serialises")
    }

    /// A sketch from `to_bytes`; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok().map(Self)
    }

    /// Takes every visitor of `other` too.
    pub fn merge(&mut self, other: &Sketch) {
        let _ = self.0.merge(&other.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::visitor::salted;

    /// The error the README states: within 2 % at 10 000 and 100 000 visitors (the
    /// standard error is about 0.8 %), each visitor counted once however often it comes.
    #[test]
    fn distinct_visitors_are_estimated_within_two_percent() {
        for visitors in [10_000u64, 100_000] {
            let mut sketch = Sketch::default();
            for visitor in 0..visitors {
                for _ in 0..2 {
                    sketch.add(salted(&[7; 16], visitor));
                }
            }
            let estimate = Sketch::from_bytes(&sketch.to_bytes()).unwrap().count();
            let error = (estimate as f64 - visitors as f64).abs() / visitors as f64;
            assert!(error < 0.02, "{estimate} for {visitors} visitors");
        }
    }

    #[test]
    fn few_visitors_are_counted_exactly() {
        let mut sketch = Sketch::default();
        for visitor in 0..50u64 {
            sketch.add(salted(&[7; 16], visitor));
        }
        assert_eq!(sketch.count(), 50);
        assert!(
            sketch.to_bytes().len() < 2_000,
            "a small sketch stays small"
        );
    }
}

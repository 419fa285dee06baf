//! The unique-visitor sketch the embedded store keeps per counter and day: HyperLogLog++
//! (the `hyperloglogplus` crate) at precision 14, Redis's own, so both stores estimate
//! with the same error (about 0.8 %), and exactly while few visitors have come (its
//! sparse representation). The visitors it takes are already hashes (salted, see
//! `visitor`), which it uses as they are.

use std::{
    hash::{BuildHasher, Hasher},
    marker::PhantomData,
};

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

    /// A sketch from `to_bytes`; `None` for anything else, also for bytes of the right
    /// shape whose parts do not agree (see `Layout`).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (layout, rest) = postcard::take_from_bytes::<Layout>(bytes).ok()?;
        if !rest.is_empty() || !layout.is_consistent() {
            return None;
        }
        postcard::from_bytes(bytes).ok().map(Self)
    }

    /// Takes every visitor of `other` too.
    pub fn merge(&mut self, other: &Sketch) {
        let _ = self.0.merge(&other.0);
    }
}

/// What `HyperLogLogPlus` serialises, field by field in its order, read to check a sketch
/// before the crate takes it. The crate trusts its own bytes: sizes that do not agree with
/// its precision make it index out of bounds or allocate without limit, and a sparse list
/// that does not decode makes it panic. A sketch that comes from outside (an import) or
/// from a damaged file is taken only when every part is one the crate could have written.
#[derive(Serialize, Deserialize)]
struct Layout {
    builder: AlreadyHashed,
    precision: u8,
    /// Registers, registers of the sparse precision, most bytes of the sparse list.
    counts: (usize, usize, usize),
    /// Hash codes not yet merged into the sparse list (a set, serialised as a list).
    tmpset: Vec<u32>,
    sparse: SparseLayout,
    registers: Option<RegistersLayout>,
    phantom: PhantomData<u64>,
}

/// Increasing hash codes, each as its difference from the one before, in LEB128.
#[derive(Serialize, Deserialize)]
struct SparseLayout {
    count: usize,
    last: u32,
    buf: Vec<u8>,
}

/// 6-bit registers, five to a word.
#[derive(Serialize, Deserialize)]
struct RegistersLayout {
    buf: Vec<u32>,
    count: usize,
    zeros: usize,
}

const REGISTERS: usize = 1 << PRECISION;
/// Registers at the sparse list's precision (25 bits, one spent on the encoding).
const SPARSE_REGISTERS: usize = 1 << 24;
const REGISTERS_PER_WORD: usize = 5;
/// The sparse list's size in bytes beyond which the crate moves to registers, and the
/// unmerged codes beyond which it merges them (times 100).
const SPARSE_BYTES: usize = 4 * REGISTERS / REGISTERS_PER_WORD;

impl Layout {
    fn is_consistent(&self) -> bool {
        if self.precision != PRECISION
            || self.counts != (REGISTERS, SPARSE_REGISTERS, SPARSE_BYTES)
            || self.tmpset.len() * 100 > SPARSE_BYTES
            || self.sparse.buf.len() > SPARSE_BYTES
        {
            return false;
        }
        let sparse_ok = self.sparse.decoded() == Some((self.sparse.count, self.sparse.last));
        match &self.registers {
            None => sparse_ok,
            Some(registers) => {
                self.tmpset.is_empty()
                    && self.sparse.count == 0
                    && sparse_ok
                    && registers.is_consistent()
            }
        }
    }
}

impl SparseLayout {
    /// How many codes the list holds and the last of them, if it decodes: each varint at
    /// most five bytes and within 32 bits, the sum never past `u32::MAX`.
    fn decoded(&self) -> Option<(usize, u32)> {
        let (mut count, mut last, mut value, mut shift) = (0usize, 0u32, 0u32, 0u32);
        for &byte in &self.buf {
            let bits = u32::from(byte & 0x7f);
            if shift == 28 && bits > 0x0f {
                return None;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                last = last.checked_add(value)?;
                count += 1;
                (value, shift) = (0, 0);
            } else {
                shift += 7;
                if shift > 28 {
                    return None;
                }
            }
        }
        (shift == 0).then_some((count, last))
    }
}

impl RegistersLayout {
    fn is_consistent(&self) -> bool {
        if self.count != REGISTERS || self.buf.len() != REGISTERS.div_ceil(REGISTERS_PER_WORD) {
            return false;
        }
        let zeros = (0..REGISTERS)
            .filter(|i| {
                let word = self.buf[i / REGISTERS_PER_WORD];
                (word >> (6 * (i % REGISTERS_PER_WORD))) & 0x3f == 0
            })
            .count();
        zeros == self.zeros
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

    fn layout(sketch: &Sketch) -> Layout {
        postcard::from_bytes(&sketch.to_bytes()).unwrap()
    }

    fn taken(layout: &Layout) -> bool {
        Sketch::from_bytes(&postcard::to_stdvec(layout).unwrap()).is_some()
    }

    #[test]
    fn the_sketches_the_store_writes_are_taken_back() {
        let mut sketch = Sketch::default();
        assert!(Sketch::from_bytes(&sketch.to_bytes()).is_some(), "empty");
        for visitor in 0..500 {
            sketch.add(salted(&[1; 16], visitor));
        }
        let sparse = layout(&sketch);
        assert!(sparse.registers.is_none() && sparse.sparse.count > 0 && !sparse.tmpset.is_empty());
        assert!(Sketch::from_bytes(&sketch.to_bytes()).is_some(), "sparse");
        for visitor in 0..20_000 {
            sketch.add(salted(&[1; 16], visitor));
        }
        assert!(layout(&sketch).registers.is_some());
        assert!(
            Sketch::from_bytes(&sketch.to_bytes()).is_some(),
            "registers"
        );
    }

    /// Sketches of the right shape whose parts disagree, as a crafted import can hold:
    /// the crate would index out of bounds, allocate without limit or panic on each.
    #[test]
    fn sketches_whose_parts_disagree_are_refused() {
        let mut sparse = Sketch::default();
        for visitor in 0..500 {
            sparse.add(salted(&[2; 16], visitor));
        }
        let mut dense = sparse.clone();
        for visitor in 0..20_000 {
            dense.add(salted(&[2; 16], visitor));
        }
        type Damage = Box<dyn Fn(&mut Layout)>;
        let damaged: Vec<(&str, Damage, &Sketch)> = vec![
            (
                "registers without their words",
                Box::new(|l| l.registers.as_mut().unwrap().buf.clear()),
                &dense,
            ),
            (
                "a register count of 2^50",
                Box::new(|l| l.counts.0 = 1 << 50),
                &sparse,
            ),
            ("another precision", Box::new(|l| l.precision = 4), &sparse),
            (
                "zeros miscounted",
                Box::new(|l| l.registers.as_mut().unwrap().zeros += 1),
                &dense,
            ),
            (
                "registers and a sparse list",
                Box::new(|l| l.sparse.count = 1),
                &dense,
            ),
            (
                "a sparse count that is not the list's",
                Box::new(|l| l.sparse.count += 1),
                &sparse,
            ),
            (
                "a last code that is not the list's",
                Box::new(|l| l.sparse.last ^= 1),
                &sparse,
            ),
            (
                "a list cut inside a code",
                Box::new(|l| {
                    l.sparse.buf.push(0x80);
                }),
                &sparse,
            ),
            (
                "a code wider than 32 bits",
                Box::new(|l| {
                    l.sparse.buf.extend([0xff, 0xff, 0xff, 0xff, 0x7f]);
                    l.sparse.count += 1;
                }),
                &sparse,
            ),
            (
                "codes past u32::MAX",
                Box::new(|l| {
                    l.sparse.buf.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
                    l.sparse.count += 1;
                }),
                &sparse,
            ),
            (
                "too many unmerged codes",
                Box::new(|l| l.tmpset = (0..200).collect()),
                &sparse,
            ),
        ];
        for (what, damage, sketch) in damaged {
            let mut layout = layout(sketch);
            assert!(taken(&layout), "{what}: the sketch before the damage");
            damage(&mut layout);
            assert!(!taken(&layout), "{what}: taken");
        }
        let mut bytes = sparse.to_bytes();
        bytes.push(0);
        assert!(
            Sketch::from_bytes(&bytes).is_none(),
            "bytes after the sketch"
        );
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

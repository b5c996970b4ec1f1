//! `MemoryStore`'s indexes: open addressing in 4-byte slots, one writer,
//! readers without a lock.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::key::KeyHash;
use crate::key::KeyId;

pub(super) const MIN_SLOTS: usize = 16;

/// An open-addressing index with linear probing, in 4-byte slots: the
/// entry's position plus one (0: empty) in as many low bits as this index's
/// size needs, and as many bits of the key as are left above it, to filter
/// with. A match is confirmed against the entry. Only the writer inserts;
/// readers probe concurrently, seeing each slot either empty or whole.
///
/// Four bytes, not eight: at a million keys the index is 5 MB instead of
/// 11, and each lookup's read of it comes from closer (about 50 ns less,
/// BENCHMARKS.md). What is lost is filter bits — 11 at a million keys, so
/// about one probed slot in 2 000 is a false match that costs a look at an
/// entry that is not the one.
pub(super) struct Index {
    pub(super) slots: Box<[AtomicU32]>,
    /// Bits holding a position (plus one); those above hold the filter.
    pub(super) position_bits: u32,
}

impl Index {
    pub(super) fn with_slots(slots: usize) -> Index {
        let slots = slots.max(MIN_SLOTS);
        // Every position this index will hold is below its slot count (it
        // is rebuilt larger before it is three quarters full).
        let position_bits = (usize::BITS - slots.leading_zeros()).min(32);
        Index {
            slots: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            position_bits,
        }
    }

    /// Where probing for `key` starts. The key is mixed first: hashes and
    /// generated ids are uniform already, but ids a program chose itself
    /// (1, 2, 3, …) would otherwise pile up in one run of slots.
    pub(super) fn start(&self, key: u64) -> usize {
        ((u128::from(mix(key)) * self.slots.len() as u128) >> 64) as usize
    }

    /// The filter bits of `tag` as they sit in a slot.
    pub(super) fn filter(&self, tag: u32) -> u64 {
        // In u64, so neither shift can reach the width (32 position bits
        // leave no filter at all: every candidate is then confirmed).
        let filter_bits = 32 - self.position_bits;
        (u64::from(tag) >> (32 - filter_bits)) << self.position_bits
    }

    pub(super) fn find(
        &self,
        key: u64,
        tag: u32,
        mut confirm: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let len = self.slots.len();
        let filter = self.filter(tag);
        let positions = (1u64 << self.position_bits) - 1;
        let mut at = self.start(key);
        // At most three quarters are full, so an empty slot ends every
        // search; the bound is only a guarantee.
        for _ in 0..len {
            let slot = u64::from(self.slots[at].load(Ordering::Acquire));
            if slot == 0 {
                return None;
            }
            if slot & !positions == filter {
                let index = ((slot & positions) as u32).wrapping_sub(1);
                if confirm(index) {
                    return Some(index);
                }
            }
            at = if at + 1 == len { 0 } else { at + 1 };
        }
        None
    }

    /// With the writer lock held, and room made.
    pub(super) fn insert(&self, key: u64, tag: u32, index: u32) {
        let len = self.slots.len();
        let slot = (self.filter(tag) | (u64::from(index) + 1)) as u32;
        let mut at = self.start(key);
        for _ in 0..len {
            if self.slots[at].load(Ordering::Relaxed) == 0 {
                self.slots[at].store(slot, Ordering::Release);
                return;
            }
            at = if at + 1 == len { 0 } else { at + 1 };
        }
    }
}

/// SplitMix64's finaliser: a bijection that spreads nearby values apart.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where a hash goes: its first 8 bytes place it, the next 4 filter.
pub(super) fn hash_slot(hash: &KeyHash) -> (u64, u32) {
    let bytes = hash.as_bytes();
    let mut key = [0u8; 8];
    key.copy_from_slice(&bytes[..8]);
    let mut tag = [0u8; 4];
    tag.copy_from_slice(&bytes[8..12]);
    (u64::from_le_bytes(key), u32::from_le_bytes(tag))
}

pub(super) fn id_slot(id: &KeyId) -> (u64, u32) {
    let bits = id.as_u128();
    // Truncations: the low 64 bits place it, the next 32 filter.
    (bits as u64, (bits >> 64) as u32)
}

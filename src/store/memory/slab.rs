//! Where `MemoryStore` keeps its keys: the hot parts in aligned chunks,
//! the cold parts in a list of their own, and the per-thread handles that
//! references to them count on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::entry::{AlignedHot, Cold, ColdAt, Entry, Hot};
use crate::record::KeyRecord;

/// How many keys' hot parts one allocation holds (512 KiB).
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Keys kept side by side (`MemoryStore`'s), never removed: the hot parts
/// in aligned chunks, the cold parts in a list of their own. Only one
/// writer appends at a time; readers reach a key only through a position
/// published after its append.
pub(crate) struct Slab {
    hot: boxcar::Vec<Box<[AlignedHot]>>,
    cold: boxcar::Vec<Cold>,
}

impl Slab {
    pub(crate) fn new() -> Slab {
        Slab {
            hot: boxcar::Vec::new(),
            cold: boxcar::Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.cold.count()
    }

    /// Appends a key; returns its position. One writer at a time.
    pub(crate) fn push(&self, record: &KeyRecord, owner: Arc<str>) -> u32 {
        let index = self.cold.count();
        if index.is_multiple_of(CHUNK) {
            // A chunk is allocated whole: a blank hot part is all zeros.
            self.hot
                .push((0..CHUNK).map(|_| AlignedHot::default()).collect());
        }
        if let Some(hot) = self.hot(index as u32) {
            hot.fill(record);
        }
        self.cold.push(Cold::new(record, owner)) as u32
    }

    /// The hot part of the key at `index`, for a lookup to confirm.
    pub(crate) fn hot(&self, index: u32) -> Option<&Hot> {
        let chunk = self.hot.get((index >> CHUNK_BITS) as usize)?;
        chunk
            .get(index as usize & (CHUNK - 1))
            .map(|aligned| &aligned.0)
    }

    /// The key at `index`, which must have been pushed.
    pub(crate) fn entry(&self, index: u32) -> Entry<'_> {
        let chunk = &self.hot[(index >> CHUNK_BITS) as usize];
        Entry {
            hot: &chunk[index as usize & (CHUNK - 1)].0,
            cold: ColdAt::Slab(&self.cold, index),
        }
    }

    /// The key at `index`, if there is one.
    pub(crate) fn get(&self, index: u32) -> Option<Entry<'_>> {
        self.cold.get(index as usize)?;
        Some(self.entry(index))
    }

    /// Every key, in the order they were pushed.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, Entry<'_>)> {
        (0..self.len() as u32).map(|index| (index, self.entry(index)))
    }
}

/// One of several owners of a slab. A handle given out with every key
/// reference means one reference count per handle, not one for the slab:
/// with a handle per thread, verifications on two cores do not fight over
/// one cache line for the count. Aligned so that no two handles' counts
/// share a line (or a pair of lines, which some processors fetch together).
#[repr(align(128))]
pub(crate) struct SlabHandle {
    pub(super) slab: Arc<Slab>,
}

/// The handles of one slab, one picked per thread.
pub(crate) struct SlabHandles(Box<[Arc<SlabHandle>]>);

const HANDLES: usize = 16;

impl SlabHandles {
    pub(crate) fn new(slab: &Arc<Slab>) -> SlabHandles {
        SlabHandles(
            (0..HANDLES)
                .map(|_| {
                    Arc::new(SlabHandle {
                        slab: Arc::clone(slab),
                    })
                })
                .collect(),
        )
    }

    /// This thread's handle, to make references with once a lookup has
    /// found a key.
    ///
    /// Taken before the lookup, not after: taking it is an atomic
    /// increment, which on x86 waits for every earlier memory access to
    /// finish. After the lookup, it would wait for the key's cache miss
    /// with nothing else to do; before, it costs the increment alone.
    pub(crate) fn pick(&self) -> SlabLease {
        SlabLease(Arc::clone(&self.0[thread_number() % self.0.len()]))
    }
}

/// A handle taken for one lookup ([`SlabHandles::pick`]).
pub(crate) struct SlabLease(Arc<SlabHandle>);

impl SlabLease {
    /// The handle, to refer to a key the lookup found.
    pub(super) fn handle(self) -> Arc<SlabHandle> {
        self.0
    }
}

/// A small number for the calling thread, the same on every call.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|number| *number)
}

#[cfg(test)]
mod tests {
    use super::super::entry::tests::record;
    use super::super::entry::StoredKey;
    use super::super::fast::StoredKeyRef;
    use super::*;

    #[test]
    fn slab_references_reach_their_key_from_any_thread() {
        let slab = Arc::new(Slab::new());
        let mut last = 0;
        for _ in 0..CHUNK + 5 {
            last = slab.push(&record(), Arc::from("acct"));
        }
        let handles = SlabHandles::new(&slab);
        // No two threads' handles share a cache line (or a fetched pair).
        assert_eq!(std::mem::align_of::<SlabHandle>(), 128);
        let here = handles.pick().entry(last);
        let id = here.id();
        assert_eq!(slab.entry(last).id(), id);
        let there = std::thread::scope(|s| s.spawn(|| handles.pick().entry(last).id()).join());
        assert_eq!(there.ok(), Some(id));
        assert!(!here.is_unreachable());
        let shared = StoredKeyRef::from(Arc::new(StoredKey::new(record())));
        assert!(shared.is_unreachable());
        let clone = shared.clone();
        assert!(!shared.is_unreachable());
        drop(clone);
    }
}

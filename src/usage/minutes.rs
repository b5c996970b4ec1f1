//! A key's per-minute history: a ring of counts, allocated an hour at a
//! time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::store::counters::{pack, unpack};

/// A ring of per-minute counts, allocated an hour (480 bytes) at a time
/// when a minute of that hour is first filed: a key used for a few minutes
/// costs one hour of history, not a day's 11.5 KB. Each slot holds
/// (epoch minute, count).
pub(crate) struct Minutes {
    len: usize,
    hours: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Minutes {
    pub(crate) fn new(len: usize) -> Minutes {
        Minutes {
            hours: (0..len.div_ceil(60)).map(|_| OnceLock::new()).collect(),
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn position(&self, minute: u32) -> Option<(usize, usize)> {
        let index = (minute as usize).checked_rem(self.len)?;
        Some((index / 60, index % 60))
    }

    /// Adds `count` requests to `minute`, allocating its hour if needed.
    /// Several blocks may count one key (see the tracker), so filing adds:
    /// a slot still holding an older minute is taken over, one holding a
    /// newer minute is left alone.
    pub(crate) fn file(&self, minute: u32, count: u32) {
        let Some((hour, at)) = self.position(minute) else {
            return;
        };
        let Some(slot) = self.hours.get(hour).and_then(|hour| {
            hour.get_or_init(|| (0..60).map(|_| AtomicU64::new(0)).collect())
                .get(at)
        }) else {
            return;
        };
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (held, so_far) = unpack(current);
            let next = match held.cmp(&minute) {
                std::cmp::Ordering::Equal => pack(minute, so_far.saturating_add(count)),
                std::cmp::Ordering::Less => pack(minute, count),
                std::cmp::Ordering::Greater => return,
            };
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Requests filed for `minute`, if the ring still holds it (reading
    /// allocates nothing).
    pub(crate) fn count(&self, minute: u32) -> u32 {
        let Some((hour, at)) = self.position(minute) else {
            return 0;
        };
        let Some(slot) = self
            .hours
            .get(hour)
            .and_then(|hour| hour.get())
            .and_then(|hour| hour.get(at))
        else {
            return 0;
        };
        let (held, count) = unpack(slot.load(Ordering::Relaxed));
        if held == minute {
            count
        } else {
            0
        }
    }

    #[cfg(test)]
    fn allocated_hours(&self) -> usize {
        self.hours.iter().filter(|h| h.get().is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_adds_and_rolls_over() {
        let ring = Minutes::new(3);
        assert_eq!(ring.count(100), 0);
        ring.file(100, 2);
        ring.file(100, 3);
        assert_eq!(ring.count(100), 5, "filing the same minute twice adds");
        ring.file(103, 1);
        assert_eq!(ring.count(103), 1);
        assert_eq!(ring.count(100), 0, "overwritten: a ring of three minutes");
        ring.file(100, 7);
        assert_eq!(
            ring.count(103),
            1,
            "an older minute never replaces a newer one"
        );
        let none = Minutes::new(0);
        none.file(5, 1);
        assert_eq!(none.count(5), 0, "no history kept");
    }

    #[test]
    fn history_is_allocated_an_hour_at_a_time() {
        let minutes = Minutes::new(24 * 60);
        assert_eq!(minutes.allocated_hours(), 0);
        assert_eq!(minutes.count(1_000), 0);
        assert_eq!(minutes.allocated_hours(), 0, "reading allocates nothing");
        minutes.file(1_000, 1);
        minutes.file(1_001, 1);
        assert_eq!(minutes.allocated_hours(), 1);
        let odd = Minutes::new(90);
        assert_eq!(odd.hours.len(), 2);
        odd.file(89, 1);
        odd.file(90, 1);
        assert_eq!((odd.count(89), odd.count(90)), (1, 1));
    }
}

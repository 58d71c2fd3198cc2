//! The ATS translation cache (ATC): the device's cache of page-table translations.
//!
//! Set-associative with LRU replacement, tagged by (PASID, virtual page); an entry holds
//! one leaf of the page table (4 KiB or 2 MiB). It follows the rule of vm-memory's IOTLB:
//! restricting or removing a translation must invalidate it here first, making it more
//! permissive needs no invalidation (a lookup that finds a read-only entry for a write
//! reports [`Lookup::Denied`] and the caller walks the page table again). The
//! [`Mmu`](super::Mmu) owns the device's ATC and is what keeps that rule.
//!
//! Invalidation works like PCIe ATS invalidation requests: each request covers one
//! naturally aligned power-of-two block, so a range costs as many requests as it splits
//! into such blocks.

use crate::address::{Iova, IovaRange, Pasid, PAGE_SHIFT};
use crate::mmu::page_table::{LeafSize, Translation};

/// Errors of ATC construction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AtcError {
    /// Ways must be at least 1 and divide the number of entries.
    #[error("ATC of {entries} entries cannot have {ways} ways")]
    Geometry {
        /// Entries asked for.
        entries: u32,
        /// Ways asked for.
        ways: u32,
    },
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A translation that allows the access.
    Hit(Translation),
    /// A translation that is read-only, for a write.
    Denied,
    /// No translation.
    Miss,
}

/// What an invalidation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtsInvalidation {
    /// Invalidation requests issued (aligned power-of-two blocks).
    pub requests: u64,
    /// Entries dropped.
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    pasid: Pasid,
    translation: Translation,
    last_use: u64,
}

/// The translation cache.
#[derive(Clone, Debug)]
pub struct Atc {
    sets: usize,
    ways: usize,
    slots: Vec<Option<Entry>>,
    /// Advances on every lookup hit and insert; the smallest `last_use` is the LRU entry.
    clock: u64,
}

/// Splits a page-aligned range into the naturally aligned power-of-two blocks that ATS
/// invalidation requests can express, largest first at each position.
pub fn ats_blocks(range: IovaRange) -> impl Iterator<Item = (u64, u64)> {
    let mut start = range.start;
    let end = range.end;
    std::iter::from_fn(move || {
        if start >= end {
            return None;
        }
        let align = if start == 0 {
            1u64 << 63
        } else {
            1u64 << start.trailing_zeros()
        };
        let remaining = end - start;
        let fit = 1u64 << (63 - remaining.leading_zeros());
        let size = align.min(fit);
        let block = (start, size);
        start += size;
        Some(block)
    })
}

impl Atc {
    /// A cache of `entries` translations in sets of `ways`; 0 entries disables it.
    pub fn new(entries: u32, ways: u32) -> Result<Atc, AtcError> {
        if entries == 0 {
            return Ok(Atc {
                sets: 0,
                ways: 0,
                slots: Vec::new(),
                clock: 0,
            });
        }
        if ways == 0 || !entries.is_multiple_of(ways) {
            return Err(AtcError::Geometry { entries, ways });
        }
        Ok(Atc {
            sets: (entries / ways) as usize,
            ways: ways as usize,
            slots: vec![None; entries as usize],
            clock: 0,
        })
    }

    /// Entries currently cached.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slots of the set a (PASID, leaf) tag falls in.
    fn set_of(&self, pasid: Pasid, base: Iova, size: LeafSize) -> std::ops::Range<usize> {
        let page = base.0 >> PAGE_SHIFT;
        let size_bit = match size {
            LeafSize::Small => 0,
            LeafSize::Huge => 1u64 << 63,
        };
        let key = page ^ (u64::from(pasid.0) << 36) ^ size_bit;
        // Fibonacci hashing spreads consecutive pages and 2 MiB bases over the sets.
        let set = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % self.sets;
        set * self.ways..(set + 1) * self.ways
    }

    fn find(&self, pasid: Pasid, iova: Iova) -> Option<usize> {
        if self.sets == 0 {
            return None;
        }
        [LeafSize::Small, LeafSize::Huge]
            .into_iter()
            .find_map(|size| {
                let base = Iova(iova.0 & !(size.bytes() - 1));
                self.set_of(pasid, base, size).find(|&i| {
                    self.slots[i].is_some_and(|e| {
                        e.pasid == pasid && e.translation.size == size && e.translation.base == base
                    })
                })
            })
    }

    /// Looks up the translation of `iova` for a read or a write.
    pub fn lookup(&mut self, pasid: Pasid, iova: Iova, write: bool) -> Lookup {
        let Some(i) = self.find(pasid, iova) else {
            return Lookup::Miss;
        };
        self.clock += 1;
        let clock = self.clock;
        let Some(e) = self.slots[i].as_mut() else {
            return Lookup::Miss;
        };
        if write && !e.translation.writable {
            return Lookup::Denied;
        }
        e.last_use = clock;
        Lookup::Hit(e.translation)
    }

    /// Caches `translation` for `pasid`, replacing the same tag or the set's LRU entry.
    pub fn insert(&mut self, pasid: Pasid, translation: Translation) {
        if self.sets == 0 {
            return;
        }
        self.clock += 1;
        let set = self.set_of(pasid, translation.base, translation.size);
        let same = set.clone().find(|&i| {
            self.slots[i].is_some_and(|e| {
                e.pasid == pasid
                    && e.translation.base == translation.base
                    && e.translation.size == translation.size
            })
        });
        let victim = same
            .or_else(|| set.clone().find(|&i| self.slots[i].is_none()))
            .or_else(|| set.min_by_key(|&i| self.slots[i].map_or(0, |e| e.last_use)));
        if let Some(i) = victim {
            self.slots[i] = Some(Entry {
                pasid,
                translation,
                last_use: self.clock,
            });
        }
    }

    /// Invalidates every translation of `pasid` that overlaps `range`.
    pub fn invalidate_range(&mut self, pasid: Pasid, range: IovaRange) -> AtsInvalidation {
        let requests = ats_blocks(range).count() as u64;
        let mut dropped = 0;
        for slot in self.slots.iter_mut() {
            let overlaps = slot.is_some_and(|e| {
                let t = e.translation;
                e.pasid == pasid && t.base.0 < range.end && range.start < t.base.0 + t.size.bytes()
            });
            if overlaps {
                *slot = None;
                dropped += 1;
            }
        }
        AtsInvalidation { requests, dropped }
    }

    /// Invalidates every translation of `pasid`; returns the entries dropped.
    pub fn invalidate_pasid(&mut self, pasid: Pasid) -> u64 {
        let mut dropped = 0;
        for slot in self.slots.iter_mut() {
            if slot.is_some_and(|e| e.pasid == pasid) {
                *slot = None;
                dropped += 1;
            }
        }
        dropped
    }

    /// The translations cached for `pasid`, in slot order (for audits; no LRU update).
    pub fn entries(&self, pasid: Pasid) -> impl Iterator<Item = Translation> + '_ {
        self.slots
            .iter()
            .flatten()
            .filter(move |e| e.pasid == pasid)
            .map(|e| e.translation)
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.slots.fill(None);
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::address::{HUGE_PAGE_SIZE, PAGE_SIZE};

    fn small(page: u64, writable: bool) -> Translation {
        Translation {
            base: Iova(page * PAGE_SIZE),
            frame: GuestAddress(0x10_0000 + page * PAGE_SIZE),
            size: LeafSize::Small,
            writable,
        }
    }

    fn blocks(start: u64, len: u64) -> Vec<(u64, u64)> {
        ats_blocks(IovaRange::pages(start, len).unwrap()).collect()
    }

    #[test]
    fn geometry_is_checked() {
        assert!(Atc::new(512, 8).is_ok());
        assert_eq!(
            Atc::new(10, 4).unwrap_err(),
            AtcError::Geometry {
                entries: 10,
                ways: 4
            }
        );
        assert!(Atc::new(8, 0).is_err());
        let mut off = Atc::new(0, 0).unwrap();
        off.insert(Pasid(1), small(1, true));
        assert_eq!(off.lookup(Pasid(1), Iova(0x1000), false), Lookup::Miss);
    }

    #[test]
    fn hit_miss_and_pasid_tagging() {
        let mut atc = Atc::new(64, 4).unwrap();
        atc.insert(Pasid(1), small(5, false));
        assert_eq!(
            atc.lookup(Pasid(1), Iova(0x5123), false),
            Lookup::Hit(small(5, false))
        );
        assert_eq!(atc.lookup(Pasid(2), Iova(0x5000), false), Lookup::Miss);
        assert_eq!(atc.lookup(Pasid(1), Iova(0x6000), false), Lookup::Miss);
        assert_eq!(atc.lookup(Pasid(1), Iova(0x5000), true), Lookup::Denied);
        // Re-inserting the same tag replaces, it does not duplicate.
        atc.insert(Pasid(1), small(5, true));
        assert_eq!(atc.len(), 1);
        assert!(matches!(
            atc.lookup(Pasid(1), Iova(0x5000), true),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn huge_entries_cover_their_run() {
        let mut atc = Atc::new(16, 2).unwrap();
        let t = Translation {
            base: Iova(HUGE_PAGE_SIZE),
            frame: GuestAddress(0),
            size: LeafSize::Huge,
            writable: true,
        };
        atc.insert(Pasid(3), t);
        assert_eq!(
            atc.lookup(Pasid(3), Iova(HUGE_PAGE_SIZE + 0x1f_f000), true),
            Lookup::Hit(t)
        );
        assert_eq!(
            atc.lookup(Pasid(3), Iova(2 * HUGE_PAGE_SIZE), true),
            Lookup::Miss
        );
        let r = atc.invalidate_range(
            Pasid(3),
            IovaRange::pages(HUGE_PAGE_SIZE + 0x5000, 0x1000).unwrap(),
        );
        assert_eq!(
            r,
            AtsInvalidation {
                requests: 1,
                dropped: 1
            }
        );
        assert!(atc.is_empty());
    }

    #[test]
    fn lru_replacement_in_a_full_set() {
        // One set of four ways: fully associative, so eviction order is pure LRU.
        let mut atc = Atc::new(4, 4).unwrap();
        for p in 0..4 {
            atc.insert(Pasid(1), small(p, true));
        }
        // Touch 0 and 1: 2 is now the least recently used.
        assert!(matches!(
            atc.lookup(Pasid(1), Iova(0), false),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            atc.lookup(Pasid(1), Iova(0x1000), false),
            Lookup::Hit(_)
        ));
        atc.insert(Pasid(1), small(9, true));
        assert_eq!(atc.lookup(Pasid(1), Iova(0x2000), false), Lookup::Miss);
        assert_eq!(atc.len(), 4);
        // Then 3 goes.
        atc.insert(Pasid(1), small(10, true));
        assert_eq!(atc.lookup(Pasid(1), Iova(0x3000), false), Lookup::Miss);
        for p in [0, 1, 9, 10] {
            assert!(matches!(
                atc.lookup(Pasid(1), Iova(p * PAGE_SIZE), false),
                Lookup::Hit(_)
            ));
        }
    }

    #[test]
    fn capacity_is_bounded() {
        let mut atc = Atc::new(32, 8).unwrap();
        for p in 0..1000 {
            atc.insert(Pasid(1), small(p, true));
        }
        assert_eq!(atc.len(), 32);
    }

    #[test]
    fn ranges_split_into_aligned_power_of_two_blocks() {
        assert_eq!(blocks(0, 0x1000), vec![(0, 0x1000)]);
        assert_eq!(blocks(0, 0x4000), vec![(0, 0x4000)]);
        // 3 pages at page 1: [1] [2,3].
        assert_eq!(
            blocks(0x1000, 0x3000),
            vec![(0x1000, 0x1000), (0x2000, 0x2000)]
        );
        // 7 pages at page 1: 1 + 2 + 4.
        assert_eq!(blocks(0x1000, 0x7000).len(), 3);
        // An unaligned middle: pages 3..13 = [3] [4..8) [8..12) [12].
        assert_eq!(
            blocks(0x3000, 0xa000),
            vec![
                (0x3000, 0x1000),
                (0x4000, 0x4000),
                (0x8000, 0x4000),
                (0xc000, 0x1000)
            ]
        );
        assert_eq!(blocks(0, 1 << 47), vec![(0, 1 << 47)]);
        // The worst case stays small: at most two blocks per address bit.
        assert!(blocks(0x1000, (1 << 47) - 0x2000).len() <= 2 * 35);
    }

    #[test]
    fn range_and_pasid_invalidation_count_drops() {
        let mut atc = Atc::new(64, 8).unwrap();
        for p in 0..8 {
            atc.insert(Pasid(1), small(p, true));
            atc.insert(Pasid(2), small(p, true));
        }
        let r = atc.invalidate_range(Pasid(1), IovaRange::pages(0x1000, 0x3000).unwrap());
        assert_eq!(
            r,
            AtsInvalidation {
                requests: 2,
                dropped: 3
            }
        );
        let r = atc.invalidate_range(Pasid(1), IovaRange::pages(0x1000, 0x3000).unwrap());
        assert_eq!(
            r,
            AtsInvalidation {
                requests: 2,
                dropped: 0
            }
        );
        assert_eq!(atc.invalidate_pasid(Pasid(1)), 5);
        assert_eq!(atc.len(), 8);
        atc.clear();
        assert!(atc.is_empty());
    }
}

/// The ATC in front of page tables driven by random sequences (the page-table properties'
/// operations), with invalidation after every change as the mmu-notifier rule demands:
/// every hit agrees with the reference, and an invalidated range leaves no entry behind.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::address::PAGE_SIZE;
    use crate::mmu::page_table::properties::{
        apply_model, apply_table, op, Model, Op, WINDOW_BASE, WINDOW_PAGES,
    };
    use crate::mmu::page_table::PageTable;

    /// Entries of `pasid` that overlap `range`, straight from the slots.
    fn overlapping(atc: &Atc, pasid: Pasid, range: IovaRange) -> usize {
        atc.slots
            .iter()
            .flatten()
            .filter(|e| {
                let t = e.translation;
                e.pasid == pasid && t.base.0 < range.end && range.start < t.base.0 + t.size.bytes()
            })
            .count()
    }

    /// Small caches, so replacement happens all the time.
    fn geometry() -> impl Strategy<Value = (u32, u32)> {
        prop_oneof![
            Just((8, 1)),
            Just((8, 8)),
            Just((16, 4)),
            Just((32, 2)),
            Just((64, 8))
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        #[test]
        fn atc_hits_agree_and_invalidation_leaves_nothing(
            (entries, ways) in geometry(),
            ops in prop::collection::vec((1..=2u32, op(), any::<bool>()), 1..20),
        ) {
            let mut atc = Atc::new(entries, ways).unwrap();
            let mut tables = [PageTable::new(64), PageTable::new(64)];
            let mut models = [Model::new(), Model::new()];
            for (pasid, op, write) in &ops {
                let pasid = Pasid(*pasid);
                let (table, model) = (&mut tables[pasid.0 as usize - 1], &mut models[pasid.0 as usize - 1]);
                if let Op::Translate { page, offset } = *op {
                    let page = WINDOW_BASE + page;
                    let iova = Iova(page * PAGE_SIZE + offset);
                    let want = model.get(&page).copied();
                    match atc.lookup(pasid, iova, *write) {
                        Lookup::Hit(t) => {
                            let (frame, writable) = want.expect("a hit on an unmapped page");
                            prop_assert_eq!(t.gpa(iova), GuestAddress(frame * PAGE_SIZE + offset));
                            prop_assert_eq!(t.writable, writable);
                        }
                        Lookup::Denied => prop_assert_eq!(want.map(|w| w.1), Some(false)),
                        // A miss walks and caches, as the MMU does.
                        Lookup::Miss => {
                            if let Some(t) = table.translate(iova) {
                                if !*write || t.writable {
                                    atc.insert(pasid, t);
                                }
                            }
                        }
                    }
                    continue;
                }
                let (start, end) = apply_table(table, op).unwrap();
                apply_model(model, op);
                let range = IovaRange::pages(start * PAGE_SIZE, (end - start) * PAGE_SIZE).unwrap();
                atc.invalidate_range(pasid, range);
                prop_assert_eq!(overlapping(&atc, pasid, range), 0, "survived {:?}", range);
                // The other PASID's entries are not the range's.
                prop_assert_eq!(atc.lookup(pasid, Iova(start * PAGE_SIZE), false), Lookup::Miss);
            }
            // Whatever is still cached agrees with its table.
            for (p, model) in models.iter().enumerate() {
                for page in (WINDOW_BASE..WINDOW_BASE + WINDOW_PAGES).step_by(7) {
                    if let Lookup::Hit(t) = atc.lookup(Pasid(p as u32 + 1), Iova(page * PAGE_SIZE), false) {
                        let (frame, writable) = model.get(&page).copied().expect("stale hit");
                        prop_assert_eq!(t.gpa(Iova(page * PAGE_SIZE)), GuestAddress(frame * PAGE_SIZE));
                        prop_assert_eq!(t.writable, writable);
                    }
                }
            }
        }
    }
}

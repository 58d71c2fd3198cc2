//! The device's translation path: the PASIDs it knows, each with its page table, and the
//! shared ATC in front of them. Engines translate through [`Mmu::translate`].
//!
//! The `Mmu` is the only owner of the rule that keeps the ATC a cache of the page tables,
//! the rule of vm-memory's IOTLB and of the mmu notifiers: **a translation that is
//! restricted or removed is invalidated in the ATC before anyone can use it again; making
//! one more permissive needs no invalidation** (a write that finds a read-only cached copy
//! misses and walks the table again). Every change that can restrict goes through a method
//! here, which changes the table and drops the ATC's copies in the same `&mut self` call,
//! so no translation, ATC hit or walk, runs in between:
//!
//! - [`Mmu::map`] (and [`Mmu::map_pages`] for a MAP payload) replacing a present
//!   translation: its cached copies over the new leaf go. A restriction needs that; a
//!   widening does not, but the copies go too so the ATC stays an exact copy of the table
//!   (what the ATC counters have always shown). A 4 KiB map into a 2 MiB leaf splits it and
//!   drops the cached 2 MiB copy the same way.
//! - [`Mmu::update_range`]: an INVALIDATE's drop or downgrade, with any 2 MiB leaf split it
//!   needs, then per-block ATS requests over the range (or one whole-PASID invalidation).
//! - [`Mmu::unbind`] and [`Mmu::clear`]: every translation of the PASID, or of all.
//!
//! The page table's own operations that could restrict are visible to this module alone;
//! outside it a [`PageTable`] only grows or widens, and the ATC is read-only.

pub mod atc;
pub mod page_table;

use std::collections::BTreeMap;

use vm_memory::GuestAddress;

use crate::address::{Iova, IovaRange, Pasid, HUGE_PAGE_SIZE, PAGES_PER_HUGE_PAGE, PAGE_SIZE};
use crate::counters::GlobalCounters;
use crate::mmu::atc::{Atc, AtsInvalidation, Lookup};
use crate::mmu::page_table::{Changes, LeafSize, PageTable, PageTableError, RangeOp, Translation};

/// Errors of address-space management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmuError {
    /// The PASID is 0, above max_pasids, or not bound.
    #[error("{0} is not bound")]
    Unbound(Pasid),
    /// BIND of a PASID that is already bound, or outside 1..=max_pasids.
    #[error("{0} cannot be bound")]
    CannotBind(Pasid),
    /// The page table refused the change.
    #[error("{pasid}: {source}")]
    Table {
        /// The address space.
        pasid: Pasid,
        /// What the table said.
        #[source]
        source: PageTableError,
    },
}

/// One bound address space.
#[derive(Debug)]
pub struct AddressSpace {
    /// The device's page table for it. Through this field it can only grow or widen (see
    /// [`page_table`]); restricting it is the [`Mmu`]'s.
    pub table: PageTable,
    /// Guest-physical address of the process's top-level page table (for the oracle).
    pub process_root: GuestAddress,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// No translation, or a read-only one for a write: a device fault.
    Fault,
    /// The PASID is not bound (any more).
    Unbound,
}

/// One page of a MAP payload: the frame, and whether the device may write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMapping {
    /// The guest-physical frame (4 KiB aligned).
    pub frame: GuestAddress,
    /// Whether writes are allowed.
    pub writable: bool,
}

/// How the ATC forgets a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtcScope {
    /// With one ATS invalidation request per naturally aligned power-of-two block.
    Blocks,
    /// With one whole-PASID invalidation (every translation of the PASID goes).
    WholePasid,
}

/// What [`Mmu::update_range`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeUpdate {
    /// What changed in the page table.
    pub changes: Changes,
    /// What the ATC invalidation did (`requests` is 0 for a whole-PASID invalidation).
    pub atc: AtsInvalidation,
}

/// Address spaces and the ATC.
#[derive(Debug)]
pub struct Mmu {
    spaces: BTreeMap<Pasid, AddressSpace>,
    /// The translation cache shared by all PASIDs.
    atc: Atc,
    max_pasids: u32,
    max_table_nodes: usize,
}

impl Mmu {
    /// No address spaces; PASIDs `1..=max_pasids` may be bound.
    pub fn new(atc: Atc, max_pasids: u32, max_table_nodes: usize) -> Self {
        Mmu {
            spaces: BTreeMap::new(),
            atc,
            max_pasids,
            max_table_nodes,
        }
    }

    /// Creates the address space `pasid`.
    pub fn bind(&mut self, pasid: Pasid, process_root: GuestAddress) -> Result<(), MmuError> {
        if pasid.0 == 0 || pasid.0 > self.max_pasids || self.spaces.contains_key(&pasid) {
            return Err(MmuError::CannotBind(pasid));
        }
        self.spaces.insert(
            pasid,
            AddressSpace {
                table: PageTable::new(self.max_table_nodes),
                process_root,
            },
        );
        Ok(())
    }

    /// Destroys `pasid`: its cached translations, then its page table. Returns the
    /// translations dropped from the table.
    pub fn unbind(&mut self, pasid: Pasid) -> Result<u64, MmuError> {
        let mut space = self.spaces.remove(&pasid).ok_or(MmuError::Unbound(pasid))?;
        self.atc.invalidate_pasid(pasid);
        Ok(space.table.clear())
    }

    /// The bound address space `pasid`. Its table can only grow or widen through it
    /// (setup code such as the oracle benchmark's, `bench`, maps with it).
    pub fn space(&mut self, pasid: Pasid) -> Result<&mut AddressSpace, MmuError> {
        self.spaces.get_mut(&pasid).ok_or(MmuError::Unbound(pasid))
    }

    /// The page table of `pasid`, if bound.
    pub fn table(&self, pasid: Pasid) -> Option<&PageTable> {
        self.spaces.get(&pasid).map(|s| &s.table)
    }

    /// The ATC, to look at (only the MMU changes it).
    pub fn atc(&self) -> &Atc {
        &self.atc
    }

    /// Whether `pasid` is bound.
    pub fn is_bound(&self, pasid: Pasid) -> bool {
        self.spaces.contains_key(&pasid)
    }

    /// Drops every address space and cached translation.
    pub fn clear(&mut self) {
        self.spaces.clear();
        self.atc.clear();
    }

    /// Maps `iova` to `frame` in `pasid`'s table with one leaf of `size`, whatever was
    /// there. A translation it replaces loses its cached copies over the leaf in the same
    /// step (see the module doc). Nothing changes on error.
    pub fn map(
        &mut self,
        pasid: Pasid,
        iova: Iova,
        frame: GuestAddress,
        writable: bool,
        size: LeafSize,
    ) -> Result<Changes, MmuError> {
        let table_error = |source| MmuError::Table { pasid, source };
        let space = self
            .spaces
            .get_mut(&pasid)
            .ok_or(MmuError::Unbound(pasid))?;
        let change = space
            .table
            .change_of(iova, frame, writable, size)
            .map_err(table_error)?;
        let changes = space
            .table
            .set_leaf(iova, frame, writable, size)
            .map_err(table_error)?;
        if change.replaces() {
            let span = IovaRange::pages(iova.0, size.bytes())
                .map_err(|_| table_error(PageTableError::OutOfSpace(iova)))?;
            self.atc.invalidate_range(pasid, span);
        }
        Ok(changes)
    }

    /// Maps the pages of a MAP payload from `start`, one per 4 KiB page (`None` leaves the
    /// page as it is: a hole in a fault-ahead window). An aligned run of 512 pages that maps
    /// 512 contiguous, 2 MiB aligned frames with one permission becomes one 2 MiB leaf.
    /// `mapped` hears each page mapped. Returns the pages mapped, and why it stopped early
    /// (the pages before stay mapped).
    pub fn map_pages(
        &mut self,
        pasid: Pasid,
        start: Iova,
        pages: &[Option<PageMapping>],
        mapped: &mut dyn FnMut(Iova),
    ) -> (u64, Result<(), MmuError>) {
        let run = PAGES_PER_HUGE_PAGE as usize;
        let mut count = 0;
        let mut i = 0;
        while i < pages.len() {
            let va = Iova(start.0 + i as u64 * PAGE_SIZE);
            let huge = va.0.is_multiple_of(HUGE_PAGE_SIZE)
                && pages.len() - i >= run
                && is_huge_run(&pages[i..i + run]);
            let (size, n) = if huge {
                (LeafSize::Huge, PAGES_PER_HUGE_PAGE)
            } else {
                (LeafSize::Small, 1)
            };
            if let Some(p) = pages[i] {
                if let Err(e) = self.map(pasid, va, p.frame, p.writable, size) {
                    return (count, Err(e));
                }
                count += n;
                for k in 0..n {
                    mapped(Iova(va.0 + k * PAGE_SIZE));
                }
            }
            i += n as usize;
        }
        (count, Ok(()))
    }

    /// Drops or downgrades every translation of `pasid` in `range` (splitting a 2 MiB leaf
    /// the range only partly covers), then invalidates the ATC over the range, or the whole
    /// PASID. `changed` hears each table leaf that changed (its first address and size,
    /// after any split).
    pub fn update_range(
        &mut self,
        pasid: Pasid,
        range: IovaRange,
        op: RangeOp,
        scope: AtcScope,
        changed: &mut dyn FnMut(Iova, LeafSize),
    ) -> Result<RangeUpdate, MmuError> {
        let space = self
            .spaces
            .get_mut(&pasid)
            .ok_or(MmuError::Unbound(pasid))?;
        let changes = space.table.update_range(range, op, changed);
        let atc = match scope {
            AtcScope::Blocks => self.atc.invalidate_range(pasid, range),
            AtcScope::WholePasid => AtsInvalidation {
                requests: 0,
                dropped: self.atc.invalidate_pasid(pasid),
            },
        };
        Ok(RangeUpdate { changes, atc })
    }

    /// Translates `iova` for a read or a write: ATC first, then a page walk whose result
    /// is cached.
    pub fn translate(
        &mut self,
        pasid: Pasid,
        iova: Iova,
        write: bool,
        counters: &mut GlobalCounters,
    ) -> Result<GuestAddress, Miss> {
        self.translate_leaf(pasid, iova, write, counters)
            .map(|t| t.gpa(iova))
    }

    /// Like [`Mmu::translate`], but returns the whole leaf used (the oracle reports its
    /// permission too).
    pub fn translate_leaf(
        &mut self,
        pasid: Pasid,
        iova: Iova,
        write: bool,
        counters: &mut GlobalCounters,
    ) -> Result<Translation, Miss> {
        if let Lookup::Hit(t) = self.atc.lookup(pasid, iova, write) {
            counters.atc_hits += 1;
            return Ok(t);
        }
        counters.atc_misses += 1;
        let space = self.spaces.get(&pasid).ok_or(Miss::Unbound)?;
        counters.page_walks += 1;
        let t = space.table.translate(iova).ok_or(Miss::Fault)?;
        // A write that finds a read-only translation is an ordinary device fault (the
        // driver upgrades it); `violations` counts only what the coherence oracle finds.
        if write && !t.writable {
            counters.permission_faults += 1;
            return Err(Miss::Fault);
        }
        self.atc.insert(pasid, t);
        Ok(t)
    }

    /// Calls `f` with every translation `pasid` holds: its ATC entries, then its page-table
    /// leaves (a cached translation is seen twice, once in each). Nothing if not bound.
    pub fn for_each_translation(&self, pasid: Pasid, f: &mut dyn FnMut(Translation)) {
        let Some(space) = self.spaces.get(&pasid) else {
            return;
        };
        self.atc.entries(pasid).for_each(&mut *f);
        space.table.for_each_leaf(f);
    }

    /// The process's CPU page-table root given at BIND, if `pasid` is bound.
    pub fn process_root(&self, pasid: Pasid) -> Option<GuestAddress> {
        self.spaces.get(&pasid).map(|s| s.process_root)
    }

    /// Drops the table's translations in `range` but keeps the ATC's copies: the broken
    /// state the rule forbids, made on purpose so the audit's tests have a stale copy to
    /// find.
    #[cfg(test)]
    pub(crate) fn make_stale(&mut self, pasid: Pasid, range: IovaRange) {
        if let Some(space) = self.spaces.get_mut(&pasid) {
            space
                .table
                .update_range(range, RangeOp::Drop, &mut |_, _| {});
        }
    }
}

/// An MMU for unit tests: a 64-entry, 8-way ATC, PASIDs 1..=4 of 64 table nodes each, and
/// `pasids` bound without a CPU page table.
#[cfg(test)]
pub(crate) fn test_mmu(pasids: &[u32]) -> Mmu {
    let mut mmu = Mmu::new(Atc::new(64, 8).unwrap(), 4, 64);
    for &p in pasids {
        mmu.bind(Pasid(p), GuestAddress(0)).unwrap();
    }
    mmu
}

/// Whether 512 pages describe one 2 MiB leaf: all mapped, one permission, and contiguous
/// frames starting 2 MiB aligned.
fn is_huge_run(pages: &[Option<PageMapping>]) -> bool {
    let Some(first) = pages[0] else {
        return false;
    };
    first.frame.0.is_multiple_of(HUGE_PAGE_SIZE)
        && pages.iter().enumerate().all(|(k, p)| {
            p.is_some_and(|p| {
                p.writable == first.writable && p.frame.0 == first.frame.0 + k as u64 * PAGE_SIZE
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mmu() -> Mmu {
        Mmu::new(Atc::new(16, 4).unwrap(), 4, 64)
    }

    #[test]
    fn bind_rules() {
        let mut m = mmu();
        assert_eq!(
            m.bind(Pasid(0), GuestAddress(0)),
            Err(MmuError::CannotBind(Pasid(0)))
        );
        assert_eq!(
            m.bind(Pasid(5), GuestAddress(0)),
            Err(MmuError::CannotBind(Pasid(5)))
        );
        m.bind(Pasid(4), GuestAddress(0x1000)).unwrap();
        assert_eq!(
            m.bind(Pasid(4), GuestAddress(0)),
            Err(MmuError::CannotBind(Pasid(4)))
        );
        assert_eq!(
            m.space(Pasid(4)).unwrap().process_root,
            GuestAddress(0x1000)
        );
        assert_eq!(m.unbind(Pasid(3)), Err(MmuError::Unbound(Pasid(3))));
        assert_eq!(m.unbind(Pasid(4)), Ok(0));
        assert!(!m.is_bound(Pasid(4)));
    }

    #[test]
    fn translate_walks_once_then_hits() {
        let mut m = mmu();
        let mut c = GlobalCounters::default();
        m.bind(Pasid(1), GuestAddress(0)).unwrap();
        assert_eq!(
            m.translate(Pasid(1), Iova(0x1000), false, &mut c),
            Err(Miss::Fault)
        );
        m.space(Pasid(1))
            .unwrap()
            .table
            .map_page(Iova(0x1000), GuestAddress(0x9000), false)
            .unwrap();
        assert_eq!(
            m.translate(Pasid(1), Iova(0x1008), false, &mut c),
            Ok(GuestAddress(0x9008))
        );
        assert_eq!(
            m.translate(Pasid(1), Iova(0x1010), false, &mut c),
            Ok(GuestAddress(0x9010))
        );
        assert_eq!((c.atc_hits, c.atc_misses, c.page_walks), (1, 2, 2));
        // A write to a read-only page is a permission fault (not an oracle violation).
        assert_eq!(
            m.translate(Pasid(1), Iova(0x1000), true, &mut c),
            Err(Miss::Fault)
        );
        assert_eq!(c.permission_faults, 1);
        assert_eq!(c.violations, 0);
        assert_eq!(m.process_root(Pasid(1)), Some(GuestAddress(0)));
        // Unbinding drops the translations, cached ones too.
        assert_eq!(m.unbind(Pasid(1)), Ok(1));
        assert_eq!(
            m.translate(Pasid(1), Iova(0x1000), false, &mut c),
            Err(Miss::Unbound)
        );
    }
}

/// The rule the `Mmu` owns: whatever it is asked to do, the ATC never holds a translation
/// the page table does not, nor a writable copy of a read-only one.
#[cfg(test)]
mod atc_rule {
    use proptest::prelude::*;

    use super::*;
    use crate::mmu::page_table::properties::{op, Op, WINDOW_BASE, WINDOW_PAGES};

    const MB2: u64 = HUGE_PAGE_SIZE;

    /// The first cached copy of `pasid` that its table no longer backs, if any: another
    /// frame (or none) on some page it covers, or write permission the table took away.
    fn stale_copy(mmu: &Mmu, pasid: Pasid) -> Option<(Translation, Iova)> {
        let table = mmu.table(pasid);
        mmu.atc.entries(pasid).find_map(|t| {
            (t.base.0..t.base.0 + t.size.bytes())
                .step_by(PAGE_SIZE as usize)
                .map(Iova)
                .find(|&page| {
                    !table.and_then(|tb| tb.translate(page)).is_some_and(|now| {
                        now.gpa(page) == t.gpa(page) && (now.writable || !t.writable)
                    })
                })
                .map(|page| (t, page))
        })
    }

    fn mmu() -> Mmu {
        let mut m = Mmu::new(Atc::new(64, 4).unwrap(), 2, 64);
        m.bind(Pasid(1), GuestAddress(0)).unwrap();
        m
    }

    /// Reads `va` through the MMU, which caches the translation it walks to.
    fn cache(m: &mut Mmu, va: u64) -> Translation {
        let mut c = GlobalCounters::default();
        m.translate_leaf(Pasid(1), Iova(va), false, &mut c).unwrap()
    }

    fn small(m: &mut Mmu, va: u64, frame: u64, writable: bool) {
        m.map(
            Pasid(1),
            Iova(va),
            GuestAddress(frame),
            writable,
            LeafSize::Small,
        )
        .unwrap();
    }

    fn range(start: u64, len: u64) -> IovaRange {
        IovaRange::pages(start, len).unwrap()
    }

    #[test]
    fn every_restriction_invalidates_the_atc() {
        let mut m = mmu();
        // MAP of another frame, and MAP read-only over a writable page.
        small(&mut m, 0x1000, 0x5000, true);
        small(&mut m, 0x2000, 0x6000, true);
        cache(&mut m, 0x1000);
        cache(&mut m, 0x2000);
        small(&mut m, 0x1000, 0x7000, true);
        small(&mut m, 0x2000, 0x6000, false);
        assert_eq!(stale_copy(&m, Pasid(1)), None);
        assert_eq!(cache(&mut m, 0x1000).frame, GuestAddress(0x7000));
        assert!(!cache(&mut m, 0x2000).writable);

        // A 2 MiB leaf over cached 4 KiB pages of other frames, whose first page has no
        // translation: every page under the new leaf counts, not just its first.
        small(&mut m, MB2 + 0x3000, 0x9000, true);
        cache(&mut m, MB2 + 0x3000);
        m.map(
            Pasid(1),
            Iova(MB2),
            GuestAddress(2 * MB2),
            true,
            LeafSize::Huge,
        )
        .unwrap();
        assert_eq!(stale_copy(&m, Pasid(1)), None);
        assert_eq!(cache(&mut m, MB2 + 0x3000).size, LeafSize::Huge);

        // A 4 KiB map into the cached 2 MiB leaf, with its own frame, splits it.
        small(&mut m, MB2 + 0x5000, 0xa000, true);
        assert_eq!(stale_copy(&m, Pasid(1)), None);
        assert_eq!(cache(&mut m, MB2 + 0x5000).frame, GuestAddress(0xa000));

        // A MAP payload: a whole run with a new frame, next to a hole.
        cache(&mut m, MB2);
        let mut pages: Vec<Option<PageMapping>> = (0..PAGES_PER_HUGE_PAGE)
            .map(|i| {
                Some(PageMapping {
                    frame: GuestAddress(4 * MB2 + i * PAGE_SIZE),
                    writable: false,
                })
            })
            .collect();
        pages.push(None);
        let mut seen = 0;
        let (n, r) = m.map_pages(Pasid(1), Iova(MB2), &pages, &mut |_| seen += 1);
        assert_eq!(
            (n, r, seen),
            (PAGES_PER_HUGE_PAGE, Ok(()), PAGES_PER_HUGE_PAGE)
        );
        assert_eq!(stale_copy(&m, Pasid(1)), None);

        // A downgrade, and a drop that splits a cached 2 MiB leaf.
        cache(&mut m, MB2 + 0x1000);
        small(&mut m, 0x3000, 0xb000, true);
        cache(&mut m, 0x3000);
        let up = m
            .update_range(
                Pasid(1),
                range(0x3000, 0x1000),
                RangeOp::Downgrade,
                AtcScope::Blocks,
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(up.atc.dropped, 1);
        let up = m
            .update_range(
                Pasid(1),
                range(MB2 + 0x8000, 0x1000),
                RangeOp::Drop,
                AtcScope::Blocks,
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!((up.changes.splits, up.atc.dropped), (1, 1));
        assert_eq!(stale_copy(&m, Pasid(1)), None);

        // A whole-PASID invalidation, and UNBIND: nothing of the PASID stays cached, and a
        // rebound PASID starts empty.
        cache(&mut m, 0x1000);
        m.update_range(
            Pasid(1),
            range(0, 0x2000),
            RangeOp::Drop,
            AtcScope::WholePasid,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(m.atc.entries(Pasid(1)).count(), 0);
        cache(&mut m, 0x2000);
        m.unbind(Pasid(1)).unwrap();
        assert_eq!(m.atc.entries(Pasid(1)).count(), 0);
        m.bind(Pasid(1), GuestAddress(0)).unwrap();
        let mut c = GlobalCounters::default();
        assert_eq!(
            m.translate(Pasid(1), Iova(0x2000), false, &mut c),
            Err(Miss::Fault)
        );
    }

    #[test]
    fn widening_needs_no_invalidation_and_growing_tables_cannot_restrict() {
        let mut m = mmu();
        small(&mut m, 0x1000, 0x5000, false);
        cache(&mut m, 0x1000);
        // What may only grow or widen goes through the table directly...
        let t = &mut m.space(Pasid(1)).unwrap().table;
        t.map_page(Iova(0x1000), GuestAddress(0x5000), true)
            .unwrap();
        t.map_page(Iova(0x2000), GuestAddress(0x6000), true)
            .unwrap();
        // ...and leaves the ATC a cache: a read-only copy of a page now writable is
        // narrower than the table, and a write through it misses and walks again.
        assert_eq!(stale_copy(&m, Pasid(1)), None);
        let mut c = GlobalCounters::default();
        assert_eq!(
            m.translate(Pasid(1), Iova(0x1000), true, &mut c),
            Ok(GuestAddress(0x5000))
        );
        assert_eq!((c.atc_misses, c.page_walks), (1, 1));
        // A restriction through the table alone is refused.
        let t = &mut m.space(Pasid(1)).unwrap().table;
        assert_eq!(
            t.map_page(Iova(0x1000), GuestAddress(0x5000), false),
            Err(PageTableError::Restricts(Iova(0x1000)))
        );
        assert_eq!(
            m.map(Pasid(2), Iova(0), GuestAddress(0), true, LeafSize::Small),
            Err(MmuError::Unbound(Pasid(2)))
        );
        assert!(matches!(
            m.map(
                Pasid(1),
                Iova(0x1001),
                GuestAddress(0),
                true,
                LeafSize::Small
            ),
            Err(MmuError::Table { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Random maps (4 KiB and 2 MiB, any frame and permission), drops, downgrades and
        /// reads and writes that fill a small ATC, on two PASIDs, with an UNBIND now and
        /// then: after every step no cached copy is stale.
        #[test]
        fn no_step_leaves_a_stale_atc_copy(
            ops in prop::collection::vec((1..=2u32, op(), any::<bool>(), 0..40u32), 1..24),
        ) {
            let mut m = Mmu::new(Atc::new(16, 4).unwrap(), 2, 64);
            m.bind(Pasid(1), GuestAddress(0)).unwrap();
            m.bind(Pasid(2), GuestAddress(0)).unwrap();
            let mut c = GlobalCounters::default();
            for (pasid, op, flag, dice) in &ops {
                let pasid = Pasid(*pasid);
                let page = |p: u64| Iova((WINDOW_BASE + p) * PAGE_SIZE);
                match *op {
                    Op::Map { page: p, frame, writable } => {
                        m.map(pasid, page(p), GuestAddress(frame * PAGE_SIZE), writable, LeafSize::Small)
                            .unwrap();
                    }
                    Op::MapHuge { run, frame_run, writable } => {
                        let va = page(run * PAGES_PER_HUGE_PAGE);
                        let frame = GuestAddress(frame_run * HUGE_PAGE_SIZE);
                        m.map(pasid, va, frame, writable, LeafSize::Huge).unwrap();
                    }
                    Op::Update { page: p, pages, downgrade } => {
                        let end = (p + pages).min(WINDOW_PAGES);
                        let r = IovaRange::pages(page(p).0, (end - p) * PAGE_SIZE).unwrap();
                        let op = if downgrade { RangeOp::Downgrade } else { RangeOp::Drop };
                        let scope = if *dice == 0 { AtcScope::WholePasid } else { AtcScope::Blocks };
                        m.update_range(pasid, r, op, scope, &mut |_, _| {}).unwrap();
                    }
                    Op::Translate { page: p, offset } => {
                        let _ = m.translate(pasid, Iova(page(p).0 + offset), *flag, &mut c);
                    }
                }
                if *dice == 1 {
                    m.unbind(pasid).unwrap();
                    m.bind(pasid, GuestAddress(0)).unwrap();
                }
                for p in [Pasid(1), Pasid(2)] {
                    prop_assert_eq!(stale_copy(&m, p), None, "after {:?} on {}", op, pasid);
                }
            }
        }
    }
}

//! Applying an invalidation: the page-table change and the ATS invalidation through the
//! [`Mmu`], the refault log, and the per-event counters.

use super::{Invalidation, InvalidationDone};
use crate::address::PAGE_SIZE;
use crate::counters::Counters;
use crate::fault::RefaultLog;
use crate::mmu::page_table::RangeOp;
use crate::mmu::{AtcScope, Mmu, MmuError};

/// Applies `inv` through the MMU, which changes the page table and invalidates the ATC in
/// one step, so no translation after this can see the old one; then counts it for its event.
pub fn apply(
    mmu: &mut Mmu,
    log: &mut RefaultLog,
    counters: &mut Counters,
    inv: &Invalidation,
) -> Result<InvalidationDone, MmuError> {
    let op = if inv.downgrade {
        RangeOp::Downgrade
    } else {
        RangeOp::Drop
    };
    let scope = if inv.whole_pasid {
        AtcScope::WholePasid
    } else {
        AtcScope::Blocks
    };
    let done = mmu.update_range(inv.pasid, inv.range, op, scope, &mut |base, size| {
        log.record(inv.pasid, base, size, inv.event)
    })?;
    let (changes, ats_requests, dropped) = (done.changes, done.atc.requests, done.atc.dropped);
    let whole_pasid = u64::from(inv.whole_pasid);
    let pages = inv.range.len() / PAGE_SIZE;
    let e = counters.event(inv.event);
    e.notifications += 1;
    e.ats_invalidations += ats_requests;
    e.pasid_invalidations += whole_pasid;
    e.pages_invalidated += pages;
    e.atc_entries_dropped += dropped;
    e.leaf_splits += changes.splits;
    if inv.downgrade {
        e.downgrades += 1;
    }
    if dropped == 0 && changes.ptes == 0 {
        e.useless_invalidations += 1;
    }
    Ok(InvalidationDone {
        ats_requests,
        pages,
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::address::{Iova, IovaRange, Pasid, HUGE_PAGE_SIZE, VA_LIMIT};
    use crate::counters::GlobalCounters;
    use crate::invalidate::parse;
    use crate::mmu::page_table::LeafSize;
    use crate::mmu::test_mmu;
    use crate::wire;
    use crate::wire::event;

    struct Rig {
        mmu: Mmu,
        log: RefaultLog,
        c: Counters,
    }

    fn rig() -> Rig {
        Rig {
            mmu: test_mmu(&[1]),
            log: RefaultLog::new(4096),
            c: Counters::default(),
        }
    }

    impl Rig {
        fn map(&mut self, page: u64, writable: bool) {
            let va = Iova(page * PAGE_SIZE);
            let frame = GuestAddress(page * PAGE_SIZE);
            self.mmu
                .map(Pasid(1), va, frame, writable, LeafSize::Small)
                .unwrap();
        }

        fn touch(&mut self, page: u64) {
            let mut g = GlobalCounters::default();
            self.mmu
                .translate(Pasid(1), Iova(page * PAGE_SIZE), false, &mut g)
                .unwrap();
        }

        fn inv(&mut self, start: u64, len: u64, event: u32, downgrade: bool) -> InvalidationDone {
            let inv = Invalidation {
                pasid: Pasid(1),
                range: IovaRange::pages(start, len).unwrap(),
                event,
                downgrade,
                whole_pasid: start == 0 && len == VA_LIMIT,
            };
            apply(&mut self.mmu, &mut self.log, &mut self.c, &inv).unwrap()
        }
    }

    #[test]
    fn drop_counts_requests_pages_and_entries() {
        let mut r = rig();
        for p in 1..4 {
            r.map(p, true);
            r.touch(p);
        }
        // Pages 1..4 = [1] [2,3]: two requests, three entries.
        let done = r.inv(0x1000, 0x3000, event::UNMAP, false);
        assert_eq!(
            done,
            InvalidationDone {
                ats_requests: 2,
                pages: 3
            }
        );
        let e = r.c.events[event::UNMAP as usize];
        assert_eq!(
            (e.notifications, e.ats_invalidations, e.pages_invalidated),
            (1, 2, 3)
        );
        assert_eq!((e.atc_entries_dropped, e.useless_invalidations), (3, 0));
        assert_eq!(r.log.len(), 3);
        // The same again is useless.
        r.inv(0x1000, 0x3000, event::UNMAP, false);
        assert_eq!(r.c.events[0].useless_invalidations, 1);
        assert_eq!(r.c.events[0].notifications, 2);
    }

    #[test]
    fn a_pte_change_alone_is_not_useless() {
        let mut r = rig();
        r.map(7, true);
        r.inv(0x7000, 0x1000, event::CLEAR, false);
        let e = r.c.events[event::CLEAR as usize];
        assert_eq!((e.atc_entries_dropped, e.useless_invalidations), (0, 0));
        assert_eq!(r.log.take(Pasid(1), Iova(0x7000)), Some(event::CLEAR));
        assert_eq!(r.log.take(Pasid(1), Iova(0x7000)), None);
    }

    #[test]
    fn downgrade_keeps_read_and_counts() {
        let mut r = rig();
        r.map(2, true);
        r.touch(2);
        r.inv(0x2000, 0x1000, event::SOFT_DIRTY, true);
        let e = r.c.events[event::SOFT_DIRTY as usize];
        assert_eq!((e.downgrades, e.atc_entries_dropped), (1, 1));
        let mut g = GlobalCounters::default();
        assert!(r
            .mmu
            .translate(Pasid(1), Iova(0x2000), false, &mut g)
            .is_ok());
        assert!(r
            .mmu
            .translate(Pasid(1), Iova(0x2000), true, &mut g)
            .is_err());
    }

    #[test]
    fn partial_huge_invalidation_splits_and_whole_space_is_one_pasid_invalidation() {
        let mut r = rig();
        r.mmu
            .map(
                Pasid(1),
                Iova(HUGE_PAGE_SIZE),
                GuestAddress(0),
                true,
                LeafSize::Huge,
            )
            .unwrap();
        r.inv(HUGE_PAGE_SIZE, 0x1000, event::PROTECTION_VMA, true);
        assert_eq!(r.c.events[event::PROTECTION_VMA as usize].leaf_splits, 1);
        let done = r.inv(0, VA_LIMIT, event::RELEASE, false);
        assert_eq!(done.ats_requests, 0);
        let e = r.c.events[event::RELEASE as usize];
        assert_eq!((e.pasid_invalidations, e.ats_invalidations), (1, 0));
        assert_eq!(e.pages_invalidated, VA_LIMIT / PAGE_SIZE);
        // The 512 pages of the split leaf are remembered for refault counting.
        assert_eq!(r.log.len(), 512);
        r.log.forget_pasid(Pasid(1));
        assert!(r.log.is_empty());
    }

    #[test]
    fn an_unknown_pasid_is_refused() {
        let mut r = rig();
        let inv = Invalidation {
            pasid: Pasid(2),
            range: IovaRange::pages(0, 0x1000).unwrap(),
            event: 0,
            downgrade: false,
            whole_pasid: false,
        };
        assert_eq!(
            apply(&mut r.mmu, &mut r.log, &mut r.c, &inv),
            Err(MmuError::Unbound(Pasid(2)))
        );
    }

    #[test]
    fn above_the_threshold_one_pasid_invalidation_replaces_the_requests() {
        let mut r = rig();
        for p in [1, 0x300] {
            r.map(p, true);
            r.touch(p);
        }
        let cmd = wire::Cmd {
            pasid: 1,
            start: 0x1000,
            length: 0x40_0000,
            event: event::UNMAP,
            ..Default::default()
        };
        let inv = parse(&cmd, 1 << 20).unwrap();
        let done = apply(&mut r.mmu, &mut r.log, &mut r.c, &inv).unwrap();
        assert_eq!(done.ats_requests, 0);
        let e = r.c.events[event::UNMAP as usize];
        assert_eq!((e.pasid_invalidations, e.ats_invalidations), (1, 0));
        assert_eq!(e.atc_entries_dropped, 2);
        assert!(r.mmu.atc().is_empty());
    }
}

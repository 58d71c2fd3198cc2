//! The device's translation path: the PASIDs it knows, each with its page table, and the
//! shared ATC in front of them. Engines translate through [`Mmu::translate`].

pub mod atc;
pub mod page_table;

use std::collections::BTreeMap;

use vm_memory::GuestAddress;

use crate::address::{Iova, Pasid};
use crate::counters::GlobalCounters;
use crate::mmu::atc::{Atc, Lookup};
use crate::mmu::page_table::{PageTable, Translation};

/// Errors of address-space management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmuError {
    /// The PASID is 0, above max_pasids, or not bound.
    #[error("{0} is not bound")]
    Unbound(Pasid),
    /// BIND of a PASID that is already bound, or outside 1..=max_pasids.
    #[error("{0} cannot be bound")]
    CannotBind(Pasid),
}

/// One bound address space.
#[derive(Debug)]
pub struct AddressSpace {
    /// The device's page table for it.
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

/// Address spaces and the ATC.
#[derive(Debug)]
pub struct Mmu {
    spaces: BTreeMap<Pasid, AddressSpace>,
    /// The translation cache shared by all PASIDs.
    pub atc: Atc,
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

    /// Destroys `pasid`; returns the translations dropped from its page table.
    pub fn unbind(&mut self, pasid: Pasid) -> Result<u64, MmuError> {
        let mut space = self.spaces.remove(&pasid).ok_or(MmuError::Unbound(pasid))?;
        self.atc.invalidate_pasid(pasid);
        Ok(space.table.clear())
    }

    /// The bound address space `pasid`.
    pub fn space(&mut self, pasid: Pasid) -> Result<&mut AddressSpace, MmuError> {
        self.spaces.get_mut(&pasid).ok_or(MmuError::Unbound(pasid))
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

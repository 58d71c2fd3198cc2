//! The refault log: which invalidation event last removed the translation of each page, so
//! that a later device fault on the page counts as a refault of that event (SPEC.md,
//! `refaults`).

use std::collections::HashMap;

use crate::address::{Iova, Pasid, PAGE_SIZE};
use crate::mmu::page_table::LeafSize;

/// Which event last removed the translation of a page, per (PASID, page number).
#[derive(Debug, Default)]
pub struct RefaultLog {
    removed: HashMap<(Pasid, u64), u32>,
    capacity: usize,
}

impl RefaultLog {
    /// A log of at most `capacity` pages; pages past it are not remembered.
    pub fn new(capacity: usize) -> Self {
        RefaultLog {
            removed: HashMap::new(),
            capacity,
        }
    }

    /// Remembers that an invalidation of `event` removed (or downgraded) the leaf at
    /// `base` of `size`: each of its pages.
    pub fn record(&mut self, pasid: Pasid, base: Iova, size: LeafSize, event: u32) {
        for page in (0..size.bytes()).step_by(PAGE_SIZE as usize) {
            let key = (pasid, Iova(base.0 + page).page_number());
            if self.removed.len() >= self.capacity && !self.removed.contains_key(&key) {
                log::debug!("vgpu: removal log full, refaults are undercounted");
                return;
            }
            self.removed.insert(key, event);
        }
    }

    /// The page was mapped again: a later fault on it is not a refault.
    pub fn forget(&mut self, pasid: Pasid, page: Iova) {
        self.removed.remove(&(pasid, page.page_number()));
    }

    /// Takes the event that removed `page`'s translation, if one did.
    pub fn take(&mut self, pasid: Pasid, page: Iova) -> Option<u32> {
        self.removed.remove(&(pasid, page.page_number()))
    }

    /// Forgets everything about `pasid`.
    pub fn forget_pasid(&mut self, pasid: Pasid) {
        self.removed.retain(|(p, _), _| *p != pasid);
    }

    /// Pages remembered.
    pub fn len(&self) -> usize {
        self.removed.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded() {
        let mut log = RefaultLog::new(2);
        log.record(Pasid(1), Iova(0), LeafSize::Huge, 0);
        assert_eq!(log.len(), 2);
        log.forget(Pasid(1), Iova(0));
        assert_eq!(log.len(), 1);
    }
}

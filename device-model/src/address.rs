//! The device's address spaces and the types that keep them apart: a [`Pasid`] names an
//! address space, an [`Iova`] is a device virtual address inside one, and a guest-physical
//! address is vm-memory's `GuestAddress`.

use std::fmt;

/// Bytes in a small page (and a 4 KiB leaf).
pub const PAGE_SIZE: u64 = 4096;
/// Bits of the offset in a small page.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in a 2 MiB leaf.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// Small pages in a 2 MiB leaf.
pub const PAGES_PER_HUGE_PAGE: u64 = HUGE_PAGE_SIZE / PAGE_SIZE;
/// Size of a device virtual address space: 4 levels of 9 bits above the page offset.
pub const VA_LIMIT: u64 = 1 << 47;

/// An address-space id. Valid PASIDs are `1..=max_pasids`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pasid(pub u32);

impl fmt::Display for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pasid {}", self.0)
    }
}

/// A device virtual address (I/O virtual address) inside one PASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl Iova {
    /// The start of the small page holding this address.
    pub fn page_base(self) -> Iova {
        Iova(self.0 & !(PAGE_SIZE - 1))
    }

    /// The byte offset inside the small page.
    pub fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }

    /// The small-page number.
    pub fn page_number(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iova {:#x}", self.0)
    }
}

/// A byte range `[start, end)` of device virtual addresses, known to lie below [`VA_LIMIT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Why a guest-supplied range was refused.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// The range has no bytes.
    #[error("empty range")]
    Empty,
    /// Start or length is not a multiple of the page size.
    #[error("range {start:#x}+{length:#x} is not page aligned")]
    Unaligned {
        /// Range start.
        start: u64,
        /// Range length.
        length: u64,
    },
    /// `start + length` overflows or passes the end of the address space.
    #[error("range {start:#x}+{length:#x} leaves the 2^47 address space")]
    OutOfSpace {
        /// Range start.
        start: u64,
        /// Range length.
        length: u64,
    },
}

impl IovaRange {
    /// A range of any alignment: nonempty, no overflow, below [`VA_LIMIT`].
    pub fn new(start: u64, length: u64) -> Result<Self, RangeError> {
        if length == 0 {
            return Err(RangeError::Empty);
        }
        match start.checked_add(length) {
            Some(end) if end <= VA_LIMIT => Ok(IovaRange { start, end }),
            _ => Err(RangeError::OutOfSpace { start, length }),
        }
    }

    /// A page-aligned range ("range" in SPEC.md).
    pub fn pages(start: u64, length: u64) -> Result<Self, RangeError> {
        if !start.is_multiple_of(PAGE_SIZE) || !length.is_multiple_of(PAGE_SIZE) {
            return Err(RangeError::Unaligned { start, length });
        }
        Self::new(start, length)
    }

    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty (never, for a validated range).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether the range covers the whole address space.
    pub fn is_everything(&self) -> bool {
        self.start == 0 && self.end == VA_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_validated() {
        assert_eq!(IovaRange::pages(0, 0), Err(RangeError::Empty));
        assert!(matches!(
            IovaRange::pages(1, 4096),
            Err(RangeError::Unaligned { .. })
        ));
        assert!(matches!(
            IovaRange::pages(0, 4095),
            Err(RangeError::Unaligned { .. })
        ));
        assert!(matches!(
            IovaRange::pages(!0xfff, 4096),
            Err(RangeError::OutOfSpace { .. })
        ));
        assert!(matches!(
            IovaRange::pages(VA_LIMIT - 4096, 8192),
            Err(RangeError::OutOfSpace { .. })
        ));
        let r = IovaRange::pages(VA_LIMIT - 4096, 4096).unwrap();
        assert_eq!(r.len(), 4096);
        assert!(IovaRange::pages(0, VA_LIMIT).unwrap().is_everything());
        assert_eq!(
            IovaRange::new(3, 5).unwrap(),
            IovaRange { start: 3, end: 8 }
        );
    }

    #[test]
    fn iova_helpers() {
        let a = Iova(0x12345);
        assert_eq!(a.page_base(), Iova(0x12000));
        assert_eq!(a.page_offset(), 0x345);
        assert_eq!(a.page_number(), 0x12);
    }
}

//! The device's IOMMU page table of one PASID: a 4-level radix table, 9 bits per level,
//! with 4 KiB leaves at level 0 and 2 MiB leaves at level 1.
//!
//! The table lives in device memory (host memory of the VMM), so its size is bounded by a
//! node budget rather than by guest RAM. Every operation reports how many leaf entries it
//! changed, so callers can tell useless invalidations from useful ones.
//!
//! The ATC caches these translations, so only the [`Mmu`](super::Mmu) may restrict or
//! remove one: the operations that can (replacing a leaf, dropping or downgrading a range,
//! clearing the table) are visible to the `mmu` module alone. Outside it a table only grows
//! or widens ([`PageTable::map_page`], [`PageTable::map_huge`]), which needs no ATC
//! invalidation.

use vm_memory::GuestAddress;

use crate::address::{Iova, IovaRange, HUGE_PAGE_SIZE, PAGE_SHIFT, PAGE_SIZE, VA_LIMIT};

/// Levels of the table; level 3 is the root, level 0 holds 4 KiB leaves.
const LEVELS: u32 = 4;
/// Index bits per level.
const BITS_PER_LEVEL: u32 = 9;
/// Entries per node.
const ENTRIES: usize = 1 << BITS_PER_LEVEL;
/// The level whose leaves are 2 MiB.
const HUGE_LEVEL: u32 = 1;

/// Errors of page-table updates.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageTableError {
    /// The table reached its node budget.
    #[error("page table is full ({0} nodes)")]
    OutOfNodes(usize),
    /// The address or frame is not aligned to the leaf size.
    #[error("{iova} / gpa {gpa:#x} not aligned to the leaf size")]
    Unaligned {
        /// The virtual address.
        iova: Iova,
        /// The guest-physical frame.
        gpa: u64,
    },
    /// The address is beyond the 2^47 address space.
    #[error("{0} is outside the address space")]
    OutOfSpace(Iova),
    /// The new leaf would take a frame or write permission away from a translation already
    /// there: only the MMU may do that, because the ATC may hold a copy.
    #[error("mapping {0} would restrict a translation the ATC may cache")]
    Restricts(Iova),
}

/// A leaf entry: valid, read and write bits and the guest-physical frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte(u64);

impl Pte {
    const VALID: u64 = 1 << 0;
    const READ: u64 = 1 << 1;
    const WRITE: u64 = 1 << 2;
    const FRAME_MASK: u64 = ((1 << 52) - 1) & !(PAGE_SIZE - 1);

    /// A valid, readable leaf for `frame`, writable if asked.
    pub fn new(frame: GuestAddress, writable: bool) -> Pte {
        let w = if writable { Self::WRITE } else { 0 };
        Pte((frame.0 & Self::FRAME_MASK) | Self::VALID | Self::READ | w)
    }

    /// The guest-physical frame the leaf maps.
    pub fn frame(self) -> GuestAddress {
        GuestAddress(self.0 & Self::FRAME_MASK)
    }

    /// Whether the valid bit is set.
    pub fn is_valid(self) -> bool {
        self.0 & Self::VALID != 0
    }

    /// Whether writes are allowed.
    pub fn is_writable(self) -> bool {
        self.0 & Self::WRITE != 0
    }

    fn read_only(self) -> Pte {
        Pte(self.0 & !Self::WRITE)
    }
}

/// Size of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeafSize {
    /// 4 KiB.
    Small,
    /// 2 MiB.
    Huge,
}

impl LeafSize {
    /// Bytes covered by the leaf.
    pub fn bytes(self) -> u64 {
        match self {
            LeafSize::Small => PAGE_SIZE,
            LeafSize::Huge => HUGE_PAGE_SIZE,
        }
    }
}

/// The result of a successful walk: the leaf that maps an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// First virtual address the leaf maps.
    pub base: Iova,
    /// Guest-physical address of `base`.
    pub frame: GuestAddress,
    /// The leaf's size.
    pub size: LeafSize,
    /// Whether writes are allowed.
    pub writable: bool,
}

impl Translation {
    /// The translation held by `pte`, a leaf at `level` whose first address is `base`.
    fn of_leaf(level: u32, base: u64, pte: Pte) -> Translation {
        Translation {
            base: Iova(base),
            frame: pte.frame(),
            size: leaf_size(level),
            writable: pte.is_writable(),
        }
    }

    /// The bytes the leaf maps.
    pub fn range(&self) -> IovaRange {
        IovaRange {
            start: self.base.0,
            end: self.base.0 + self.size.bytes(),
        }
    }

    /// Whether the leaf maps `iova`.
    pub fn covers(&self, iova: Iova) -> bool {
        iova.0 >= self.base.0 && iova.0 - self.base.0 < self.size.bytes()
    }

    /// The guest-physical address of `iova`, which must be covered.
    pub fn gpa(&self, iova: Iova) -> GuestAddress {
        GuestAddress(self.frame.0 + (iova.0 - self.base.0))
    }
}

/// How a new leaf would change the translations of the pages it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafChange {
    /// The same leaf is already there: nothing changes.
    Same,
    /// No page it covers has a translation: it only adds.
    Adds,
    /// Every page it covers that has a translation keeps its frame and loses no permission
    /// (it may gain write permission, or be held by a leaf of another size).
    Widens,
    /// Some page it covers would map another frame or lose write permission.
    Restricts,
}

impl LeafChange {
    /// Whether a translation already there changes (a cached copy of it is then out of date:
    /// wrong if the change restricts, merely narrower than the table if it widens).
    pub fn replaces(self) -> bool {
        matches!(self, LeafChange::Widens | LeafChange::Restricts)
    }
}

/// What an update changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Leaf entries written, cleared or downgraded.
    pub ptes: u64,
    /// 2 MiB leaves split into 512 4 KiB leaves first.
    pub splits: u64,
}

impl std::ops::AddAssign for Changes {
    fn add_assign(&mut self, o: Changes) {
        self.ptes += o.ptes;
        self.splits += o.splits;
    }
}

#[derive(Debug)]
enum Slot {
    Empty,
    Table(Box<Node>),
    Leaf(Pte),
}

#[derive(Debug)]
struct Node {
    slots: Box<[Slot]>,
    /// Slots that are not empty, so empty tables can be freed.
    live: usize,
}

impl Node {
    fn empty() -> Box<Node> {
        Box::new(Node {
            slots: (0..ENTRIES).map(|_| Slot::Empty).collect(),
            live: 0,
        })
    }

    /// The 512 4 KiB leaves that replace a 2 MiB leaf.
    fn split(huge: Pte) -> Box<Node> {
        let writable = huge.is_writable();
        let slots = (0..ENTRIES as u64)
            .map(|i| {
                Slot::Leaf(Pte::new(
                    GuestAddress(huge.frame().0 + i * PAGE_SIZE),
                    writable,
                ))
            })
            .collect();
        Box::new(Node {
            slots,
            live: ENTRIES,
        })
    }
}

/// Bytes covered by one slot of a node at `level`.
fn slot_size(level: u32) -> u64 {
    PAGE_SIZE << (BITS_PER_LEVEL * level)
}

/// Index of `va` in a node at `level`.
fn index(level: u32, va: u64) -> usize {
    ((va >> (PAGE_SHIFT + BITS_PER_LEVEL * level)) as usize) & (ENTRIES - 1)
}

/// The slots of the node at `level` mapping from `base` that hold a byte of `range` (which
/// overlaps the node).
fn slots_in(level: u32, base: u64, range: IovaRange) -> std::ops::RangeInclusive<usize> {
    let last_va = (range.end - 1).min(base + slot_size(level) * ENTRIES as u64 - 1);
    index(level, range.start.max(base))..=index(level, last_va)
}

/// The size of a leaf at `level` (0 or [`HUGE_LEVEL`]).
fn leaf_size(level: u32) -> LeafSize {
    if level == 0 {
        LeafSize::Small
    } else {
        LeafSize::Huge
    }
}

/// How a range operation changes the leaves it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOp {
    /// Remove the translations.
    Drop,
    /// Keep the translations, read-only.
    Downgrade,
}

/// One PASID's page table.
#[derive(Debug)]
pub struct PageTable {
    root: Box<Node>,
    /// Nodes below the root.
    nodes: usize,
    max_nodes: usize,
}

impl PageTable {
    /// An empty table that may grow to `max_nodes` nodes below the root (each node maps
    /// 512 entries).
    pub fn new(max_nodes: usize) -> Self {
        PageTable {
            root: Node::empty(),
            nodes: 0,
            max_nodes,
        }
    }

    /// Nodes in use below the root.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The node at `leaf_level` that holds `va`'s leaf, creating tables (and splitting a
    /// 2 MiB leaf in the way) as needed.
    fn leaf_node(
        &mut self,
        va: u64,
        leaf_level: u32,
        changes: &mut Changes,
    ) -> Result<&mut Node, PageTableError> {
        // Count the nodes this descent creates first, so a full table fails before any change.
        let mut node: &Node = &self.root;
        let mut needed = 0;
        for level in (leaf_level + 1..LEVELS).rev() {
            match &node.slots[index(level, va)] {
                Slot::Table(child) => node = child,
                _ => {
                    needed = level - leaf_level;
                    break;
                }
            }
        }
        if self.nodes + needed as usize > self.max_nodes {
            return Err(PageTableError::OutOfNodes(self.max_nodes));
        }
        self.nodes += needed as usize;

        let mut node: &mut Node = &mut self.root;
        for level in (leaf_level + 1..LEVELS).rev() {
            let i = index(level, va);
            match node.slots[i] {
                Slot::Empty => {
                    node.slots[i] = Slot::Table(Node::empty());
                    node.live += 1;
                }
                Slot::Leaf(huge) => {
                    // Only level 1 holds leaves: this is a 2 MiB leaf in a 4 KiB map's way.
                    node.slots[i] = Slot::Table(Node::split(huge));
                    changes.splits += 1;
                }
                Slot::Table(_) => {}
            }
            let Slot::Table(child) = &mut node.slots[i] else {
                unreachable!("the slot was just made a table");
            };
            node = child;
        }
        Ok(node)
    }

    /// Maps the 4 KiB page at `iova` to `frame`, if that restricts no translation already
    /// there (else [`PageTableError::Restricts`]; [`Mmu::map`](super::Mmu::map) may).
    pub fn map_page(
        &mut self,
        iova: Iova,
        frame: GuestAddress,
        writable: bool,
    ) -> Result<Changes, PageTableError> {
        self.add_leaf(iova, frame, writable, LeafSize::Small)
    }

    /// Maps the 2 MiB run at `iova` (2 MiB aligned) to the run at `frame` (2 MiB aligned)
    /// with one leaf, replacing the leaves below it, if that restricts none of their
    /// translations (else [`PageTableError::Restricts`]; [`Mmu::map`](super::Mmu::map) may).
    pub fn map_huge(
        &mut self,
        iova: Iova,
        frame: GuestAddress,
        writable: bool,
    ) -> Result<Changes, PageTableError> {
        self.add_leaf(iova, frame, writable, LeafSize::Huge)
    }

    fn add_leaf(
        &mut self,
        iova: Iova,
        frame: GuestAddress,
        writable: bool,
        size: LeafSize,
    ) -> Result<Changes, PageTableError> {
        if self.change_of(iova, frame, writable, size)? == LeafChange::Restricts {
            return Err(PageTableError::Restricts(iova));
        }
        self.set_leaf(iova, frame, writable, size)
    }

    /// The bytes a leaf of `size` at `iova` mapping `frame` covers, if it can exist.
    fn leaf_span(
        iova: Iova,
        frame: GuestAddress,
        size: LeafSize,
    ) -> Result<IovaRange, PageTableError> {
        let bytes = size.bytes();
        if !iova.0.is_multiple_of(bytes) || !frame.0.is_multiple_of(bytes) {
            return Err(PageTableError::Unaligned { iova, gpa: frame.0 });
        }
        IovaRange::new(iova.0, bytes).map_err(|_| PageTableError::OutOfSpace(iova))
    }

    /// What mapping `iova` to `frame` with a leaf of `size` would do to the translations
    /// already there.
    pub fn change_of(
        &self,
        iova: Iova,
        frame: GuestAddress,
        writable: bool,
        size: LeafSize,
    ) -> Result<LeafChange, PageTableError> {
        let span = Self::leaf_span(iova, frame, size)?;
        let mut change = LeafChange::Adds;
        self.for_each_leaf_in(span, &mut |t| {
            if t.base == iova && t.size == size && t.frame == frame && t.writable == writable {
                change = LeafChange::Same;
                return;
            }
            // Both leaves map linearly: where they first overlap decides for all of it.
            let first = t.base.0.max(span.start);
            let moved = t.gpa(Iova(first)).0 != frame.0 + (first - span.start);
            if moved || (t.writable && !writable) {
                change = LeafChange::Restricts;
            } else if change != LeafChange::Restricts {
                change = LeafChange::Widens;
            }
        });
        Ok(change)
    }

    /// Maps `iova` to `frame` with a leaf of `size`, whatever was there (the MMU's own
    /// operation: it invalidates the ATC when [`Self::change_of`] says a translation is
    /// replaced).
    pub(super) fn set_leaf(
        &mut self,
        iova: Iova,
        frame: GuestAddress,
        writable: bool,
        size: LeafSize,
    ) -> Result<Changes, PageTableError> {
        Self::leaf_span(iova, frame, size)?;
        if self
            .translate(iova)
            .is_some_and(|t| t.size == size && t.gpa(iova) == frame && t.writable == writable)
        {
            return Ok(Changes::default());
        }
        let level = match size {
            LeafSize::Small => 0,
            LeafSize::Huge => HUGE_LEVEL,
        };
        let mut changes = Changes::default();
        let node = self.leaf_node(iova.0, level, &mut changes)?;
        let i = index(level, iova.0);
        let old = std::mem::replace(&mut node.slots[i], Slot::Leaf(Pte::new(frame, writable)));
        let freed = match old {
            Slot::Empty => {
                node.live += 1;
                0
            }
            Slot::Leaf(_) => 0,
            // A 2 MiB leaf replaces a table of 4 KiB leaves: one node goes.
            Slot::Table(_) => 1,
        };
        self.nodes -= freed;
        changes.ptes += 1;
        Ok(changes)
    }

    /// Walks the table for `iova`.
    pub fn translate(&self, iova: Iova) -> Option<Translation> {
        if iova.0 >= VA_LIMIT {
            return None;
        }
        let mut node: &Node = &self.root;
        for level in (0..LEVELS).rev() {
            match &node.slots[index(level, iova.0)] {
                Slot::Empty => return None,
                Slot::Table(child) => node = child,
                Slot::Leaf(pte) if pte.is_valid() => {
                    let base = iova.0 & !(slot_size(level) - 1);
                    return Some(Translation::of_leaf(level, base, *pte));
                }
                Slot::Leaf(_) => return None,
            }
        }
        None
    }

    /// Drops or downgrades every translation in `range`. `changed` hears each leaf that
    /// changed (its first address and size, after any split). A 2 MiB leaf the range only
    /// partly covers is split first; if the node budget forbids the split, a drop removes
    /// the whole leaf (removing more is always safe) and a downgrade downgrades it whole.
    /// (The MMU's own operation: it invalidates the ATC over the range.)
    pub(super) fn update_range(
        &mut self,
        range: IovaRange,
        op: RangeOp,
        changed: &mut dyn FnMut(Iova, LeafSize),
    ) -> Changes {
        let mut walk = RangeWalk {
            range,
            op,
            changed,
            changes: Changes::default(),
            nodes: self.nodes,
            max_nodes: self.max_nodes,
        };
        walk.node(&mut self.root, LEVELS - 1, 0);
        self.nodes = walk.nodes;
        walk.changes
    }

    /// Removes every translation; returns the number of leaves removed. (The MMU's own
    /// operation: it invalidates the PASID in the ATC.)
    pub(super) fn clear(&mut self) -> u64 {
        fn count(node: &Node) -> u64 {
            node.slots
                .iter()
                .map(|s| match s {
                    Slot::Empty => 0,
                    Slot::Leaf(_) => 1,
                    Slot::Table(child) => count(child),
                })
                .sum()
        }
        let leaves = count(&self.root);
        self.root = Node::empty();
        self.nodes = 0;
        leaves
    }

    /// Calls `f` with every valid leaf, in address order.
    pub fn for_each_leaf(&self, f: &mut dyn FnMut(Translation)) {
        let everything = IovaRange {
            start: 0,
            end: VA_LIMIT,
        };
        self.for_each_leaf_in(everything, f);
    }

    /// Calls `f` with every valid leaf that maps a byte of `range`, in address order.
    pub fn for_each_leaf_in(&self, range: IovaRange, f: &mut dyn FnMut(Translation)) {
        fn visit(
            node: &Node,
            level: u32,
            base: u64,
            range: IovaRange,
            f: &mut dyn FnMut(Translation),
        ) {
            for i in slots_in(level, base, range) {
                let slot_base = base + i as u64 * slot_size(level);
                match &node.slots[i] {
                    Slot::Empty => {}
                    Slot::Leaf(pte) if pte.is_valid() => {
                        f(Translation::of_leaf(level, slot_base, *pte))
                    }
                    Slot::Leaf(_) => {}
                    // Tables only hang below levels 3..=1, so level - 1 cannot underflow.
                    Slot::Table(child) => visit(child, level - 1, slot_base, range, f),
                }
            }
        }
        if range.is_empty() {
            return;
        }
        visit(&self.root, LEVELS - 1, 0, range, f);
    }

    /// Leaves of each size, for tests and reports.
    pub fn leaf_counts(&self) -> (u64, u64) {
        fn count(node: &Node, level: u32, acc: &mut (u64, u64)) {
            for s in node.slots.iter() {
                match s {
                    Slot::Empty => {}
                    Slot::Leaf(_) if level == 0 => acc.0 += 1,
                    Slot::Leaf(_) => acc.1 += 1,
                    Slot::Table(child) => count(child, level - 1, acc),
                }
            }
        }
        let mut acc = (0, 0);
        count(&self.root, LEVELS - 1, &mut acc);
        acc
    }
}

/// State of one [`PageTable::update_range`] walk.
struct RangeWalk<'a> {
    range: IovaRange,
    op: RangeOp,
    changed: &'a mut dyn FnMut(Iova, LeafSize),
    changes: Changes,
    nodes: usize,
    max_nodes: usize,
}

impl RangeWalk<'_> {
    fn node(&mut self, node: &mut Node, level: u32, base: u64) {
        let size = slot_size(level);
        for i in slots_in(level, base, self.range) {
            let slot_base = base + i as u64 * size;
            let whole = self.range.start <= slot_base && slot_base + size <= self.range.end;
            match &mut node.slots[i] {
                Slot::Empty => {}
                Slot::Leaf(pte) if whole || self.cannot_split(*pte) => {
                    match self.op {
                        RangeOp::Drop => {
                            node.slots[i] = Slot::Empty;
                            node.live -= 1;
                        }
                        RangeOp::Downgrade if pte.is_writable() => *pte = pte.read_only(),
                        RangeOp::Downgrade => continue,
                    }
                    self.changes.ptes += 1;
                    (self.changed)(Iova(slot_base), leaf_size(level));
                }
                Slot::Leaf(pte) => {
                    self.nodes += 1;
                    self.changes.splits += 1;
                    node.slots[i] = Slot::Table(Node::split(*pte));
                    self.node_child(node, i, level, slot_base);
                }
                Slot::Table(_) => self.node_child(node, i, level, slot_base),
            }
        }
    }

    fn node_child(&mut self, node: &mut Node, i: usize, level: u32, slot_base: u64) {
        let Slot::Table(child) = &mut node.slots[i] else {
            return;
        };
        self.node(child, level - 1, slot_base);
        if child.live == 0 {
            node.slots[i] = Slot::Empty;
            node.live -= 1;
            self.nodes -= 1;
        }
    }

    /// A partly covered 2 MiB leaf is handled whole when splitting it would change nothing
    /// (a downgrade of a read-only leaf) or the node budget is spent.
    fn cannot_split(&self, pte: Pte) -> bool {
        (self.op == RangeOp::Downgrade && !pte.is_writable()) || self.nodes >= self.max_nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = HUGE_PAGE_SIZE;

    fn range(start: u64, len: u64) -> IovaRange {
        IovaRange::pages(start, len).unwrap()
    }

    fn drop_range(pt: &mut PageTable, start: u64, len: u64) -> (Changes, Vec<(u64, LeafSize)>) {
        let mut seen = Vec::new();
        let c = pt.update_range(range(start, len), RangeOp::Drop, &mut |i, s| {
            seen.push((i.0, s))
        });
        (c, seen)
    }

    #[test]
    fn map_and_translate_small_pages() {
        let mut pt = PageTable::new(16);
        assert_eq!(pt.translate(Iova(0x1000)), None);
        let c = pt
            .map_page(Iova(0x7f00_0000_1000), GuestAddress(0x5000), true)
            .unwrap();
        assert_eq!(c, Changes { ptes: 1, splits: 0 });
        // Three tables below the root.
        assert_eq!(pt.nodes(), 3);
        let t = pt.translate(Iova(0x7f00_0000_1234)).unwrap();
        assert_eq!(t.size, LeafSize::Small);
        assert!(t.writable);
        assert_eq!(t.gpa(Iova(0x7f00_0000_1234)), GuestAddress(0x5234));
        assert_eq!(pt.translate(Iova(0x7f00_0000_2000)), None);
        // Same mapping again changes nothing; a different one changes one PTE.
        let again = pt.map_page(Iova(0x7f00_0000_1000), GuestAddress(0x5000), true);
        assert_eq!(again.unwrap(), Changes::default());
        let ro = pt.set_leaf(
            Iova(0x7f00_0000_1000),
            GuestAddress(0x5000),
            false,
            LeafSize::Small,
        );
        assert_eq!(ro.unwrap().ptes, 1);
        assert!(!pt.translate(Iova(0x7f00_0000_1000)).unwrap().writable);
    }

    #[test]
    fn growing_maps_refuse_to_restrict() {
        let mut pt = PageTable::new(16);
        let small = |pt: &PageTable, va: u64, frame: u64, w: bool| {
            pt.change_of(Iova(va), GuestAddress(frame), w, LeafSize::Small)
                .unwrap()
        };
        assert_eq!(small(&pt, 0x1000, 0x5000, false), LeafChange::Adds);
        pt.map_page(Iova(0x1000), GuestAddress(0x5000), false)
            .unwrap();
        assert_eq!(small(&pt, 0x1000, 0x5000, false), LeafChange::Same);
        // Gaining write keeps the frame: a widening, which needs no ATC invalidation.
        assert_eq!(small(&pt, 0x1000, 0x5000, true), LeafChange::Widens);
        pt.map_page(Iova(0x1000), GuestAddress(0x5000), true)
            .unwrap();
        // Losing write, or another frame: restrictions, refused here.
        assert_eq!(small(&pt, 0x1000, 0x5000, false), LeafChange::Restricts);
        assert_eq!(small(&pt, 0x1000, 0x6000, true), LeafChange::Restricts);
        assert_eq!(
            pt.map_page(Iova(0x1000), GuestAddress(0x6000), true),
            Err(PageTableError::Restricts(Iova(0x1000)))
        );
        assert_eq!(
            pt.map_page(Iova(0x1000), GuestAddress(0x5000), false),
            Err(PageTableError::Restricts(Iova(0x1000)))
        );
        // A 2 MiB leaf over 4 KiB ones judges every page under it, not just its first:
        // page 1 maps frame 0x5000, which the run from frame 0 would move to 0x1000.
        let huge = |pt: &PageTable, frame: u64, w: bool| {
            pt.change_of(Iova(0), GuestAddress(frame), w, LeafSize::Huge)
                .unwrap()
        };
        assert_eq!(huge(&pt, 0, true), LeafChange::Restricts);
        assert_eq!(
            pt.map_huge(Iova(0), GuestAddress(0), true),
            Err(PageTableError::Restricts(Iova(0)))
        );
        // The same frames in one leaf widen (another leaf size, nothing taken away).
        let mut pt = PageTable::new(16);
        pt.map_page(Iova(MB2 + 0x3000), GuestAddress(0x20_3000), false)
            .unwrap();
        let at = |pt: &PageTable, w| {
            pt.change_of(Iova(MB2), GuestAddress(0x20_0000), w, LeafSize::Huge)
                .unwrap()
        };
        assert_eq!(at(&pt, true), LeafChange::Widens);
        pt.map_huge(Iova(MB2), GuestAddress(0x20_0000), true)
            .unwrap();
        assert_eq!(at(&pt, true), LeafChange::Same);
        // And a 4 KiB leaf inside it with its own frame restricts it.
        assert_eq!(
            small(&pt, MB2 + 0x5000, 0x20_5000, true),
            LeafChange::Widens
        );
        assert_eq!(
            small(&pt, MB2 + 0x5000, 0x9000, true),
            LeafChange::Restricts
        );
        assert!(LeafChange::Widens.replaces() && LeafChange::Restricts.replaces());
        assert!(!LeafChange::Same.replaces() && !LeafChange::Adds.replaces());
    }

    #[test]
    fn map_rejects_bad_addresses() {
        let mut pt = PageTable::new(16);
        assert!(matches!(
            pt.map_page(Iova(0x1001), GuestAddress(0), true),
            Err(PageTableError::Unaligned { .. })
        ));
        assert!(matches!(
            pt.map_huge(Iova(MB2), GuestAddress(0x1000), true),
            Err(PageTableError::Unaligned { .. })
        ));
        assert_eq!(
            pt.map_page(Iova(1 << 47), GuestAddress(0), true),
            Err(PageTableError::OutOfSpace(Iova(1 << 47)))
        );
        assert_eq!(pt.translate(Iova(u64::MAX)), None);
    }

    #[test]
    fn node_budget_is_enforced_without_partial_changes() {
        let mut pt = PageTable::new(3);
        pt.map_page(Iova(0), GuestAddress(0), true).unwrap();
        // A page in another 2 MiB region needs one more level-0 node.
        assert_eq!(
            pt.map_page(Iova(MB2), GuestAddress(0), true),
            Err(PageTableError::OutOfNodes(3))
        );
        assert_eq!(pt.nodes(), 3);
        assert_eq!(pt.leaf_counts(), (1, 0));
        // The 2 MiB leaf needs no level-0 node.
        pt.map_huge(Iova(MB2), GuestAddress(MB2), true).unwrap();
        assert_eq!(pt.leaf_counts(), (1, 1));
    }

    #[test]
    fn huge_leaf_translates_whole_run() {
        let mut pt = PageTable::new(16);
        pt.map_huge(Iova(4 * MB2), GuestAddress(2 * MB2), false)
            .unwrap();
        assert_eq!(pt.nodes(), 2);
        let t = pt.translate(Iova(4 * MB2 + 0x1_2345)).unwrap();
        assert_eq!(t.size, LeafSize::Huge);
        assert_eq!(t.base, Iova(4 * MB2));
        assert_eq!(
            t.gpa(Iova(4 * MB2 + 0x1_2345)),
            GuestAddress(2 * MB2 + 0x1_2345)
        );
        assert!(!t.writable);
        assert!(t.covers(Iova(5 * MB2 - 1)) && !t.covers(Iova(5 * MB2)));
    }

    #[test]
    fn huge_leaf_replaces_small_leaves_and_frees_their_node() {
        let mut pt = PageTable::new(16);
        for i in 0..4 {
            pt.map_page(Iova(i * PAGE_SIZE), GuestAddress(i * PAGE_SIZE), true)
                .unwrap();
        }
        assert_eq!(pt.nodes(), 3);
        pt.map_huge(Iova(0), GuestAddress(0), true).unwrap();
        assert_eq!(pt.nodes(), 2);
        assert_eq!(pt.leaf_counts(), (0, 1));
    }

    #[test]
    fn partial_drop_splits_huge_leaf() {
        let mut pt = PageTable::new(16);
        pt.map_huge(Iova(MB2), GuestAddress(4 * MB2), true).unwrap();
        let (c, seen) = drop_range(&mut pt, MB2 + 0x3000, 0x2000);
        assert_eq!(c, Changes { ptes: 2, splits: 1 });
        assert_eq!(
            seen,
            vec![
                (MB2 + 0x3000, LeafSize::Small),
                (MB2 + 0x4000, LeafSize::Small)
            ]
        );
        assert_eq!(pt.leaf_counts(), (510, 0));
        assert_eq!(pt.translate(Iova(MB2 + 0x3000)), None);
        let t = pt.translate(Iova(MB2 + 0x5000)).unwrap();
        assert_eq!(
            (t.size, t.gpa(Iova(MB2 + 0x5000))),
            (LeafSize::Small, GuestAddress(4 * MB2 + 0x5000))
        );
        // A small map into a huge leaf splits it too.
        pt.map_huge(Iova(3 * MB2), GuestAddress(0), true).unwrap();
        let c = pt
            .set_leaf(
                Iova(3 * MB2 + 0x1000),
                GuestAddress(0x9000),
                true,
                LeafSize::Small,
            )
            .unwrap();
        assert_eq!(c, Changes { ptes: 1, splits: 1 });
        assert_eq!(
            pt.translate(Iova(3 * MB2)).unwrap().gpa(Iova(3 * MB2)),
            GuestAddress(0)
        );
    }

    #[test]
    fn whole_drop_of_huge_leaf_does_not_split() {
        let mut pt = PageTable::new(16);
        pt.map_huge(Iova(MB2), GuestAddress(0), true).unwrap();
        pt.map_page(Iova(0x1000), GuestAddress(0), true).unwrap();
        let (c, seen) = drop_range(&mut pt, 0, 4 * MB2);
        assert_eq!(c, Changes { ptes: 2, splits: 0 });
        assert_eq!(seen.len(), 2);
        // Empty tables are freed.
        assert_eq!(pt.nodes(), 0);
        assert_eq!(pt.leaf_counts(), (0, 0));
        // Dropping nothing changes nothing.
        let (c, _) = drop_range(&mut pt, 0, 1 << 47);
        assert_eq!(c, Changes::default());
    }

    #[test]
    fn split_without_budget_drops_whole_leaf() {
        let mut pt = PageTable::new(2);
        pt.map_huge(Iova(0), GuestAddress(0), true).unwrap();
        let (c, seen) = drop_range(&mut pt, 0x1000, 0x1000);
        assert_eq!(c, Changes { ptes: 1, splits: 0 });
        assert_eq!(seen, vec![(0, LeafSize::Huge)]);
        assert_eq!(pt.translate(Iova(0)), None);
    }

    #[test]
    fn downgrade_keeps_translations_read_only() {
        let mut pt = PageTable::new(16);
        pt.map_huge(Iova(0), GuestAddress(0), true).unwrap();
        pt.map_page(Iova(MB2), GuestAddress(0x7000), true).unwrap();
        pt.map_page(Iova(MB2 + 0x1000), GuestAddress(0x8000), false)
            .unwrap();
        let mut n = 0;
        let c = pt.update_range(range(0x10_0000, MB2), RangeOp::Downgrade, &mut |_, _| {
            n += 1
        });
        // The huge leaf splits; 256 of its pages plus one writable small page change.
        assert_eq!(
            c,
            Changes {
                ptes: 257,
                splits: 1
            }
        );
        assert_eq!(n, 257);
        assert!(pt.translate(Iova(0)).unwrap().writable);
        assert!(!pt.translate(Iova(0x10_0000)).unwrap().writable);
        assert!(!pt.translate(Iova(MB2)).unwrap().writable);
        // Downgrading again changes nothing, and a read-only huge leaf is not split.
        let c = pt.update_range(range(0, 2 * MB2), RangeOp::Downgrade, &mut |_, _| {});
        assert_eq!(c.ptes, 256);
        pt.map_huge(Iova(4 * MB2), GuestAddress(0), false).unwrap();
        let c = pt.update_range(
            range(4 * MB2, PAGE_SIZE),
            RangeOp::Downgrade,
            &mut |_, _| {},
        );
        assert_eq!(c, Changes::default());
    }

    #[test]
    fn clear_counts_leaves() {
        let mut pt = PageTable::new(16);
        pt.map_huge(Iova(0), GuestAddress(0), true).unwrap();
        pt.map_page(Iova(1 << 40), GuestAddress(0), true).unwrap();
        assert_eq!(pt.clear(), 2);
        assert_eq!(pt.nodes(), 0);
        assert_eq!(pt.translate(Iova(0)), None);
    }
}

/// Random sequences of map (4 KiB and 2 MiB), drop, downgrade and translate against a plain
/// reference model: a map of page number to (frame number, writable).
#[cfg(test)]
pub(crate) mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::address::{HUGE_PAGE_SIZE, PAGES_PER_HUGE_PAGE, PAGE_SIZE};

    /// Pages the sequences play in: four 2 MiB runs.
    pub const WINDOW_PAGES: u64 = 4 * PAGES_PER_HUGE_PAGE;
    /// First page of the window: two 2 MiB runs below a 1 GiB boundary, so ranges straddle
    /// 2 MiB leaves and a level-2 table boundary too.
    pub const WINDOW_BASE: u64 = (1 << 30) / PAGE_SIZE - 2 * PAGES_PER_HUGE_PAGE;

    /// The reference: page number → (frame number, writable).
    pub type Model = BTreeMap<u64, (u64, bool)>;

    /// One step of a sequence; page numbers are relative to [`WINDOW_BASE`].
    #[derive(Clone, Debug)]
    pub enum Op {
        /// Map one 4 KiB page.
        Map {
            page: u64,
            frame: u64,
            writable: bool,
        },
        /// Map one 2 MiB run (index of the run in the window).
        MapHuge {
            run: u64,
            frame_run: u64,
            writable: bool,
        },
        /// Drop or downgrade `pages` pages from `page`.
        Update {
            page: u64,
            pages: u64,
            downgrade: bool,
        },
        /// Translate an address in `page`.
        Translate { page: u64, offset: u64 },
    }

    pub fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..WINDOW_PAGES, 0..1u64 << 20, any::<bool>())
                .prop_map(|(page, frame, writable)| Op::Map { page, frame, writable }),
            1 => (0..WINDOW_PAGES / PAGES_PER_HUGE_PAGE, 0..1u64 << 10, any::<bool>())
                .prop_map(|(run, frame_run, writable)| Op::MapHuge { run, frame_run, writable }),
            // Lengths up to a bit more than a 2 MiB run, anywhere: many straddle leaves.
            2 => (0..WINDOW_PAGES, 1..PAGES_PER_HUGE_PAGE + 64, any::<bool>())
                .prop_map(|(page, pages, downgrade)| Op::Update { page, pages, downgrade }),
            3 => (0..WINDOW_PAGES, 0..PAGE_SIZE)
                .prop_map(|(page, offset)| Op::Translate { page, offset }),
        ]
    }

    /// The clamped range of an update, in absolute pages.
    pub fn update_range(page: u64, pages: u64) -> (u64, u64) {
        let end = (page + pages).min(WINDOW_PAGES);
        (WINDOW_BASE + page, WINDOW_BASE + end)
    }

    /// Applies a map or update to the reference.
    pub fn apply_model(model: &mut Model, op: &Op) {
        match *op {
            Op::Map {
                page,
                frame,
                writable,
            } => {
                model.insert(WINDOW_BASE + page, (frame, writable));
            }
            Op::MapHuge {
                run,
                frame_run,
                writable,
            } => {
                let first = WINDOW_BASE + run * PAGES_PER_HUGE_PAGE;
                for i in 0..PAGES_PER_HUGE_PAGE {
                    model.insert(first + i, (frame_run * PAGES_PER_HUGE_PAGE + i, writable));
                }
            }
            Op::Update {
                page,
                pages,
                downgrade,
            } => {
                let (start, end) = update_range(page, pages);
                if downgrade {
                    for (_, v) in model.range_mut(start..end) {
                        v.1 = false;
                    }
                } else {
                    let dropped: Vec<u64> = model.range(start..end).map(|(k, _)| *k).collect();
                    for k in dropped {
                        model.remove(&k);
                    }
                }
            }
            Op::Translate { .. } => {}
        }
    }

    /// Applies a map or update to the table; returns the range it changed (absolute
    /// pages), for the ATC to invalidate.
    pub fn apply_table(table: &mut PageTable, op: &Op) -> Option<(u64, u64)> {
        match *op {
            Op::Map {
                page,
                frame,
                writable,
            } => {
                let p = WINDOW_BASE + page;
                table
                    .set_leaf(
                        Iova(p * PAGE_SIZE),
                        GuestAddress(frame * PAGE_SIZE),
                        writable,
                        LeafSize::Small,
                    )
                    .unwrap();
                Some((p, p + 1))
            }
            Op::MapHuge {
                run,
                frame_run,
                writable,
            } => {
                let p = WINDOW_BASE + run * PAGES_PER_HUGE_PAGE;
                table
                    .set_leaf(
                        Iova(p * PAGE_SIZE),
                        GuestAddress(frame_run * HUGE_PAGE_SIZE),
                        writable,
                        LeafSize::Huge,
                    )
                    .unwrap();
                Some((p, p + PAGES_PER_HUGE_PAGE))
            }
            Op::Update {
                page,
                pages,
                downgrade,
            } => {
                let (start, end) = update_range(page, pages);
                let range = IovaRange::pages(start * PAGE_SIZE, (end - start) * PAGE_SIZE).unwrap();
                let op = if downgrade {
                    RangeOp::Downgrade
                } else {
                    RangeOp::Drop
                };
                table.update_range(range, op, &mut |_, _| {});
                Some((start, end))
            }
            Op::Translate { .. } => None,
        }
    }

    /// Whether the table's translation of `page` + `offset` is the reference's.
    pub fn agrees(table: &PageTable, model: &Model, page: u64, offset: u64) -> bool {
        let iova = Iova(page * PAGE_SIZE + offset);
        match (table.translate(iova), model.get(&page)) {
            (None, None) => true,
            (Some(t), Some(&(frame, writable))) => {
                t.covers(iova)
                    && t.gpa(iova) == GuestAddress(frame * PAGE_SIZE + offset)
                    && t.writable == writable
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        #[test]
        fn page_table_matches_the_reference(ops in prop::collection::vec(op(), 1..16)) {
            // Room for every node the window can need: no budget-forced whole-leaf drops.
            let mut table = PageTable::new(64);
            let mut model = Model::new();
            for op in &ops {
                if let Op::Translate { page, offset } = *op {
                    prop_assert!(agrees(&table, &model, WINDOW_BASE + page, offset), "{op:?}");
                }
                apply_table(&mut table, op);
                apply_model(&mut model, op);
            }
            // Every 13th page of the window, then every page the reference maps.
            for page in (0..WINDOW_PAGES).step_by(13) {
                prop_assert!(agrees(&table, &model, WINDOW_BASE + page, 8));
            }
            for &page in model.keys() {
                prop_assert!(agrees(&table, &model, page, 0));
            }
            let (small, huge) = table.leaf_counts();
            prop_assert_eq!(small + huge * PAGES_PER_HUGE_PAGE, model.len() as u64);
            // The leaf visit (what an audit checks) sees each leaf once, as a walk sees it.
            let mut leaves = Vec::new();
            table.for_each_leaf(&mut |t| leaves.push(t));
            prop_assert_eq!(leaves.len() as u64, small + huge);
            prop_assert!(leaves.windows(2).all(|w| w[0].base < w[1].base));
            for t in &leaves {
                prop_assert_eq!(table.translate(t.base), Some(*t));
            }
        }
    }
}

//! The coherence oracle: because the device lives in the VMM it can read the guest's own CPU
//! page tables. Whenever an engine uses a translation (from the ATC or the device page table)
//! the oracle walks the process's x86-64 4-level table from the root given at BIND and checks
//! that the CPU still maps the same frame, writable if the access writes. The mmu-notifier
//! contract makes the check exact: `invalidate_range_start` runs before the CPU page table
//! changes, so a correct driver never leaves the device a translation the CPU no longer has.
//!
//! The oracle only observes: a job that uses a stale translation still runs (a real device
//! would too). A violation is counted and the first few are kept as samples, each with the
//! recent invalidations that touched its page.
//!
//! The walk of the CPU table is [`x86::walk`]: bounded to four levels, and an entry it
//! cannot read is "absent", never a panic (guest page tables are guest-controlled data).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Instant;

use vm_memory::{GuestAddress, GuestMemory};

use crate::address::{Iova, IovaRange, Pasid, PAGE_SIZE};
use crate::counters::GlobalCounters;
use crate::mmu::page_table::Translation;
use crate::x86::{self, walk};

use crate::mmu::Mmu;
pub use crate::x86::{CpuLeaf, CpuTranslation};

/// User addresses end here (4-level paging, lower canonical half). Only these are checked:
/// with PTI the root given at BIND is the kernel PGD, whose user half maps the same pages as
/// the user PGD.
pub const USER_VA_LIMIT: u64 = x86::LOWER_HALF_END;
/// Most samples kept.
pub const MAX_SAMPLES: usize = 16;
/// Invalidations remembered per PASID.
pub const HISTORY_PER_PASID: usize = 64;
/// Invalidations attached to one sample.
pub const HISTORY_PER_SAMPLE: usize = 4;

/// How often the oracle checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OracleMode {
    /// Never.
    Off,
    /// Every translation an engine uses.
    #[default]
    Every,
    /// One translation in `n` (0 and 1 mean every one).
    Sampled(u32),
}

impl OracleMode {
    /// What the device option `oracle=sampled` selects: one translation in 16.
    pub const SAMPLED: OracleMode = OracleMode::Sampled(16);
    /// The device option values, in the order `vmm bench oracle` reports them.
    pub const CHOICES: [(&'static str, OracleMode); 3] = [
        ("every", OracleMode::Every),
        ("sampled", OracleMode::SAMPLED),
        ("off", OracleMode::Off),
    ];

    /// The mode a device option value names (`every`, `sampled`, `off`).
    pub fn from_name(name: &str) -> Option<OracleMode> {
        Self::CHOICES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
    }

    /// The device option value of this mode; a sampling rate other than the option's is
    /// still `sampled`.
    pub fn name(self) -> &'static str {
        match self {
            OracleMode::Every | OracleMode::Sampled(0 | 1) => "every",
            OracleMode::Sampled(_) => "sampled",
            OracleMode::Off => "off",
        }
    }
}

/// The kind of access an engine makes, or the AUDIT that found a translation stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
    /// No access: an audit (AUDIT, or UNBIND's) checked a translation the device holds.
    /// A writable one needs a writable CPU mapping, a read-only one any CPU mapping of the
    /// same frame.
    Audit,
}

impl Access {
    /// Whether the CPU mapping must be writable for a device translation with `writable`.
    fn needs_write(self, writable: bool) -> bool {
        match self {
            Access::Read => false,
            Access::Write => true,
            Access::Audit => writable,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Audit => "audit",
        })
    }
}

/// The translation an engine used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTranslation {
    /// Guest-physical address of the virtual address.
    pub gpa: GuestAddress,
    /// Whether the device translation allows writes.
    pub writable: bool,
}

/// A device translation the CPU does not agree with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The address space.
    pub pasid: Pasid,
    /// The virtual address.
    pub va: Iova,
    /// What the device used.
    pub device: DeviceTranslation,
    /// What the CPU maps (`None`: nothing).
    pub cpu: Option<CpuTranslation>,
    /// The access.
    pub access: Access,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: device {:#x}{}, cpu ",
            self.pasid,
            self.access,
            self.va,
            self.device.gpa.0,
            if self.device.writable { " rw" } else { " ro" }
        )?;
        match self.cpu {
            Some(c) => write!(
                f,
                "{:#x}{}",
                c.gpa.0,
                if c.writable { " rw" } else { " ro" }
            ),
            None => f.write_str("none"),
        }
    }
}

/// Whether the CPU's `cpu` agrees with the device's `device` for `access`: same 4 KiB
/// frame, and writable if the access needs it.
fn agrees(cpu: Option<CpuTranslation>, device: DeviceTranslation, access: Access) -> bool {
    let page = |a: GuestAddress| a.0 & !(PAGE_SIZE - 1);
    cpu.is_some_and(|c| {
        page(c.gpa) == page(device.gpa) && (c.writable || !access.needs_write(device.writable))
    })
}

/// Checks one device translation of `va` against the CPU table at `root`: a violation when
/// the CPU maps nothing there, another frame, or read-only for a write (for an audit: for
/// a writable device translation).
pub fn check<M: GuestMemory>(
    mem: &M,
    root: GuestAddress,
    pasid: Pasid,
    va: Iova,
    device: DeviceTranslation,
    access: Access,
) -> Result<(), Violation> {
    let cpu = walk(mem, root, va.0);
    if agrees(cpu, device, access) {
        Ok(())
    } else {
        Err(Violation {
            pasid,
            va,
            device,
            cpu,
            access,
        })
    }
}

/// Audits one translation the device holds (an ATC entry or a page-table leaf, 4 KiB or
/// 2 MiB) against the CPU table at `root`: every page it covers must agree as
/// [`Access::Audit`] says. The violation names the first page that does not.
///
/// Both the device leaf and a CPU leaf map linearly, so where they agree on one page they
/// agree on all the pages they share: the walk costs one CPU walk per CPU leaf the device
/// leaf overlaps (1 for a 2 MiB device leaf over a CPU huge page, up to 512 over 4 KiB ones).
pub fn check_leaf<M: GuestMemory>(
    mem: &M,
    root: GuestAddress,
    pasid: Pasid,
    leaf: &Translation,
) -> Result<(), Violation> {
    let end = leaf.base.0 + leaf.size.bytes();
    let mut va = leaf.base.0;
    while va < end {
        let device = DeviceTranslation {
            gpa: leaf.gpa(Iova(va)),
            writable: leaf.writable,
        };
        match walk(mem, root, va) {
            Some(cpu) if agrees(Some(cpu), device, Access::Audit) => {
                // The next CPU leaf starts at the end of this one (va < 2^47: no overflow).
                va = ((va | (cpu.leaf.bytes() - 1)) + 1).min(end);
            }
            cpu => {
                return Err(Violation {
                    pasid,
                    va: Iova(va),
                    device,
                    cpu,
                    access: Access::Audit,
                })
            }
        }
    }
    Ok(())
}

/// What an audit of one PASID found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditResult {
    /// Translations checked: the PASID's ATC entries plus its page-table leaves.
    pub checked: u64,
    /// Those that disagree with the CPU page table (each counts once, however many of
    /// its pages disagree).
    pub disagreements: u64,
}

/// One INVALIDATE as the oracle remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationRecord {
    /// Order among all invalidations the device received (from 1).
    pub seq: u64,
    /// Microseconds since the device was created.
    pub micros: u64,
    /// The mmu-notifier event.
    pub event: u32,
    /// The range.
    pub range: IovaRange,
    /// Whether it only removed write permission.
    pub downgrade: bool,
}

/// A violation with the invalidations that touched its page before it, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViolationSample {
    /// The violation.
    pub violation: Violation,
    /// Microseconds since the device was created.
    pub micros: u64,
    /// Invalidations received before it (the `seq` of the latest).
    pub after_seq: u64,
    /// The last few invalidations whose range holds the page.
    pub history: Vec<InvalidationRecord>,
}

/// The oracle's state: mode, samples and a bounded invalidation history per PASID.
#[derive(Debug)]
pub struct Oracle {
    mode: OracleMode,
    /// Translations seen, for sampling.
    seen: u64,
    /// Translations the per-access check walked the CPU table for.
    checks: u64,
    next_seq: u64,
    start: Instant,
    history: BTreeMap<Pasid, VecDeque<InvalidationRecord>>,
    samples: Vec<ViolationSample>,
}

impl Default for Oracle {
    fn default() -> Self {
        Oracle::new(OracleMode::default())
    }
}

impl Oracle {
    /// An oracle with no history and no samples.
    pub fn new(mode: OracleMode) -> Self {
        Oracle {
            mode,
            seen: 0,
            checks: 0,
            next_seq: 1,
            start: Instant::now(),
            history: BTreeMap::new(),
            samples: Vec::new(),
        }
    }

    /// How often it checks.
    pub fn mode(&self) -> OracleMode {
        self.mode
    }

    /// Changes how often it checks.
    pub fn set_mode(&mut self, mode: OracleMode) {
        self.mode = mode;
    }

    /// How many translations the per-access check has walked the CPU table for (what
    /// the mode let through; audits are not counted here).
    pub fn checks(&self) -> u64 {
        self.checks
    }

    /// The first [`MAX_SAMPLES`] violations.
    pub fn samples(&self) -> &[ViolationSample] {
        &self.samples
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Remembers an applied invalidation of `range` in `pasid` (mmu-notifier `event`; only
    /// write permission removed when `downgrade`); the oldest of its PASID goes when the ring
    /// is full.
    pub fn record_invalidation(
        &mut self,
        pasid: Pasid,
        event: u32,
        range: IovaRange,
        downgrade: bool,
    ) {
        let record = InvalidationRecord {
            seq: self.next_seq,
            micros: self.micros(),
            event,
            range,
            downgrade,
        };
        self.next_seq += 1;
        let ring = self.history.entry(pasid).or_default();
        if ring.len() >= HISTORY_PER_PASID {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// Drops the history of an unbound PASID (samples stay).
    pub fn forget_pasid(&mut self, pasid: Pasid) {
        self.history.remove(&pasid);
    }

    /// Drops all history (device reset); samples stay, like the counters.
    pub fn clear_history(&mut self) {
        self.history.clear();
    }

    fn due(&mut self) -> bool {
        self.seen = self.seen.wrapping_add(1);
        match self.mode {
            OracleMode::Off => false,
            OracleMode::Every | OracleMode::Sampled(0 | 1) => true,
            OracleMode::Sampled(n) => self.seen.is_multiple_of(u64::from(n)),
        }
    }

    /// Checks a translation an engine is about to use, if the mode says so; counts a
    /// violation in `counters.violations` and keeps it as a sample while there is room.
    /// A zero `root` means the driver gave no CPU table: nothing to check against.
    #[allow(clippy::too_many_arguments)]
    pub fn observe<M: GuestMemory>(
        &mut self,
        mem: &M,
        root: GuestAddress,
        pasid: Pasid,
        va: Iova,
        device: DeviceTranslation,
        access: Access,
        counters: &mut GlobalCounters,
    ) {
        if root.0 == 0 || !self.due() {
            return;
        }
        self.checks += 1;
        if let Err(violation) = check(mem, root, pasid, va, device, access) {
            self.record(violation, counters);
        }
    }

    /// Checks every translation `pasid` holds, its ATC entries and its page-table leaves,
    /// against the CPU table given at BIND, whatever the mode. Each disagreement counts in
    /// `counters.violations` and is sampled like a per-access violation (access "audit").
    /// A PASID that is not bound, or was bound without a CPU table, checks nothing.
    pub fn audit<M: GuestMemory>(
        &mut self,
        mem: &M,
        mmu: &Mmu,
        pasid: Pasid,
        counters: &mut GlobalCounters,
    ) -> AuditResult {
        let mut result = AuditResult::default();
        let root = match mmu.process_root(pasid) {
            Some(root) if root.0 != 0 => root,
            _ => return result,
        };
        mmu.for_each_translation(pasid, &mut |t| {
            result.checked += 1;
            if let Err(violation) = check_leaf(mem, root, pasid, &t) {
                result.disagreements += 1;
                self.record(violation, counters);
            }
        });
        result
    }

    /// Counts a violation and keeps it, with the invalidations that touched its page, while
    /// there is room for samples.
    fn record(&mut self, violation: Violation, counters: &mut GlobalCounters) {
        counters.violations += 1;
        if self.samples.len() >= MAX_SAMPLES {
            return;
        }
        log::warn!("vgpu: coherence violation: {violation}");
        let (pasid, va) = (violation.pasid, violation.va);
        let mut history: Vec<InvalidationRecord> = self
            .history
            .get(&pasid)
            .into_iter()
            .flatten()
            .rev()
            .filter(|r| r.range.start <= va.0 && va.0 < r.range.end)
            .take(HISTORY_PER_SAMPLE)
            .copied()
            .collect();
        history.reverse();
        self.samples.push(ViolationSample {
            violation,
            micros: self.micros(),
            after_seq: self.next_seq - 1,
            history,
        });
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::mmu::page_table::LeafSize;
    use crate::x86::scratch::{Tables, ROOT};

    fn device(gpa: u64, writable: bool) -> DeviceTranslation {
        DeviceTranslation {
            gpa: GuestAddress(gpa),
            writable,
        }
    }

    #[test]
    fn check_rules() {
        let mut t = Tables::new();
        t.map(0x1000, 0x5000, 12, false);
        t.map(0x2000, 0x6000, 12, true);
        let c = |va: u64, d: DeviceTranslation, a: Access| {
            check(&t.mem, GuestAddress(ROOT), Pasid(1), Iova(va), d, a)
        };
        assert_eq!(c(0x1008, device(0x5008, false), Access::Read), Ok(()));
        assert_eq!(c(0x2008, device(0x6008, true), Access::Write), Ok(()));
        // Read-only on the CPU: a read is fine even through a writable device entry.
        assert_eq!(c(0x1000, device(0x5000, true), Access::Read), Ok(()));
        let v = c(0x1000, device(0x5000, true), Access::Write).unwrap_err();
        assert_eq!(v.cpu.map(|c| c.writable), Some(false));
        // Another frame.
        let v = c(0x2000, device(0x7000, true), Access::Read).unwrap_err();
        assert_eq!(v.cpu.map(|c| c.gpa), Some(GuestAddress(0x6000)));
        assert_eq!(v.device, device(0x7000, true));
        // No CPU mapping at all.
        let v = c(0x3000, device(0x8000, false), Access::Read).unwrap_err();
        assert_eq!((v.cpu, v.access, v.va), (None, Access::Read, Iova(0x3000)));
    }

    /// Records a dropping invalidation of `[start, start + len)` in PASID 1.
    fn inv(o: &mut Oracle, start: u64, len: u64, event: u32) {
        o.record_invalidation(
            Pasid(1),
            event,
            IovaRange::pages(start, len).unwrap(),
            false,
        );
    }

    #[test]
    fn observe_counts_samples_and_keeps_history() {
        let mut t = Tables::new();
        t.map(0x1000, 0x5000, 12, true);
        let mut o = Oracle::default();
        let mut c = GlobalCounters::default();
        inv(&mut o, 0x1000, 0x1000, 1);
        inv(&mut o, 0x10_0000, 0x1000, 0);
        inv(&mut o, 0, 0x4000, 2);
        let root = GuestAddress(ROOT);
        o.observe(
            &t.mem,
            root,
            Pasid(1),
            Iova(0x1000),
            device(0x5000, true),
            Access::Write,
            &mut c,
        );
        assert_eq!(c.violations, 0);
        o.observe(
            &t.mem,
            root,
            Pasid(1),
            Iova(0x1000),
            device(0x9000, true),
            Access::Write,
            &mut c,
        );
        assert_eq!(c.violations, 1);
        let s = &o.samples()[0];
        assert_eq!(s.after_seq, 3);
        let seqs: Vec<u64> = s.history.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            [1, 3],
            "only invalidations that touched the page, oldest first"
        );
        // No root: nothing to check against.
        o.observe(
            &t.mem,
            GuestAddress(0),
            Pasid(1),
            Iova(0x1000),
            device(0x9000, true),
            Access::Write,
            &mut c,
        );
        assert_eq!(c.violations, 1);
        // Samples are bounded, the count is not.
        for _ in 0..2 * MAX_SAMPLES {
            o.observe(
                &t.mem,
                root,
                Pasid(1),
                Iova(0x3000),
                device(0x9000, false),
                Access::Read,
                &mut c,
            );
        }
        assert_eq!(c.violations, 1 + 2 * MAX_SAMPLES as u64);
        assert_eq!(o.samples().len(), MAX_SAMPLES);
        // Off and sampled modes.
        o.set_mode(OracleMode::Off);
        o.observe(
            &t.mem,
            root,
            Pasid(1),
            Iova(0x3000),
            device(0x9000, false),
            Access::Read,
            &mut c,
        );
        assert_eq!(c.violations, 1 + 2 * MAX_SAMPLES as u64);
        o.set_mode(OracleMode::Sampled(4));
        let before = c.violations;
        for _ in 0..8 {
            o.observe(
                &t.mem,
                root,
                Pasid(1),
                Iova(0x3000),
                device(0x9000, false),
                Access::Read,
                &mut c,
            );
        }
        assert_eq!(c.violations - before, 2);
    }

    /// A device with PASID 1 bound to the CPU table at `ROOT` (or to no table).
    fn mmu_bound_to(root: u64) -> Mmu {
        let mut mmu = crate::mmu::test_mmu(&[]);
        mmu.bind(Pasid(1), GuestAddress(root)).unwrap();
        mmu
    }

    /// Puts a translation in PASID 1's device page table, and in the ATC if `cached`.
    fn device_map(mmu: &mut Mmu, va: u64, frame: u64, writable: bool, huge: bool, cached: bool) {
        let size = if huge {
            LeafSize::Huge
        } else {
            LeafSize::Small
        };
        mmu.map(Pasid(1), Iova(va), GuestAddress(frame), writable, size)
            .unwrap();
        if cached {
            // A walk caches what it finds.
            let mut c = GlobalCounters::default();
            mmu.translate(Pasid(1), Iova(va), false, &mut c).unwrap();
        }
    }

    #[test]
    fn audit_applies_the_per_access_rules_to_every_held_translation() {
        let mut t = Tables::new();
        t.map(0x1000, 0x5000, 12, true);
        t.map(0x2000, 0x6000, 12, false);
        t.map(0x3000, 0x7000, 12, true);
        let mut mmu = mmu_bound_to(ROOT);
        let mut o = Oracle::new(OracleMode::Off);
        let mut c = GlobalCounters::default();
        // Same frames: writable over writable (cached too), read-only over read-only, and a
        // read-only device translation of a CPU-writable page, which is fine.
        device_map(&mut mmu, 0x1000, 0x5000, true, false, true);
        device_map(&mut mmu, 0x2000, 0x6000, false, false, false);
        device_map(&mut mmu, 0x3000, 0x7000, false, false, false);
        let r = o.audit(&t.mem, &mmu, Pasid(1), &mut c);
        assert_eq!(
            r,
            AuditResult {
                checked: 4,
                disagreements: 0
            },
            "the mode does not gate an audit"
        );
        assert_eq!(c.violations, 0);

        // Writable where the CPU is read-only; another frame; no CPU mapping at all (even
        // read-only); and a stale ATC entry whose table leaf is already gone.
        inv(&mut o, 0x2000, 0x1000, 2);
        device_map(&mut mmu, 0x2000, 0x6000, true, false, false);
        device_map(&mut mmu, 0x3000, 0x8000, false, false, false);
        device_map(&mut mmu, 0x4000, 0x9000, false, false, false);
        device_map(&mut mmu, 0x5000, 0xa000, true, false, true);
        mmu.make_stale(Pasid(1), IovaRange::pages(0x5000, 0x1000).unwrap());
        let r = o.audit(&t.mem, &mmu, Pasid(1), &mut c);
        assert_eq!(
            r,
            AuditResult {
                checked: 6,
                disagreements: 4
            }
        );
        assert_eq!(c.violations, 4);
        let by_va = |va: u64| {
            o.samples()
                .iter()
                .find(|s| s.violation.va == Iova(va))
                .unwrap_or_else(|| panic!("no sample for {va:#x}"))
        };
        let s = by_va(0x2000);
        assert_eq!(s.violation.access, Access::Audit);
        assert_eq!(s.violation.cpu.map(|c| c.writable), Some(false));
        assert_eq!(s.history.len(), 1, "the sample carries the page's history");
        assert_eq!(
            by_va(0x3000).violation.cpu.map(|c| c.gpa),
            Some(GuestAddress(0x7000))
        );
        assert_eq!(by_va(0x4000).violation.cpu, None);
        assert_eq!(by_va(0x5000).violation.device.gpa, GuestAddress(0xa000));
        assert!(by_va(0x5000).violation.to_string().contains("audit"));

        // Nothing to check against: no CPU table, or no such PASID.
        let mut c = GlobalCounters::default();
        let mut unrooted = mmu_bound_to(0);
        device_map(&mut unrooted, 0x4000, 0x9000, false, false, false);
        assert_eq!(
            o.audit(&t.mem, &unrooted, Pasid(1), &mut c),
            AuditResult::default()
        );
        assert_eq!(
            o.audit(&t.mem, &mmu, Pasid(2), &mut c),
            AuditResult::default()
        );
        assert_eq!(c.violations, 0);
    }

    #[test]
    fn audit_of_a_2mib_device_leaf_checks_every_page_under_it() {
        const VA: u64 = 0x20_0000;
        const FRAME: u64 = 0x40_0000;
        let mut t = Tables::new();
        let mut mmu = mmu_bound_to(ROOT);
        let mut o = Oracle::default();
        let mut c = GlobalCounters::default();
        device_map(&mut mmu, VA, FRAME, true, true, true);
        // Over a CPU 2 MiB leaf of the same frames.
        t.map(VA, FRAME, 21, true);
        let r = o.audit(&t.mem, &mmu, Pasid(1), &mut c);
        assert_eq!((r.checked, r.disagreements), (2, 0));
        // Over 512 CPU 4 KiB pages: fine while all are there and writable...
        let pd_entry = t.tables.entry_of(&t.mem, VA, 21).unwrap();
        t.mem.write_obj(0u64, pd_entry).unwrap();
        t.tables
            .map_pages(&t.mem, VA, FRAME, PAGES_PER_2M, true)
            .unwrap();
        assert_eq!(o.audit(&t.mem, &mmu, Pasid(1), &mut c).disagreements, 0);
        // ...but one page the CPU no longer maps, near the end, makes the leaf stale: once
        // per copy (ATC and table), however many pages disagree.
        let gone = VA + 500 * PAGE_SIZE;
        t.tables.unmap_page(&t.mem, gone).unwrap();
        t.tables
            .map(&t.mem, gone + PAGE_SIZE, 0x1000, CpuLeaf::Small, true)
            .unwrap();
        let r = o.audit(&t.mem, &mmu, Pasid(1), &mut c);
        assert_eq!((r.checked, r.disagreements), (2, 2));
        assert_eq!(c.violations, 2);
        assert_eq!(
            o.samples()[0].violation.va,
            Iova(gone),
            "the first stale page"
        );
        assert_eq!(
            o.samples()[0].violation.device.gpa,
            GuestAddress(FRAME + 500 * PAGE_SIZE)
        );
    }

    /// 4 KiB pages in 2 MiB.
    const PAGES_PER_2M: u64 = 512;

    #[test]
    fn history_is_bounded_per_pasid() {
        let mut o = Oracle::default();
        for i in 0..(HISTORY_PER_PASID as u64 + 10) {
            inv(&mut o, i * 0x1000, 0x1000, 0);
        }
        assert_eq!(o.history[&Pasid(1)].len(), HISTORY_PER_PASID);
        assert_eq!(o.history[&Pasid(1)][0].seq, 11);
        o.forget_pasid(Pasid(1));
        assert!(o.history.is_empty());
    }
}

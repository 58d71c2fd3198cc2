//! The structs that cross the virtio queues, exactly as `device-model/SPEC.md` and
//! `guest-driver/include/vgpu_wire.h` lay them out.
//!
//! Fields are plain integers: every field is little-endian on the wire and the device only
//! builds for little-endian hosts (checked below), so no byte swapping is needed.
//! `tests/wire_abi.rs` compiles the C header and compares every struct, field, offset and
//! constant, both ways: [`C_CONSTANTS`] names every constant of this file.

use serde::{Deserialize, Serialize};
use vm_memory::ByteValued;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "the wire structs are little-endian; this device model assumes a little-endian host"
);

/// Virtio device id of the virtual GPU.
pub const VIRTIO_ID_VGPU: u32 = 63;
/// Index of the command queue.
pub const QUEUE_COMMAND: u16 = 0;
/// Index of the fault queue.
pub const QUEUE_FAULT: u16 = 1;
/// Size of the command queue.
pub const COMMAND_QUEUE_SIZE: u16 = 128;
/// Size of the fault queue.
pub const FAULT_QUEUE_SIZE: u16 = 64;
/// The device's page size: every range and address on the wire is aligned to it.
pub const PAGE_SIZE: u64 = 4096;

/// Command opcodes (`vgpu_cmd.opcode`).
pub mod opcode {
    /// Create an address space.
    pub const BIND: u32 = 1;
    /// Destroy an address space.
    pub const UNBIND: u32 = 2;
    /// Fill page-table entries from the payload.
    pub const MAP: u32 = 3;
    /// Drop or downgrade translations of a range.
    pub const INVALIDATE: u32 = 4;
    /// Run a job on a range.
    pub const JOB: u32 = 5;
    /// Fail the job stalled on a fault.
    pub const FAULT_FAIL: u32 = 6;
    /// Read the device counters.
    pub const COUNTERS: u32 = 7;
    /// Check every translation of a PASID against the guest CPU page table.
    pub const AUDIT: u32 = 8;
}

/// Response status (`vgpu_resp.status`).
pub mod status {
    /// Done.
    pub const OK: u32 = 0;
    /// Unknown opcode.
    pub const BAD_OPCODE: u32 = 1;
    /// Unknown, unbound, or already bound PASID.
    pub const BAD_PASID: u32 = 2;
    /// Unaligned, empty, overflowing, beyond 2^47, or over the payload.
    pub const BAD_RANGE: u32 = 3;
    /// Missing or short buffers, wrong direction.
    pub const BAD_CHAIN: u32 = 4;
    /// A job's fault was answered with FAULT_FAIL, or its PASID went away.
    pub const FAULT: u32 = 5;
    /// Unknown job op, bad alignment.
    pub const BAD_JOB: u32 = 6;
    /// Too many stalled jobs.
    pub const BUSY: u32 = 7;
}

/// Index of the per-event counters: the kernel's `enum mmu_notifier_event` (6.1).
pub mod event {
    /// The range is unmapped.
    pub const UNMAP: u32 = 0;
    /// The range is cleared (e.g. madvise(DONTNEED)).
    pub const CLEAR: u32 = 1;
    /// mprotect() on the vma.
    pub const PROTECTION_VMA: u32 = 2;
    /// Protection change of single pages.
    pub const PROTECTION_PAGE: u32 = 3;
    /// Soft-dirty tracking write-protects the range.
    pub const SOFT_DIRTY: u32 = 4;
    /// The address space goes away.
    pub const RELEASE: u32 = 5;
    /// Pages migrate.
    pub const MIGRATE: u32 = 6;
    /// Exclusive device access.
    pub const EXCLUSIVE: u32 = 7;
    /// Number of events.
    pub const COUNT: usize = 8;
    /// The kernel's names without the `MMU_NOTIFY_` prefix, in counter order (the JSON keys
    /// of per-event tables).
    pub const NAMES: [&str; COUNT] = [
        "UNMAP",
        "CLEAR",
        "PROTECTION_VMA",
        "PROTECTION_PAGE",
        "SOFT_DIRTY",
        "RELEASE",
        "MIGRATE",
        "EXCLUSIVE",
    ];
}

/// `vgpu_cmd.flags` of MAP: `arg0` is the fault id this MAP answers.
pub const MAP_F_FAULT_REPLY: u32 = 1 << 0;

/// INVALIDATE: the notifier may sleep.
pub const INV_F_BLOCKABLE: u32 = 1 << 0;
/// INVALIDATE: the event's owner is this driver.
pub const INV_F_OWNER_MATCH: u32 = 1 << 1;
/// INVALIDATE: only remove write permission.
pub const INV_F_DOWNGRADE: u32 = 1 << 2;
/// INVALIDATE: the driver forgets the range.
pub const INV_F_RELEASE_TRACKING: u32 = 1 << 3;

/// INVALIDATE `arg0`: the vma is readable.
pub const PROT_READ: u64 = 1 << 0;
/// INVALIDATE `arg0`: the vma is writable.
pub const PROT_WRITE: u64 = 1 << 1;

/// COUNTERS: reset the counters after reading them.
pub const COUNTERS_F_RESET: u32 = 1 << 0;

/// Job ops (`vgpu_cmd.flags` of JOB).
pub mod job_op {
    /// Write `arg0 ^ offset` at every 8-byte offset.
    pub const FILL: u32 = 1;
    /// FNV-1a-64 of the range's bytes.
    pub const CHECKSUM: u32 = 2;
    /// Copy from `arg0` to `start`.
    pub const COPY: u32 = 3;
    /// Copy the range into the driver's pages listed in the payload.
    pub const COPY_TO_DMA: u32 = 4;
    /// Copy the driver's pages listed in the payload into the range.
    pub const COPY_FROM_DMA: u32 = 5;
}

/// `vgpu_map_entry`: the page is mapped.
pub const MAP_VALID: u64 = 1 << 0;
/// `vgpu_map_entry`: the page is writable.
pub const MAP_WRITE: u64 = 1 << 1;
/// `vgpu_map_entry`: the guest-physical address bits.
pub const MAP_GPA_MASK: u64 = !0xfff;

/// `vgpu_fault.flags`: the access was a write.
pub const FAULT_F_WRITE: u32 = 1 << 0;

/// `struct vgpu_config`: the read-only device configuration space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// PASIDs 1..=max_pasids are valid.
    pub max_pasids: u32,
    /// Most entries in one MAP payload.
    pub max_map_pages: u32,
    /// ATC capacity in translations.
    pub atc_entries: u32,
    /// ATC associativity.
    pub atc_ways: u32,
    /// Bytes the driver should map around a faulting address.
    pub fault_ahead: u32,
    /// Zero.
    #[serde(skip)]
    pub reserved: [u32; 3],
}

/// `struct vgpu_cmd`: the device-readable head of every request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cmd {
    /// One of [`opcode`].
    pub opcode: u32,
    /// The address space.
    pub pasid: u32,
    /// Range start (device virtual address).
    pub start: u64,
    /// Range length in bytes.
    pub length: u64,
    /// Per opcode.
    pub arg0: u64,
    /// Per opcode.
    pub arg1: u64,
    /// INVALIDATE: the mmu-notifier event.
    pub event: u32,
    /// Per opcode.
    pub flags: u32,
}

/// `struct vgpu_resp`: the device-writable response of every request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resp {
    /// One of [`status`].
    pub status: u32,
    /// Zero.
    #[serde(skip)]
    pub reserved: u32,
    /// Per opcode.
    pub value0: u64,
    /// Per opcode.
    pub value1: u64,
}

/// `struct vgpu_map_entry`: one page of a MAP payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapEntry {
    /// Guest-physical address | [`MAP_VALID`] | [`MAP_WRITE`].
    pub gpa_flags: u64,
}

/// `struct vgpu_fault`: a device page request posted on the fault queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fault {
    /// Nonzero; echoed by MAP (`MAP_F_FAULT_REPLY`) or FAULT_FAIL.
    pub fault_id: u64,
    /// The job's `arg1`.
    pub job_id: u64,
    /// Faulting virtual address, page aligned.
    pub address: u64,
    /// The address space.
    pub pasid: u32,
    /// [`FAULT_F_WRITE`] when the access was a write.
    pub flags: u32,
}

/// `struct vgpu_event_counters`: the counters of one mmu-notifier event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventCounters {
    /// INVALIDATE commands received.
    pub notifications: u64,
    /// ATS invalidation requests sent to the ATC.
    pub ats_invalidations: u64,
    /// Whole-PASID invalidations.
    pub pasid_invalidations: u64,
    /// Pages covered by the ranges.
    pub pages_invalidated: u64,
    /// ATC entries actually dropped.
    pub atc_entries_dropped: u64,
    /// Invalidations that dropped no ATC entry and no PTE.
    pub useless_invalidations: u64,
    /// Faults on pages whose translation an invalidation of this event removed.
    pub refaults: u64,
    /// Invalidations that downgraded instead of dropping.
    pub downgrades: u64,
    /// 2 MiB leaves split into 4 KiB leaves.
    pub leaf_splits: u64,
    /// Zero.
    #[serde(skip)]
    pub reserved: [u64; 7],
}

/// `struct vgpu_global_counters`: the counters that belong to no event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlobalCounters {
    /// Device page faults raised.
    pub device_faults: u64,
    /// Jobs that ended with OK.
    pub jobs_completed: u64,
    /// Jobs that ended with an error.
    pub jobs_failed: u64,
    /// MAP commands applied.
    pub maps: u64,
    /// Pages mapped by MAP commands.
    pub pages_mapped: u64,
    /// Malformed commands.
    pub command_errors: u64,
    /// ATC lookups that hit.
    pub atc_hits: u64,
    /// ATC lookups that missed.
    pub atc_misses: u64,
    /// Page-table walks.
    pub page_walks: u64,
    /// Reserved for the coherence oracle: device accesses that disagreed with the
    /// process's page table. The device model's translation path never counts here.
    pub violations: u64,
    /// Bytes jobs read from guest memory.
    pub bytes_read: u64,
    /// Bytes jobs wrote to guest memory.
    pub bytes_written: u64,
    /// Writes that found only a read-only translation (and so faulted).
    pub permission_faults: u64,
    /// Times the driver's CPU snapshot for a fault was invalidated before it could map it
    /// (MAP `arg1`, as the driver reports it): how often the fault path lost a race.
    pub fault_retries: u64,
    /// Zero.
    #[serde(skip)]
    pub reserved: [u64; 18],
}

/// `struct vgpu_counters`: what COUNTERS writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Indexed by [`event`]; in JSON an object keyed by event name.
    #[serde(with = "by_event")]
    pub events: [EventCounters; event::COUNT],
    /// Counters of no event.
    pub global: GlobalCounters,
}

// SAFETY: repr(C) structs of u32/u64 fields with no implicit padding (the size asserts below
// prove it); every bit pattern is a valid value.
unsafe impl ByteValued for Config {}
// SAFETY: as above: no implicit padding, every value valid.
unsafe impl ByteValued for Cmd {}
// SAFETY: as above: no implicit padding, every value valid.
unsafe impl ByteValued for Resp {}
// SAFETY: as above: a single u64.
unsafe impl ByteValued for MapEntry {}
// SAFETY: as above: no implicit padding, every value valid.
unsafe impl ByteValued for Fault {}
// SAFETY: as above: only u64 fields.
unsafe impl ByteValued for EventCounters {}
// SAFETY: as above: only u64 fields.
unsafe impl ByteValued for GlobalCounters {}
// SAFETY: as above: arrays of ByteValued structs without padding.
unsafe impl ByteValued for Counters {}

const _: () = assert!(std::mem::size_of::<Config>() == 32);
const _: () = assert!(std::mem::size_of::<Cmd>() == 48);
const _: () = assert!(std::mem::size_of::<Resp>() == 24);
const _: () = assert!(std::mem::size_of::<MapEntry>() == 8);
const _: () = assert!(std::mem::size_of::<Fault>() == 32);
const _: () = assert!(std::mem::size_of::<EventCounters>() == 16 * 8);
const _: () = assert!(std::mem::size_of::<GlobalCounters>() == 32 * 8);
const _: () = assert!(std::mem::size_of::<Counters>() == 8 * 16 * 8 + 32 * 8);

/// Serde for a per-event table (`[T; event::COUNT]`, indexed by the wire value) as a JSON
/// object keyed by event name. Reading accepts missing events (zero) and refuses unknown
/// ones. Use with `#[serde(with = "protocol::wire::by_event")]`.
pub mod by_event {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::event;
    use super::event::NAMES as EVENT_NAMES;

    /// Writes `table` as `{"UNMAP": ..., "CLEAR": ..., ...}`, in counter order.
    pub fn serialize<S: Serializer, T: Serialize>(
        table: &[T; event::COUNT],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(event::COUNT))?;
        for (name, value) in EVENT_NAMES.iter().zip(table) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }

    /// Reads a table written by [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
        d: D,
    ) -> Result<[T; event::COUNT], D::Error> {
        let map = BTreeMap::<String, T>::deserialize(d)?;
        let mut table: [T; event::COUNT] = Default::default();
        for (name, value) in map {
            let i = EVENT_NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| D::Error::custom(format!("unknown mmu-notifier event {name:?}")))?;
            table[i] = value;
        }
        Ok(table)
    }
}

/// The C name of a constant of this file, its Rust path and its value.
macro_rules! c_name {
    ($c:literal, $($path:ident)::+) => {
        ($c, stringify!($($path)::+), $($path)::+ as u64)
    };
}

/// Every constant of this file with the name `vgpu_wire.h` gives it (C name, Rust path,
/// value). `tests/wire_abi.rs` checks that the header defines exactly these names, with
/// these values, and that no constant of this file is missing here.
pub const C_CONSTANTS: &[(&str, &str, u64)] = &[
    c_name!("VIRTIO_ID_VGPU", VIRTIO_ID_VGPU),
    c_name!("VGPU_QUEUE_COMMAND", QUEUE_COMMAND),
    c_name!("VGPU_QUEUE_FAULT", QUEUE_FAULT),
    c_name!("VGPU_COMMAND_QUEUE_SIZE", COMMAND_QUEUE_SIZE),
    c_name!("VGPU_FAULT_QUEUE_SIZE", FAULT_QUEUE_SIZE),
    c_name!("VGPU_PAGE_SIZE", PAGE_SIZE),
    c_name!("VGPU_CMD_BIND", opcode::BIND),
    c_name!("VGPU_CMD_UNBIND", opcode::UNBIND),
    c_name!("VGPU_CMD_MAP", opcode::MAP),
    c_name!("VGPU_CMD_INVALIDATE", opcode::INVALIDATE),
    c_name!("VGPU_CMD_JOB", opcode::JOB),
    c_name!("VGPU_CMD_FAULT_FAIL", opcode::FAULT_FAIL),
    c_name!("VGPU_CMD_COUNTERS", opcode::COUNTERS),
    c_name!("VGPU_CMD_AUDIT", opcode::AUDIT),
    c_name!("VGPU_S_OK", status::OK),
    c_name!("VGPU_S_BAD_OPCODE", status::BAD_OPCODE),
    c_name!("VGPU_S_BAD_PASID", status::BAD_PASID),
    c_name!("VGPU_S_BAD_RANGE", status::BAD_RANGE),
    c_name!("VGPU_S_BAD_CHAIN", status::BAD_CHAIN),
    c_name!("VGPU_S_FAULT", status::FAULT),
    c_name!("VGPU_S_BAD_JOB", status::BAD_JOB),
    c_name!("VGPU_S_BUSY", status::BUSY),
    c_name!("VGPU_EV_UNMAP", event::UNMAP),
    c_name!("VGPU_EV_CLEAR", event::CLEAR),
    c_name!("VGPU_EV_PROTECTION_VMA", event::PROTECTION_VMA),
    c_name!("VGPU_EV_PROTECTION_PAGE", event::PROTECTION_PAGE),
    c_name!("VGPU_EV_SOFT_DIRTY", event::SOFT_DIRTY),
    c_name!("VGPU_EV_RELEASE", event::RELEASE),
    c_name!("VGPU_EV_MIGRATE", event::MIGRATE),
    c_name!("VGPU_EV_EXCLUSIVE", event::EXCLUSIVE),
    c_name!("VGPU_EV_COUNT", event::COUNT),
    c_name!("VGPU_MAP_F_FAULT_REPLY", MAP_F_FAULT_REPLY),
    c_name!("VGPU_INV_F_BLOCKABLE", INV_F_BLOCKABLE),
    c_name!("VGPU_INV_F_OWNER_MATCH", INV_F_OWNER_MATCH),
    c_name!("VGPU_INV_F_DOWNGRADE", INV_F_DOWNGRADE),
    c_name!("VGPU_INV_F_RELEASE_TRACKING", INV_F_RELEASE_TRACKING),
    c_name!("VGPU_PROT_READ", PROT_READ),
    c_name!("VGPU_PROT_WRITE", PROT_WRITE),
    c_name!("VGPU_COUNTERS_F_RESET", COUNTERS_F_RESET),
    c_name!("VGPU_JOB_FILL", job_op::FILL),
    c_name!("VGPU_JOB_CHECKSUM", job_op::CHECKSUM),
    c_name!("VGPU_JOB_COPY", job_op::COPY),
    c_name!("VGPU_JOB_COPY_TO_DMA", job_op::COPY_TO_DMA),
    c_name!("VGPU_JOB_COPY_FROM_DMA", job_op::COPY_FROM_DMA),
    c_name!("VGPU_MAP_VALID", MAP_VALID),
    c_name!("VGPU_MAP_WRITE", MAP_WRITE),
    c_name!("VGPU_MAP_GPA_MASK", MAP_GPA_MASK),
    c_name!("VGPU_FAULT_F_WRITE", FAULT_F_WRITE),
];

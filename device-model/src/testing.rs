//! The driver side of the virtual GPU, for tests: guest memory, split virtqueues laid out
//! and filled as the guest driver does, and helpers that send commands, post fault buffers,
//! bind with CPU page tables written by [`x86`](crate::x86), map and run jobs.
//!
//! Built for this crate's tests, and for other crates' with the `test-utils` feature
//! (`device-model = { path = ..., features = ["test-utils"] }`), so a VMM's adapter of the
//! device can drive it through the same rig:
//!
//! - [`DriverQueue`]: one split virtqueue in guest memory seen from the driver: chains in,
//!   used entries out, descriptors recycled when the device returns them. It knows nothing
//!   of the virtual GPU (any virtio device's test can use it).
//! - [`VgpuDriver`]: the virtual GPU's two queues in the [`layout`], a pool of buffers, and
//!   the command and fault records as SPEC.md defines them. It does not run the device.
//! - [`Rig`]: a driver and the device (or anything that hosts it, through [`Notify`]),
//!   with one-call commands: [`Rig::run`], [`Rig::bind`], [`Rig::bind_with_tables`],
//!   [`Rig::map`], [`Rig::run_job`], [`Rig::invalidate`], [`Rig::answer_fault`].
//!
//! Everything here panics on misuse (a full descriptor table, a buffer pool spent, a record
//! the device should not have written): these are test helpers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::address::PAGE_SIZE;
use crate::config::VgpuConfig;
use crate::device::VgpuDevice;
use crate::wire::{self, opcode};
use crate::x86::{CpuLeaf, TableWriter};

/// Where the [`VgpuDriver`] puts things in guest memory.
pub mod layout {
    /// Bytes of guest RAM, from guest-physical 0.
    pub const RAM_SIZE: u64 = 0x100_0000;
    /// The command queue's descriptor table, then its available and used rings.
    pub const COMMAND_QUEUE: u64 = 0;
    /// The fault queue's rings.
    pub const FAULT_QUEUE: u64 = 0x8000;
    /// Command, payload, response and fault buffers are allocated from here...
    pub const BUFFERS: u64 = 0x10_0000;
    /// ...up to here, where the pages a test maps for the device begin.
    pub const FRAMES: u64 = 0x40_0000;
    /// CPU page tables written by [`super::VgpuDriver::cpu_tables`] start here (the root
    /// first), up to [`RAM_SIZE`].
    pub const CPU_TABLES: u64 = 0x80_0000;
}

/// The job id the rig's jobs carry (`arg1`), echoed in their fault records.
pub const JOB_ID: u64 = 0x10b;

/// Guest RAM of `size` bytes at guest-physical 0.
pub fn guest_memory(size: u64) -> Arc<GuestMemoryMmap> {
    let size = usize::try_from(size).expect("guest memory size");
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory"))
}

/// A command with its most used fields; the rest are zero.
pub fn cmd(opcode: u32, pasid: u32, start: u64, length: u64) -> wire::Cmd {
    wire::Cmd {
        opcode,
        pasid,
        start,
        length,
        ..Default::default()
    }
}

/// A MAP payload entry: `gpa`, valid, writable if asked.
pub fn entry(gpa: u64, writable: bool) -> u64 {
    gpa | wire::MAP_VALID | if writable { wire::MAP_WRITE } else { 0 }
}

/// A response, to compare with what the device wrote.
pub fn resp(status: u32, value0: u64, value1: u64) -> wire::Resp {
    wire::Resp {
        status,
        reserved: 0,
        value0,
        value1,
    }
}

/// One buffer of a chain, as the driver describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub device_writes: bool,
}

/// A buffer the device reads.
pub fn readable(addr: u64, len: u32) -> Buffer {
    Buffer {
        addr,
        len,
        device_writes: false,
    }
}

/// A buffer the device writes.
pub fn writable(addr: u64, len: u32) -> Buffer {
    Buffer {
        addr,
        len,
        device_writes: true,
    }
}

/// Where a raw descriptor's `next` field points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The `i`-th descriptor of the same chain (0 = its head).
    Slot(u16),
    /// Descriptor table index `n`, whatever it holds (or beyond the table).
    Index(u16),
}

/// A descriptor written exactly as given, for chains a well-behaved driver would not build
/// (loops, links out of the table, NEXT on the last descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// `VRING_DESC_F_*` flags, as they are.
    pub flags: u16,
    /// The `next` field.
    pub next: Next,
}

impl RawDesc {
    /// A descriptor of `len` bytes at `addr` with `flags` and `next`, as they are.
    pub fn new(addr: u64, len: u32, flags: u16, next: Next) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }
}

/// Bytes of a descriptor.
const DESC_SIZE: u64 = 16;
/// Bytes of the flags and index before an available or used ring.
const RING_HEADER: u64 = 4;
/// Bytes of a used-ring element.
const USED_ELEM_SIZE: u64 = 8;

/// One split virtqueue from the driver's side: a descriptor table, an available ring and a
/// used ring in guest memory, back to back with the alignments virtio 1.2 (2.7) asks for.
///
/// (virtio-queue 0.18's `MockSplitQueue` places the used ring `size` bytes after the
/// available ring's entries, which are `2 * size` bytes long: past half the ring the two
/// overlap. This queue computes its own layout so it can go round its rings.)
pub struct DriverQueue {
    mem: Arc<GuestMemoryMmap>,
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    /// Whether each descriptor is free.
    free: Vec<bool>,
    /// Where the next chain's search for free descriptors starts.
    cursor: u16,
    /// The descriptors of each chain the device still holds, by head.
    outstanding: HashMap<u16, Vec<u16>>,
    /// Used entries read while reclaiming descriptors, not yet handed to the test.
    returned: VecDeque<(u16, u32)>,
    /// Used entries seen so far (the used ring's index we have read up to).
    used_seen: u16,
    /// Chains offered so far (the available ring's index).
    avail_idx: u16,
}

impl DriverQueue {
    /// A queue of `size` descriptors at `base` (16-byte aligned), rings zeroed.
    pub fn new(mem: Arc<GuestMemoryMmap>, base: GuestAddress, size: u16) -> Self {
        let n = u64::from(size);
        let desc_table = base;
        let avail_ring = GuestAddress(base.0 + DESC_SIZE * n);
        // flags, idx, ring[size], used_event; the used ring is 4-byte aligned.
        let avail_end = avail_ring.0 + RING_HEADER + 2 * n + 2;
        let used_ring = GuestAddress(avail_end.next_multiple_of(4));
        let used_end = used_ring.0 + RING_HEADER + USED_ELEM_SIZE * n + 2;
        let zeroes = vec![0u8; (used_end - base.0) as usize];
        mem.write_slice(&zeroes, base).expect("queue memory");
        DriverQueue {
            mem,
            size,
            desc_table,
            avail_ring,
            used_ring,
            free: vec![true; usize::from(size)],
            cursor: 0,
            outstanding: HashMap::new(),
            returned: VecDeque::new(),
            used_seen: 0,
            avail_idx: 0,
        }
    }

    /// The device's side of this queue, configured as a driver configures it through the
    /// transport (size, ring addresses, ready), for activating a device.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc_table);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail_ring);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used_ring);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        assert!(q.is_valid(self.mem.as_ref()), "queue layout");
        q
    }

    /// The queue's size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The descriptor table's address (what a transport's queue descriptor address is
    /// set to).
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// The available ring's address (its flags come first).
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// The used ring's address.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// Sets the available ring's flags (`VRING_AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags, self.avail_ring).unwrap();
    }

    /// Offers a well-formed chain of `bufs`, linked in order; returns its head.
    pub fn add_chain(&mut self, bufs: &[Buffer]) -> u16 {
        let descs: Vec<RawDesc> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == bufs.len();
                let mut flags = if b.device_writes {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDesc {
                    addr: b.addr,
                    len: b.len,
                    flags,
                    next: Next::Slot(if last { 0 } else { i as u16 + 1 }),
                }
            })
            .collect();
        self.add_raw_chain(&descs)
    }

    /// Writes `descs` into consecutive free descriptors (wrapping at the end of the table)
    /// exactly as given, and offers the first; returns its head.
    pub fn add_raw_chain(&mut self, descs: &[RawDesc]) -> u16 {
        assert!(!descs.is_empty(), "a chain has a descriptor");
        let slots = self.take_slots(descs.len());
        for (&slot, d) in slots.iter().zip(descs) {
            let next = match d.next {
                Next::Slot(i) => slots[usize::from(i)],
                Next::Index(n) => n,
            };
            let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, d.flags, next));
            let at = self.desc_table.0 + u64::from(slot) * DESC_SIZE;
            self.mem.write_obj(raw, GuestAddress(at)).unwrap();
        }
        let head = slots[0];
        self.offer(head);
        self.outstanding.insert(head, slots);
        head
    }

    /// Offers `head` on the available ring as it is, with no descriptor written or taken:
    /// a head a well-behaved driver would not offer (one beyond the table, or one the
    /// device already holds). The device must never return it.
    pub fn offer_head(&mut self, head: u16) {
        self.offer(head);
    }

    /// Puts `head` in the next slot of the available ring and publishes the new index.
    fn offer(&mut self, head: u16) {
        let ring_slot = u64::from(self.avail_idx % self.size);
        let at = self.avail_ring.0 + RING_HEADER + ring_slot * 2;
        self.mem.write_obj(head, GuestAddress(at)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail_ring.0 + 2))
            .unwrap();
    }

    /// `n` consecutive free descriptors, from the cursor on.
    fn take_slots(&mut self, n: usize) -> Vec<u16> {
        let size = usize::from(self.size);
        assert!(n <= size, "a chain of {n} descriptors in a table of {size}");
        let find = |free: &[bool], cursor: usize| {
            (0..size)
                .map(|k| (cursor + k) % size)
                .find(|&start| (0..n).all(|i| free[(start + i) % size]))
        };
        let start = find(&self.free, usize::from(self.cursor)).or_else(|| {
            self.reclaim();
            find(&self.free, usize::from(self.cursor))
        });
        let start = start.expect("descriptor table full: the device holds every descriptor");
        let slots: Vec<u16> = (0..n).map(|i| ((start + i) % size) as u16).collect();
        for &s in &slots {
            self.free[usize::from(s)] = false;
        }
        self.cursor = ((start + n) % size) as u16;
        slots
    }

    /// Reads the used ring up to its index, frees the returned chains' descriptors and
    /// keeps the entries for [`Self::used`].
    fn reclaim(&mut self) {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.used_ring.0 + 2))
            .unwrap();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used_ring.0 + RING_HEADER + slot * USED_ELEM_SIZE;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            let head = u16::try_from(id).expect("used id is a descriptor index");
            let chain = self
                .outstanding
                .remove(&head)
                .unwrap_or_else(|| panic!("the device returned chain {head}, not offered"));
            for s in chain {
                self.free[usize::from(s)] = true;
            }
            self.returned.push_back((head, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
    }

    /// The chains the device returned since the last call, in order: (head, bytes
    /// written).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        self.reclaim();
        self.returned.drain(..).collect()
    }

    /// The address of descriptor `index`'s buffer.
    pub fn buffer_of(&self, index: u16) -> u64 {
        let at = self.desc_table.0 + u64::from(index) * DESC_SIZE;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}

/// A command on the command queue: its head and where its response (and data) go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Head index of its chain.
    pub head: u16,
    /// Address of its `struct vgpu_resp`.
    pub resp: u64,
    /// Address of its data buffer (COUNTERS), if it has one.
    pub data: u64,
}

/// The guest driver's view of the virtual GPU: its two queues in [`layout`] and a pool of
/// buffers. It builds requests exactly as the guest driver does and reads what the device
/// wrote; who runs the device is the caller's business (see [`Rig`]).
pub struct VgpuDriver {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// Queue 0.
    pub command_queue: DriverQueue,
    /// Queue 1.
    pub fault_queue: DriverQueue,
    next_buffer: u64,
    /// Fault buffers posted and not yet returned.
    fault_buffers: BTreeSet<u64>,
}

impl VgpuDriver {
    /// Guest memory of [`layout::RAM_SIZE`] and the queues at their SPEC.md sizes.
    pub fn new() -> Self {
        Self::with_queue_sizes(wire::COMMAND_QUEUE_SIZE, wire::FAULT_QUEUE_SIZE)
    }

    /// The same with smaller queues (a transport may configure less than the maximum).
    pub fn with_queue_sizes(command: u16, fault: u16) -> Self {
        let mem = guest_memory(layout::RAM_SIZE);
        VgpuDriver {
            command_queue: DriverQueue::new(
                mem.clone(),
                GuestAddress(layout::COMMAND_QUEUE),
                command,
            ),
            fault_queue: DriverQueue::new(mem.clone(), GuestAddress(layout::FAULT_QUEUE), fault),
            mem,
            next_buffer: layout::BUFFERS,
            fault_buffers: BTreeSet::new(),
        }
    }

    /// The device's side of both queues, command queue first, for activation.
    pub fn device_queues(&self) -> [Queue; 2] {
        [
            self.command_queue.device_queue(),
            self.fault_queue.device_queue(),
        ]
    }

    /// A fresh buffer of `len` bytes (64-byte aligned, never reused).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buffer;
        self.next_buffer += len.next_multiple_of(64).max(64);
        assert!(self.next_buffer <= layout::FRAMES, "buffer pool spent");
        at
    }

    /// Writes `c`, its payload of u64 entries and a response buffer (and `data_len` bytes
    /// of data buffer) and offers the chain on the command queue.
    pub fn send_with(&mut self, c: &wire::Cmd, payload: &[u64], data_len: u32) -> Sent {
        let cmd_len = std::mem::size_of::<wire::Cmd>() as u32;
        let resp_len = std::mem::size_of::<wire::Resp>() as u32;
        let cmd_at = self.alloc(cmd_len.into());
        self.mem.write_obj(*c, GuestAddress(cmd_at)).unwrap();
        let mut bufs = vec![readable(cmd_at, cmd_len)];
        if !payload.is_empty() {
            let at = self.alloc(payload.len() as u64 * 8);
            let bytes: Vec<u8> = payload.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
            bufs.push(readable(at, bytes.len() as u32));
        }
        let resp = self.alloc(resp_len.into());
        bufs.push(writable(resp, resp_len));
        let data = self.alloc(data_len.into());
        if data_len > 0 {
            bufs.push(writable(data, data_len));
        }
        let head = self.command_queue.add_chain(&bufs);
        Sent { head, resp, data }
    }

    /// Offers `c` with a response buffer only.
    pub fn send(&mut self, c: &wire::Cmd) -> Sent {
        self.send_with(c, &[], 0)
    }

    /// The response the device wrote for `s` (whatever is there if it did not).
    pub fn resp(&self, s: &Sent) -> wire::Resp {
        self.mem.read_obj(GuestAddress(s.resp)).unwrap()
    }

    /// What the device wrote in `s`'s data buffer.
    pub fn data<T: ByteValued>(&self, s: &Sent) -> T {
        self.mem.read_obj(GuestAddress(s.data)).unwrap()
    }

    /// The command chains the device returned since the last call: (head, bytes written).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        self.command_queue.used()
    }

    /// Posts `n` fault buffers of one `struct vgpu_fault` each; returns their addresses.
    pub fn post_fault_buffers(&mut self, n: usize) -> Vec<u64> {
        let len = std::mem::size_of::<wire::Fault>() as u32;
        (0..n)
            .map(|_| {
                let at = self.alloc(len.into());
                self.fault_queue.add_chain(&[writable(at, len)]);
                self.fault_buffers.insert(at);
                at
            })
            .collect()
    }

    /// The fault records the device returned since the last call, in order. Each must fill
    /// a fault buffer this driver posted.
    pub fn faults(&mut self) -> Vec<wire::Fault> {
        let len = std::mem::size_of::<wire::Fault>() as u32;
        self.fault_queue
            .used()
            .into_iter()
            .map(|(head, written)| {
                let at = self.fault_queue.buffer_of(head);
                assert_eq!(written, len, "fault record of buffer {at:#x}");
                assert!(
                    self.fault_buffers.remove(&at),
                    "{at:#x} is no posted fault buffer"
                );
                self.mem.read_obj(GuestAddress(at)).unwrap()
            })
            .collect()
    }

    /// Writes a CPU page table at [`layout::CPU_TABLES`] mapping each `(va, frame,
    /// writable)` with a 4 KiB leaf, as a process's table would (BIND's `arg0` is its
    /// root). Tables are laid out in creation order: root, PDPT, PD, PT for the first page.
    pub fn cpu_tables(&self, pages: &[(u64, u64, bool)]) -> TableWriter {
        let mem = self.mem.as_ref();
        let mut t = TableWriter::new(
            mem,
            GuestAddress(layout::CPU_TABLES),
            GuestAddress(layout::RAM_SIZE),
        )
        .expect("CPU page-table root");
        for &(va, frame, writable) in pages {
            t.map(mem, va, frame, CpuLeaf::Small, writable)
                .expect("CPU page table");
        }
        t
    }
}

impl Default for VgpuDriver {
    fn default() -> Self {
        Self::new()
    }
}

/// What serves the driver's notifications: the device itself, or whatever hosts it (a
/// VMM's virtio adapter implements this for its tests).
pub trait Notify {
    /// The driver notified queue `queue` (0 commands, 1 faults).
    fn notify(&mut self, queue: u16);
}

impl<M: GuestMemory> Notify for VgpuDevice<M> {
    fn notify(&mut self, queue: u16) {
        match queue {
            wire::QUEUE_COMMAND => {
                self.process_command_queue();
            }
            wire::QUEUE_FAULT => {
                self.process_fault_queue();
            }
            _ => {}
        }
    }
}

/// A driver and the device it drives. Derefs to the [`VgpuDriver`], so `rig.used()`,
/// `rig.resp(..)` and `rig.mem` read as the driver does.
pub struct Rig<D = VgpuDevice> {
    /// The device (or its host).
    pub dev: D,
    /// The driver.
    pub driver: VgpuDriver,
}

impl Rig<VgpuDevice> {
    /// A device built as `config` says, activated on a new driver's queues.
    pub fn new(config: VgpuConfig) -> Self {
        let driver = VgpuDriver::new();
        let mut dev = VgpuDevice::new(config).expect("device configuration");
        let [command, fault] = driver.device_queues();
        dev.activate(driver.mem.clone(), command, fault);
        Rig { dev, driver }
    }
}

impl<D> Deref for Rig<D> {
    type Target = VgpuDriver;

    fn deref(&self) -> &VgpuDriver {
        &self.driver
    }
}

impl<D> DerefMut for Rig<D> {
    fn deref_mut(&mut self) -> &mut VgpuDriver {
        &mut self.driver
    }
}

impl<D: Notify> Rig<D> {
    /// A device host already activated on `driver`'s queues.
    pub fn with_device(dev: D, driver: VgpuDriver) -> Self {
        Rig { dev, driver }
    }

    /// Notifies the command queue.
    pub fn notify_commands(&mut self) {
        self.dev.notify(wire::QUEUE_COMMAND);
    }

    /// Notifies the fault queue.
    pub fn notify_faults(&mut self) {
        self.dev.notify(wire::QUEUE_FAULT);
    }

    /// Sends one command and notifies; it must complete at once, alone.
    pub fn run(&mut self, c: &wire::Cmd, payload: &[u64]) -> wire::Resp {
        let s = self.driver.send_with(c, payload, 0);
        self.notify_commands();
        assert_eq!(
            self.driver.used(),
            vec![(s.head, 24)],
            "opcode {}",
            c.opcode
        );
        self.driver.resp(&s)
    }

    /// Sends one command and notifies; other chains (jobs it resumed) may complete too.
    pub fn send_and_drain(&mut self, c: &wire::Cmd, payload: &[u64]) -> wire::Resp {
        let s = self.driver.send_with(c, payload, 0);
        self.notify_commands();
        assert!(self.driver.used().contains(&(s.head, 24)));
        self.driver.resp(&s)
    }

    /// BINDs `pasid` without a CPU page table; it must succeed.
    pub fn bind(&mut self, pasid: u32) {
        let r = self.run(&cmd(opcode::BIND, pasid, 0, 0), &[]);
        assert_eq!(r.status, wire::status::OK, "BIND {pasid}");
    }

    /// Writes a CPU page table mapping `pages` ([`VgpuDriver::cpu_tables`]) and BINDs
    /// `pasid` to it; it must succeed.
    pub fn bind_with_tables(&mut self, pasid: u32, pages: &[(u64, u64, bool)]) -> TableWriter {
        let tables = self.driver.cpu_tables(pages);
        let mut b = cmd(opcode::BIND, pasid, 0, 0);
        b.arg0 = tables.root().0;
        assert_eq!(self.run(&b, &[]).status, wire::status::OK, "BIND {pasid}");
        tables
    }

    /// MAPs `entries` (see [`entry`]) from `start`; it must complete at once.
    pub fn map(&mut self, pasid: u32, start: u64, entries: &[u64]) -> wire::Resp {
        let length = entries.len() as u64 * PAGE_SIZE;
        self.run(&cmd(opcode::MAP, pasid, start, length), entries)
    }

    /// Offers a JOB (`op` is a `job_op`, id [`JOB_ID`]) without notifying.
    pub fn job(&mut self, pasid: u32, op: u32, start: u64, length: u64, arg0: u64) -> Sent {
        let mut c = cmd(opcode::JOB, pasid, start, length);
        c.flags = op;
        c.arg0 = arg0;
        c.arg1 = JOB_ID;
        self.driver.send(&c)
    }

    /// Runs a JOB that must complete without faulting.
    pub fn run_job(
        &mut self,
        pasid: u32,
        op: u32,
        start: u64,
        length: u64,
        arg0: u64,
    ) -> wire::Resp {
        let s = self.job(pasid, op, start, length, arg0);
        self.notify_commands();
        assert_eq!(self.driver.used(), vec![(s.head, 24)], "the job completes");
        self.driver.resp(&s)
    }

    /// INVALIDATEs a range; it must complete at once (no `inval_latency_us`).
    pub fn invalidate(
        &mut self,
        pasid: u32,
        start: u64,
        len: u64,
        event: u32,
        flags: u32,
    ) -> wire::Resp {
        let mut c = cmd(opcode::INVALIDATE, pasid, start, len);
        c.event = event;
        c.flags = flags;
        self.run(&c, &[])
    }

    /// Answers `fault` with a MAP of `entries` from its address, as the driver's fault
    /// handler does; the job it resumes may complete too.
    pub fn answer_fault(&mut self, fault: &wire::Fault, entries: &[u64]) -> wire::Resp {
        let length = entries.len() as u64 * PAGE_SIZE;
        let mut m = cmd(opcode::MAP, fault.pasid, fault.address, length);
        m.flags = wire::MAP_F_FAULT_REPLY;
        m.arg0 = fault.fault_id;
        self.send_and_drain(&m, entries)
    }

    /// Answers `fault` with FAULT_FAIL and `errno`; the failed job completes too.
    pub fn fail_fault(&mut self, fault: &wire::Fault, errno: u64) -> wire::Resp {
        let mut ff = cmd(opcode::FAULT_FAIL, fault.pasid, 0, 0);
        ff.arg0 = fault.fault_id;
        ff.arg1 = errno;
        self.send_and_drain(&ff, &[])
    }

    /// COUNTERS through the queue for `pasid` (0 = the whole device).
    pub fn read_counters(&mut self, pasid: u32) -> wire::Counters {
        let size = std::mem::size_of::<wire::Counters>() as u32;
        let s = self
            .driver
            .send_with(&cmd(opcode::COUNTERS, pasid, 0, 0), &[], size);
        self.notify_commands();
        assert!(self.driver.used().contains(&(s.head, 24 + size)));
        self.driver.data(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_recycled_when_the_device_returns_them() {
        let mem = guest_memory(0x10_0000);
        let mut q = DriverQueue::new(mem.clone(), GuestAddress(0), 4);
        let mut dev = q.device_queue();
        // Twice round the table and its rings: every chain comes back as it was offered.
        for round in 0..8u64 {
            let a = q.add_chain(&[readable(0x8000 + round, 8), writable(0x9000, 8)]);
            let b = q.add_chain(&[writable(0xa000 + round, 4)]);
            for head in [a, b] {
                let chain = dev.pop_descriptor_chain(mem.as_ref()).unwrap();
                assert_eq!(chain.head_index(), head);
                dev.add_used(mem.as_ref(), head, 3).unwrap();
            }
            assert_eq!(q.used(), vec![(a, 3), (b, 3)]);
            assert_eq!(q.buffer_of(b), 0xa000 + round);
        }
        assert!(dev.pop_descriptor_chain(mem.as_ref()).is_none());
    }

    #[test]
    fn a_held_chain_keeps_its_descriptors() {
        let mem = guest_memory(0x10_0000);
        let mut q = DriverQueue::new(mem.clone(), GuestAddress(0), 4);
        let mut dev = q.device_queue();
        let held = q.add_chain(&[readable(0x8000, 8), writable(0x9000, 8)]);
        let c = dev.pop_descriptor_chain(mem.as_ref()).unwrap();
        assert_eq!(c.head_index(), held);
        let mut last = 0;
        for _ in 0..5 {
            let h = q.add_chain(&[writable(0xa000, 4), writable(0xb000, 4)]);
            assert!(h != held && h != held + 1, "{h} reuses the held chain");
            let c = dev.pop_descriptor_chain(mem.as_ref()).unwrap();
            dev.add_used(mem.as_ref(), c.head_index(), 0).unwrap();
            assert_eq!(q.used(), vec![(h, 0)]);
            last = h;
        }
        assert_eq!(last, 2);
    }

    #[test]
    fn a_head_offered_as_it_is_takes_no_descriptor() {
        let mem = guest_memory(0x10_0000);
        let mut q = DriverQueue::new(mem.clone(), GuestAddress(0x1000), 4);
        assert_eq!(q.desc_table(), GuestAddress(0x1000));
        let mut dev = q.device_queue();
        q.offer_head(9);
        let a = q.add_chain(&[writable(0x8000, 4)]);
        assert_eq!(a, 0, "the bogus head took no descriptor");
        let avail_idx: u16 = mem.read_obj(GuestAddress(q.avail_ring().0 + 2)).unwrap();
        assert_eq!(avail_idx, 2);
        // The device sees the bogus head first: its chain has no descriptor, and it cannot
        // go on the used ring.
        let bogus = dev.pop_descriptor_chain(mem.as_ref()).unwrap();
        assert_eq!(bogus.head_index(), 9);
        assert_eq!(bogus.count(), 0);
        assert!(dev.add_used(mem.as_ref(), 9, 0).is_err());
        let c = dev.pop_descriptor_chain(mem.as_ref()).unwrap();
        dev.add_used(mem.as_ref(), c.head_index(), 4).unwrap();
        assert_eq!(q.used(), vec![(a, 4)]);
    }

    #[test]
    #[should_panic(expected = "descriptor table full")]
    fn a_full_table_is_a_test_bug() {
        let mut q = DriverQueue::new(guest_memory(0x10_0000), GuestAddress(0), 2);
        q.add_chain(&[writable(0x8000, 4), writable(0x9000, 4)]);
        q.add_chain(&[writable(0x8000, 4)]);
    }
}

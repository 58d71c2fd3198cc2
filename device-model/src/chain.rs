//! Descriptor chains as the device reads them: the driver-readable buffers, then the
//! device-writable ones, checked before anything is trusted.
//!
//! virtio-queue's iterator already stops at a loop (after queue-size descriptors), at a
//! `next` index out of range and at an unreadable descriptor, but it stops silently. A
//! chain whose last descriptor still says NEXT was cut short for one of those reasons and
//! is malformed (virtio 1.2, 2.7.5.2: the chain must end with a descriptor without NEXT).

use std::ops::Deref;

use virtio_queue::{desc::split::Descriptor, DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Most descriptors the device accepts in one chain. A MAP payload of 512 entries fits in
/// one page, so a well-formed request never needs more than a handful.
pub const MAX_DESCRIPTORS: usize = 32;

/// A guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Bytes.
    pub len: u32,
}

/// What is wrong with a chain's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    #[error("more than {MAX_DESCRIPTORS} descriptors")]
    TooLong,
    /// The chain loops, points outside the table, or a descriptor could not be read.
    #[error("chain is cut short (loop or bad next index)")]
    Truncated,
    /// A driver-readable buffer after a device-writable one.
    #[error("readable buffer after a writable one")]
    WrongDirection,
}

/// A chain taken off a queue, split into its readable and writable buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Head index, to return the chain on the used ring.
    pub head: u16,
    /// Driver-readable buffers, in order.
    pub readable: Vec<Buffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buffer>,
    /// The first defect found; the buffers before it are kept so an error can be reported.
    pub defect: Option<ChainError>,
}

impl Request {
    /// Splits `chain`.
    pub fn parse<M>(chain: DescriptorChain<M>) -> Request
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut req = Request {
            head: chain.head_index(),
            readable: Vec::new(),
            writable: Vec::new(),
            defect: None,
        };
        let mut last: Option<Descriptor> = None;
        for (n, desc) in chain.enumerate() {
            if n == MAX_DESCRIPTORS {
                req.defect = Some(ChainError::TooLong);
                return req;
            }
            let buf = Buffer {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                req.writable.push(buf);
            } else if req.writable.is_empty() {
                req.readable.push(buf);
            } else {
                req.defect.get_or_insert(ChainError::WrongDirection);
            }
            last = Some(desc);
        }
        if last.is_none_or(|d| d.has_next()) {
            req.defect.get_or_insert(ChainError::Truncated);
        }
        req
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Whether the first `len` writable bytes exist and are guest memory, so a response
    /// can be written (checked before a command runs, so a command that cannot report
    /// its status does nothing).
    pub fn can_write<M: GuestMemory>(&self, mem: &M, len: u64) -> bool {
        let mut left = len;
        for b in &self.writable {
            if left == 0 {
                break;
            }
            let n = u64::from(b.len).min(left);
            if !mem.check_range(b.addr, n as usize, Permissions::Write) {
                return false;
            }
            left -= n;
        }
        left == 0
    }

    /// Reads up to `max` bytes of the readable buffers.
    pub fn read<M: GuestMemory>(
        &self,
        mem: &M,
        max: usize,
    ) -> Result<Vec<u8>, vm_memory::GuestMemoryError> {
        let mut out = Vec::new();
        for b in &self.readable {
            let want = (b.len as usize).min(max - out.len());
            if want == 0 {
                break;
            }
            let at = out.len();
            out.resize(at + want, 0);
            mem.read_slice(&mut out[at..], b.addr)?;
        }
        Ok(out)
    }

    /// The writable side, for a completion that comes later.
    pub fn reply_to(&self) -> Reply {
        Reply {
            head: self.head,
            writable: self.writable.clone(),
        }
    }
}

/// Where a request's response goes: its head index and its writable buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Head index of the chain.
    pub head: u16,
    /// Device-writable buffers.
    pub writable: Vec<Buffer>,
}

impl Reply {
    /// Writes `parts` one after the other across the writable buffers. Returns the bytes
    /// written, or `None` if they do not fit or a buffer is not guest memory.
    pub fn write<M: GuestMemory>(&self, mem: &M, parts: &[&[u8]]) -> Option<u32> {
        let mut bufs = self.writable.iter();
        let mut cur: Option<(Buffer, u32)> = None;
        let mut total = 0u32;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let (b, used) = match cur {
                    Some((b, used)) if used < b.len => (b, used),
                    _ => (*bufs.next()?, 0),
                };
                let n = ((b.len - used) as usize).min(part.len());
                let at = b.addr.checked_add(u64::from(used))?;
                mem.write_slice(&part[..n], at).ok()?;
                cur = Some((b, used + n as u32));
                part = &part[n..];
                total += n as u32;
            }
        }
        Some(total)
    }

    /// Returns the chain on `queue`'s used ring with `len` bytes written.
    pub fn complete<M: GuestMemory>(&self, queue: &mut Queue, mem: &M, len: u32) {
        if let Err(e) = queue.add_used(mem, self.head, len) {
            log::warn!("vgpu: cannot return chain {}: {e}", self.head);
        }
    }
}

/// Whether the driver wants an interrupt for new used buffers on `queue`.
pub fn needs_interrupt<M: GuestMemory>(queue: &mut Queue, mem: &M) -> bool {
    match queue.needs_notification(mem) {
        Ok(false) => return false,
        Ok(true) => {}
        Err(e) => log::warn!("vgpu: checking notification: {e}"),
    }
    // Without VIRTIO_F_EVENT_IDX the driver suppresses interrupts with the avail flags.
    let flags: u16 = mem.read_obj(GuestAddress(queue.avail_ring())).unwrap_or(0);
    flags & virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::testing::{guest_memory, DriverQueue, Next, RawDesc};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    fn mem() -> Arc<GuestMemoryMmap> {
        guest_memory(0x10_0000)
    }

    /// A descriptor with an absolute `next` index.
    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
        RawDesc::new(addr, len, flags, Next::Index(next))
    }

    /// Offers `descs` as they are, from descriptor 0 of a fresh 16-entry queue, and parses
    /// what the device takes off it.
    fn parse(mem: &Arc<GuestMemoryMmap>, descs: &[RawDesc]) -> Request {
        let mut q = DriverQueue::new(mem.clone(), GuestAddress(0), 16);
        assert_eq!(q.add_raw_chain(descs), 0);
        let mut queue = q.device_queue();
        Request::parse(queue.pop_descriptor_chain(mem.as_ref()).unwrap())
    }

    #[test]
    fn well_formed_chain() {
        let m = mem();
        let r = parse(
            &m,
            &[
                desc(0x8000, 48, N, 1),
                desc(0x9000, 24, W | N, 2),
                desc(0xa000, 8, W, 0),
            ],
        );
        assert_eq!(r.defect, None);
        assert_eq!(
            r.readable,
            vec![Buffer {
                addr: GuestAddress(0x8000),
                len: 48
            }]
        );
        assert_eq!(r.writable.len(), 2);
        assert_eq!(r.writable_len(), 32);
        // Writes spill from one buffer into the next.
        let reply = r.reply_to();
        assert_eq!(reply.write(m.as_ref(), &[&[1u8; 20], &[2u8; 10]]), Some(30));
        assert_eq!(m.read_obj::<[u8; 4]>(GuestAddress(0x9014)).unwrap(), [2; 4]);
        assert_eq!(m.read_obj::<[u8; 6]>(GuestAddress(0xa000)).unwrap(), [2; 6]);
        assert_eq!(reply.write(m.as_ref(), &[&[0u8; 33]]), None);
    }

    #[test]
    fn loops_and_bad_next_are_truncated() {
        let m = mem();
        let r = parse(&m, &[desc(0x8000, 48, N, 1), desc(0x9000, 24, W | N, 1)]);
        assert_eq!(r.defect, Some(ChainError::Truncated));
        let r = parse(&m, &[desc(0x8000, 48, N, 200)]);
        assert_eq!(r.defect, Some(ChainError::Truncated));
    }

    #[test]
    fn wrong_direction_and_unmapped_buffers() {
        let m = mem();
        let r = parse(&m, &[desc(0x9000, 24, W | N, 1), desc(0x8000, 48, 0, 0)]);
        assert_eq!(r.defect, Some(ChainError::WrongDirection));
        let r = parse(&m, &[desc(0x20_0000, 48, N, 1), desc(0x30_0000, 24, W, 0)]);
        assert_eq!(r.defect, None);
        assert!(r.read(m.as_ref(), 48).is_err());
        assert_eq!(r.reply_to().write(m.as_ref(), &[&[0u8; 24]]), None);
        assert!(!r.can_write(m.as_ref(), 24));
        let r = parse(
            &m,
            &[
                desc(0x8000, 48, N, 1),
                desc(0x9000, 16, W | N, 2),
                desc(0xa000, 8, W, 0),
            ],
        );
        assert!(r.can_write(m.as_ref(), 24));
        assert!(!r.can_write(m.as_ref(), 25));
    }
}

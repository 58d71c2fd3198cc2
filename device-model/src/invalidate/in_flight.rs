//! Invalidations in flight: taken off the command queue, not yet applied or answered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Invalidation;
use crate::address::Pasid;
use crate::chain::Reply;

/// An INVALIDATE whose completion is not due yet.
#[derive(Debug)]
pub struct Pending {
    /// The invalidation.
    pub inv: Invalidation,
    /// Where its response goes.
    pub reply: Reply,
    /// When it completes.
    pub due: Instant,
}

/// The invalidations in flight, oldest first (all have the same latency, so they are also
/// in due order).
#[derive(Debug)]
pub struct InFlight {
    queue: VecDeque<Pending>,
    latency: Duration,
}

impl InFlight {
    /// Nothing in flight; each invalidation completes `latency_us` microseconds after it is
    /// started.
    pub fn new(latency_us: u32) -> Self {
        InFlight {
            queue: VecDeque::new(),
            latency: Duration::from_micros(latency_us.into()),
        }
    }

    /// Puts `inv` in flight from `now`. With no latency it is due at once and comes back, to
    /// be applied now.
    pub fn start(&mut self, inv: Invalidation, reply: Reply, now: Instant) -> Option<Pending> {
        let pending = Pending {
            inv,
            reply,
            due: now + self.latency,
        };
        if self.latency.is_zero() {
            return Some(pending);
        }
        self.queue.push_back(pending);
        None
    }

    /// When the oldest is due, if one is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|p| p.due)
    }

    /// The oldest, if it is due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Pending> {
        if self.queue.front().is_some_and(|p| p.due <= now) {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// Takes every invalidation of `pasid`, oldest first, whether due or not (UNBIND
    /// completes them first).
    pub fn take_pasid(&mut self, pasid: Pasid) -> Vec<Pending> {
        let (mine, others): (VecDeque<Pending>, _) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|p| p.inv.pasid == pasid);
        self.queue = others;
        mine.into()
    }

    /// Invalidations in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops them all unanswered (device reset).
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::IovaRange;

    fn inv(pasid: u32) -> Invalidation {
        Invalidation {
            pasid: Pasid(pasid),
            range: IovaRange::pages(0, 0x1000).unwrap(),
            event: 0,
            downgrade: false,
            whole_pasid: false,
        }
    }

    fn reply(head: u16) -> Reply {
        Reply {
            head,
            writable: Vec::new(),
        }
    }

    #[test]
    fn no_latency_completes_at_once() {
        let mut f = InFlight::new(0);
        let now = Instant::now();
        let p = f.start(inv(1), reply(3), now).unwrap();
        assert_eq!((p.reply.head, p.due), (3, now));
        assert!(f.is_empty());
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn due_in_order_and_unbind_takes_its_own() {
        let mut f = InFlight::new(1_000);
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        assert!(f.start(inv(1), reply(1), t0).is_none());
        assert!(f.start(inv(2), reply(2), t0 + ms).is_none());
        assert!(f.start(inv(1), reply(3), t0 + 2 * ms).is_none());
        assert_eq!(f.next_deadline(), Some(t0 + ms));
        assert!(f.pop_due(t0).is_none(), "not due before its latency");
        assert_eq!(f.pop_due(t0 + ms).map(|p| p.reply.head), Some(1));
        assert!(f.pop_due(t0 + ms).is_none());
        // PASID 1's (not due yet) leaves; PASID 2's stays.
        let mine: Vec<u16> = f
            .take_pasid(Pasid(1))
            .iter()
            .map(|p| p.reply.head)
            .collect();
        assert_eq!(mine, [3]);
        assert_eq!(f.len(), 1);
        f.clear();
        assert!(f.is_empty());
    }
}

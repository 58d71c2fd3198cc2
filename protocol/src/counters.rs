//! The device's counters (SPEC.md "Counters"): one set per mmu-notifier event and one
//! global set. The guest reads them with COUNTERS, the VMM reads them directly; both print
//! them as JSON whose keys are the field names of [`EventCounters`] and [`GlobalCounters`]
//! (serde derives, no list of names to keep in step). Per-event tables are JSON objects
//! keyed by [`Event::name`].

use serde::{Deserialize, Serialize};
use vm_memory::ByteValued;

use crate::wire::event;
pub use crate::wire::{Counters, EventCounters, GlobalCounters};

/// An mmu-notifier event: the kernel's `enum mmu_notifier_event` (6.1), in counter order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event {
    /// The range is unmapped.
    Unmap,
    /// The range is cleared (e.g. madvise(DONTNEED)).
    Clear,
    /// mprotect() on the vma.
    ProtectionVma,
    /// Protection change of single pages.
    ProtectionPage,
    /// Soft-dirty tracking write-protects the range.
    SoftDirty,
    /// The address space goes away.
    Release,
    /// Pages migrate.
    Migrate,
    /// Exclusive device access.
    Exclusive,
}

impl Event {
    /// Every event, in counter order (index = the wire value).
    pub const ALL: [Event; event::COUNT] = [
        Event::Unmap,
        Event::Clear,
        Event::ProtectionVma,
        Event::ProtectionPage,
        Event::SoftDirty,
        Event::Release,
        Event::Migrate,
        Event::Exclusive,
    ];

    /// The event of a wire value (`vgpu_cmd.event`), if it is one.
    pub fn from_wire(value: u32) -> Option<Event> {
        Event::ALL.get(value as usize).copied()
    }

    /// The wire value (the index of its counters).
    pub fn wire(self) -> u32 {
        self as u32
    }

    /// The kernel's name without the `MMU_NOTIFY_` prefix, as in reports.
    pub fn name(self) -> &'static str {
        EVENT_NAMES[self as usize]
    }

    /// The event called `name` (one of [`EVENT_NAMES`]).
    pub fn from_name(name: &str) -> Option<Event> {
        EVENT_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Event::ALL[i])
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The event names, in counter order.
pub const EVENT_NAMES: [&str; event::COUNT] = event::NAMES;

pub use crate::wire::by_event;

impl Counters {
    /// Adds how every counter moved from `before` to `after` (a counter that went down, as
    /// after a guest-requested reset, adds nothing). Every field is a u64, so this works word
    /// by word on the wire layout and needs no update when a counter is added.
    pub fn add_movement(&mut self, before: &Counters, after: &Counters) {
        let words = |c: &Counters| -> Vec<u64> {
            c.as_slice()
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8-byte chunks")))
                .collect()
        };
        let (b, a) = (words(before), words(after));
        for (i, slot) in self.as_mut_slice().chunks_exact_mut(8).enumerate() {
            let now = u64::from_le_bytes((&*slot).try_into().expect("8-byte chunks"));
            let moved = a[i].saturating_sub(b[i]);
            slot.copy_from_slice(&now.wrapping_add(moved).to_le_bytes());
        }
    }

    /// `after - before`, counter by counter (see [`Counters::add_movement`]).
    pub fn movement(before: &Counters, after: &Counters) -> Counters {
        let mut d = Counters::default();
        d.add_movement(before, after);
        d
    }

    /// The counters of wire event `event`. Events at or above [`event::COUNT`] (the caller
    /// validates them; this only keeps a bug from indexing out of bounds) land on the last.
    pub fn event(&mut self, event: u32) -> &mut EventCounters {
        let i = (event as usize).min(event::COUNT - 1);
        &mut self.events[i]
    }

    /// The counters of `e`.
    pub fn of(&self, e: Event) -> &EventCounters {
        &self.events[e as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_in_wire_order_and_named() {
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(e.wire() as usize, i);
            assert_eq!(Event::from_wire(i as u32), Some(*e));
            assert_eq!(Event::from_name(e.name()), Some(*e));
            // The serde name is the report's name.
            assert_eq!(
                serde_json::to_string(e).unwrap(),
                format!("\"{}\"", e.name())
            );
        }
        assert_eq!(Event::Exclusive.wire(), event::EXCLUSIVE);
        assert_eq!(Event::SoftDirty.wire(), event::SOFT_DIRTY);
        assert_eq!(Event::from_wire(event::COUNT as u32), None);
    }

    #[test]
    fn event_counters_land_in_their_wire_slot() {
        let mut c = Counters::default();
        c.event(event::SOFT_DIRTY).downgrades = 3;
        c.event(event::UNMAP).leaf_splits = 4;
        c.global.permission_faults = 5;
        assert_eq!(c.events[4].downgrades, 3);
        assert_eq!(c.of(Event::Unmap).leaf_splits, 4);
        // permission_faults took the first reserved global slot: word 8*16 + 12.
        let words: Vec<u64> = c
            .as_slice()
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words[8 * 16 + 12], 5);
        assert_eq!(c.global.reserved, [0; 18]);
        // An out-of-range event never indexes out of bounds.
        c.event(99).notifications += 1;
        assert_eq!(c.events[7].notifications, 1);
    }

    #[test]
    fn movement_is_per_counter_and_never_wraps() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.events[1].notifications = 5;
        b.events[1].notifications = 8;
        a.global.device_faults = 10; // went backwards: a reset in between
        b.global.device_faults = 4;
        b.global.bytes_written = 7;
        let d = Counters::movement(&a, &b);
        assert_eq!(d.of(Event::Clear).notifications, 3);
        assert_eq!(d.global.device_faults, 0);
        assert_eq!(d.global.bytes_written, 7);
    }

    #[test]
    fn json_keys_are_the_field_names_and_events_are_named() {
        let mut c = Counters::default();
        c.event(event::PROTECTION_VMA).ats_invalidations = 7;
        c.global.fault_retries = 4;
        let v = serde_json::to_value(c).unwrap();
        assert_eq!(v["events"]["PROTECTION_VMA"]["ats_invalidations"], 7);
        assert_eq!(v["global"]["fault_retries"], 4);
        assert_eq!(v["events"].as_object().unwrap().len(), event::COUNT);
        // Reserved words are not counters.
        assert!(v["global"].get("reserved").is_none());
        assert!(v["events"]["UNMAP"].get("reserved").is_none());
        let back: Counters = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        let unknown = serde_json::json!({"events": {"NOPE": {}}, "global": {}});
        let err = serde_json::from_value::<Counters>(unknown).unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
    }
}

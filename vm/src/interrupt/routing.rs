//! KVM's GSI routing table and the irqfd-backed MSI interrupt groups built on it.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so this module keeps the one copy of it:
//! the ISA/IOAPIC routes (GSIs 0..23) plus one MSI route per vector that a device owns. Every MSI-X vector gets a GSI from
//! [`FIRST_MSI_GSI`] up and an eventfd registered as its irqfd.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::{MsiInterruptGroup, MsiMessage};

/// Number of IOAPIC pins of KVM's in-kernel irqchip.
pub const IOAPIC_PINS: u32 = 24;
/// The first GSI handed out for MSI vectors.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
const MAX_ROUTES: usize = 4096;

/// The VM's routing table.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    /// Entries by (gsi, irqchip, or u32::MAX for MSI).
    entries: BTreeMap<(u32, u32), kvm_irq_routing_entry>,
    next_gsi: u32,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.addr_lo;
    e.u.msi.address_hi = msg.addr_hi;
    e.u.msi.data = msg.data;
    e
}

impl GsiRouting {
    /// Installs the ISA/IOAPIC routes: GSI n to IOAPIC pin n, except that ISA IRQ 0 (the
    /// in-kernel PIT) goes to pin 2 and pin 2 has no GSI of its own, as the MADT's interrupt
    /// source override tells the guest (`boot/acpi.rs`). Nothing is routed to the 8259 PIC:
    /// the FADT declares hardware-reduced ACPI, so Linux never programs the PIC, and an
    /// uninitialised PIC would deliver ISA IRQ n as vector n (IRQ 4 as #OF).
    pub fn new(vm: Arc<VmFd>) -> io::Result<Self> {
        let mut entries = BTreeMap::new();
        for gsi in (0..IOAPIC_PINS).filter(|&g| g != 2) {
            let pin = if gsi == 0 { 2 } else { gsi };
            entries.insert(
                (gsi, KVM_IRQCHIP_IOAPIC),
                irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, pin),
            );
        }
        let routing = GsiRouting {
            vm,
            state: Mutex::new(RoutingState {
                entries,
                next_gsi: FIRST_MSI_GSI,
            }),
        };
        routing.commit(&routing.state.lock().unwrap())?;
        Ok(routing)
    }

    fn commit(&self, state: &RoutingState) -> io::Result<()> {
        let entries: Vec<_> = state.entries.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn allocate(&self, count: u32) -> io::Result<u32> {
        let mut s = self.state.lock().unwrap();
        let base = s.next_gsi;
        if base as usize + count as usize > MAX_ROUTES {
            return Err(io::Error::other("out of GSIs"));
        }
        s.next_gsi += count;
        Ok(base)
    }

    /// Installs or removes the MSI route of `gsi`.
    fn set_msi(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        match msg {
            Some(m) => {
                s.entries.insert((gsi, u32::MAX), msi_entry(gsi, m));
            }
            None => {
                if s.entries.remove(&(gsi, u32::MAX)).is_none() {
                    return Ok(());
                }
            }
        }
        self.commit(&s)
    }
}

/// The MSI-X vectors of one device: a GSI and an irqfd each.
pub struct KvmMsiGroup {
    routing: Arc<GsiRouting>,
    base_gsi: u32,
    irqfds: Vec<EventFd>,
}

impl KvmMsiGroup {
    /// Allocates `vectors` GSIs and registers an irqfd for each.
    pub fn new(routing: Arc<GsiRouting>, vectors: u16) -> io::Result<Self> {
        let base_gsi = routing.allocate(u32::from(vectors))?;
        let mut irqfds = Vec::with_capacity(vectors as usize);
        for i in 0..u32::from(vectors) {
            let fd = EventFd::new(libc::EFD_NONBLOCK)?;
            routing
                .vm
                .register_irqfd(&fd, base_gsi + i)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            irqfds.push(fd);
        }
        Ok(KvmMsiGroup {
            routing,
            base_gsi,
            irqfds,
        })
    }
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn trigger(&self, index: u16) -> io::Result<()> {
        match self.irqfds.get(index as usize) {
            Some(fd) => fd.write(1),
            None => Err(io::Error::other(format!("no MSI vector {index}"))),
        }
    }

    fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
        if index as usize >= self.irqfds.len() {
            return Err(io::Error::other(format!("no MSI vector {index}")));
        }
        let gsi = self.base_gsi + u32::from(index);
        self.routing.set_msi(gsi, (!masked).then_some(msg))
    }
}

//! KVM's GSI routing table and the irqfd-backed MSI interrupt groups built on it.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so this module keeps the one copy of it:
//! the ISA/IOAPIC routes (GSIs 0..23) plus one MSI route per vector that a device owns. Every MSI-X vector gets a GSI from
//! [`FIRST_MSI_GSI`] up and an eventfd registered as its irqfd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::{InterruptError, MsiInterruptGroup, MsiMessage};

/// Number of IOAPIC pins of KVM's in-kernel irqchip.
pub const IOAPIC_PINS: u32 = 24;
/// The first GSI handed out for MSI vectors.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
const MAX_ROUTES: usize = 4096;

/// Errors of the routing table and of the irqfds behind it.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The entries do not fit a `KVM_SET_GSI_ROUTING` table.
    #[error("cannot build a routing table of {entries} entries: {source}")]
    Table {
        /// How many entries there were.
        entries: usize,
        /// Why the table could not hold them.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// KVM refused the routing table.
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    SetRouting(#[source] kvm_ioctls::Error),
    /// Every GSI KVM can route is taken.
    #[error("out of GSIs: {wanted} more from GSI {next} exceed KVM's {MAX_ROUTES} routes")]
    OutOfGsis {
        /// How many were asked for.
        wanted: u32,
        /// The first free GSI.
        next: u32,
    },
    /// The eventfd of an irqfd could not be created.
    #[error("cannot create the eventfd of GSI {gsi}: {source}")]
    EventFd {
        /// The GSI it was for.
        gsi: u32,
        /// The eventfd error.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused an irqfd.
    #[error("KVM_IRQFD for GSI {gsi}: {source}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

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
    pub fn new(vm: Arc<VmFd>) -> Result<Self, RoutingError> {
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

    fn commit(&self, state: &RoutingState) -> Result<(), RoutingError> {
        let entries: Vec<_> = state.entries.values().copied().collect();
        let table =
            KvmIrqRouting::from_entries(&entries).map_err(|source| RoutingError::Table {
                entries: entries.len(),
                source,
            })?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(RoutingError::SetRouting)
    }

    fn allocate(&self, count: u32) -> Result<u32, RoutingError> {
        let mut s = self.state.lock().unwrap();
        let base = s.next_gsi;
        if base as usize + count as usize > MAX_ROUTES {
            return Err(RoutingError::OutOfGsis {
                wanted: count,
                next: base,
            });
        }
        s.next_gsi += count;
        Ok(base)
    }

    /// Installs or removes the MSI route of `gsi`.
    fn set_msi(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), RoutingError> {
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
    pub fn new(routing: Arc<GsiRouting>, vectors: u16) -> Result<Self, RoutingError> {
        let base_gsi = routing.allocate(u32::from(vectors))?;
        let mut irqfds = Vec::with_capacity(vectors as usize);
        for gsi in (0..u32::from(vectors)).map(|i| base_gsi + i) {
            let fd = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|source| RoutingError::EventFd { gsi, source })?;
            routing
                .vm
                .register_irqfd(&fd, gsi)
                .map_err(|source| RoutingError::Irqfd { gsi, source })?;
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
    fn trigger(&self, index: u16) -> Result<(), InterruptError> {
        let fd = self
            .irqfds
            .get(index as usize)
            .ok_or(InterruptError::NoVector(index))?;
        fd.write(1)
            .map_err(|source| InterruptError::Signal { index, source })
    }

    fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
        if index as usize >= self.irqfds.len() {
            return Err(InterruptError::NoVector(index));
        }
        let gsi = self.base_gsi + u32::from(index);
        self.routing
            .set_msi(gsi, (!masked).then_some(msg))
            .map_err(|source| InterruptError::Route { index, source })
    }
}

#[cfg(test)]
mod tests {
    use kvm_ioctls::Kvm;

    use super::*;

    /// A VM with an in-kernel irqchip, or `None` (printing `SKIP`) where `/dev/kvm` cannot
    /// be opened.
    fn vm() -> Option<Arc<VmFd>> {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                println!("SKIP: cannot open /dev/kvm: {e}");
                return None;
            }
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        Some(Arc::new(vm))
    }

    #[test]
    fn vectors_are_bounded_and_gsis_run_out() {
        let Some(vm) = vm() else {
            return;
        };
        let routing = Arc::new(GsiRouting::new(vm).unwrap());
        let group = KvmMsiGroup::new(routing.clone(), 2).unwrap();
        assert_eq!(group.base_gsi, FIRST_MSI_GSI);
        let msg = MsiMessage {
            addr_lo: 0xfee0_0000,
            addr_hi: 0,
            data: 0x30,
        };
        group.update(1, msg, false).unwrap();
        group.trigger(1).unwrap();
        group.update(1, msg, true).unwrap();
        assert!(matches!(group.trigger(2), Err(InterruptError::NoVector(2))));
        assert!(matches!(
            group.update(2, msg, false),
            Err(InterruptError::NoVector(2))
        ));
        // Exactly the GSIs that are left can still be had, one more cannot.
        let next = FIRST_MSI_GSI + 2;
        let left = MAX_ROUTES as u32 - next;
        let err = routing.allocate(left + 1).unwrap_err();
        assert!(
            matches!(err, RoutingError::OutOfGsis { wanted, next: n } if wanted == left + 1 && n == next),
            "{err}"
        );
        assert_eq!(routing.allocate(left).unwrap(), next);
    }
}

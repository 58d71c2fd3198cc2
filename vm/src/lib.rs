//! `vm`: the VM layer of the vgpu VMM, everything between `/dev/kvm` and a device.
//!
//! It never looks at what the guest runs or how a run is judged; the `vmm` application builds
//! a [`VmConfig`], starts the [`Vm`] and waits on its [`control::VmControl`].
//!
//! - [`vm`] builds a VM: the KVM objects, guest memory, the legacy devices, the PCI bus with
//!   virtio-rng and the virtual GPU, and the vCPUs.
//! - [`memory`] maps guest RAM (vm-memory) and hands it to KVM.
//! - [`boot`] loads the bzImage and the initrd and writes the 64-bit boot state: zero page
//!   with e820, GDT, identity page tables, MP table, ACPI tables (with an S5 sleep state, so
//!   `poweroff` works) and the vCPU registers.
//! - [`vcpu`] runs each vCPU and sends its port and MMIO exits to the [`bus`] buses (an access
//!   no device claims is logged, never fatal).
//! - [`control`] is how a VM ends: the first exit reason reported wins.
//! - [`interrupt`] is the device's view of interrupts (raise vector N); its [`interrupt::routing`]
//!   turns MSI-X messages into KVM GSI routes and irqfds.
//! - [`pci`] is configuration mechanism #1 with a host bridge, BAR allocation and MSI-X;
//!   [`virtio_pci`] is the modern virtio-pci transport that hosts any
//!   [`virtio_pci::VirtioDevice`].
//! - [`devices`] holds the 8250 console, the ACPI PM and i8042 ports, virtio-rng and the
//!   adapter that puts `device_model::VgpuDevice` on the transport.

#![deny(missing_docs)]

pub mod boot;
pub mod bus;
pub mod control;
pub mod devices;
pub mod interrupt;
pub mod memory;
pub mod pci;
pub mod vcpu;
pub mod virtio_pci;
pub mod vm;

pub use self::vm::{RunningVm, Vm, VmConfig, VmError};

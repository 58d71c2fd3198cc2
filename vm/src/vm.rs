//! Builds a VM: KVM objects, guest memory, the legacy devices, the PCI bus and the vCPUs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use device_model::VgpuConfig;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::bus::{Bus, BusError};
use crate::control::VmControl;
use crate::devices::power::{AcpiPmPorts, I8042, I8042_DATA_PORT, I8042_PORT_LEN};
use crate::devices::serial::{SerialConsole, COM1_IRQ, COM1_PORT};
use crate::devices::vgpu::{VgpuHandle, VirtioVgpu};
use crate::devices::virtio_rng::{RngError, VirtioRng};
use crate::interrupt::routing::{GsiRouting, KvmMsiGroup, RoutingError};
use crate::memory::{self, MemoryError};
use crate::pci::bus::{PciBus, PciBusError};
use crate::vcpu::{start_vcpus, VcpuContext, VcpuThreads};
use crate::virtio_pci::{VirtioPciDevice, VirtioPciError};

/// Where KVM puts the TSS (three pages just below the BIOS area, out of guest RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Where KVM puts the identity map page for real-mode emulation.
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// First port of PCI configuration mechanism #1.
const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Bytes of the configuration mechanism #1 ports.
const PCI_CONFIG_PORT_LEN: u64 = 8;

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// How the virtual GPU is built.
    pub device: VgpuConfig,
}

/// Errors of VM construction.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The step that failed.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Too many or too few vCPUs.
    #[error("--cpus {0}: must be between 1 and {max}", max = boot::MAX_VCPUS)]
    Cpus(u8),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading or configuring the guest failed.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// A device could not be placed on a bus.
    #[error("device registration: {0}")]
    Bus(#[from] BusError),
    /// A device could not be created.
    #[error("device {name}: {source}")]
    Device {
        /// The device.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Interrupt routing for a device could not be set up.
    #[error("device {name}: {source}")]
    Interrupts {
        /// What the routes are for.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: RoutingError,
    },
    /// The PCI bus could not be created, or a device could not be plugged into it.
    #[error("PCI: {0}")]
    Pci(#[from] PciBusError),
    /// The entropy device could not be created.
    #[error("PCI: virtio-rng: {0}")]
    Rng(#[from] RngError),
    /// The virtual GPU refused its configuration.
    #[error("PCI: vgpu: {0}")]
    Vgpu(#[from] device_model::ConfigError),
    /// A virtio device could not be put behind the virtio-pci transport.
    #[error("PCI: {name}: {source}")]
    VirtioPci {
        /// The device.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: VirtioPciError,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn dev_err(name: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Device { name, source }
}

fn irq_err(name: &'static str) -> impl FnOnce(RoutingError) -> VmError {
    move |source| VmError::Interrupts { name, source }
}

fn transport_err(name: &'static str) -> impl FnOnce(VirtioPciError) -> VmError {
    move |source| VmError::VirtioPci { name, source }
}

/// A VM ready to run.
pub struct Vm {
    _kvm: Kvm,
    fd: Arc<VmFd>,
    mem: Arc<GuestMemoryMmap>,
    vcpus: Vec<VcpuFd>,
    ctx: VcpuContext,
    vgpu: VgpuHandle,
}

impl Vm {
    /// Creates the VM, its devices and vCPUs and loads the guest. Console output goes to
    /// `console`.
    pub fn new<W>(cfg: &VmConfig, console: W) -> Result<Vm, VmError>
    where
        W: std::io::Write + Send + 'static,
    {
        if cfg.cpus == 0 || cfg.cpus > boot::MAX_VCPUS {
            return Err(VmError::Cpus(cfg.cpus));
        }
        boot::layout::validate_mem_size(cfg.mem_size).map_err(boot::Error::from)?;
        let regions = boot::layout::ram_regions(cfg.mem_size);
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        let mem = Arc::new(memory::create_guest_memory(&regions)?);
        memory::register_with_kvm(&fd, &mem)?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let control = VmControl::default();
        let ctx = VcpuContext {
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
            control: control.clone(),
        };
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(dev_err("serial"))?;
        fd.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        ctx.pio.insert(
            Arc::new(Mutex::new(SerialConsole::new(serial_irq, console))),
            COM1_PORT,
            8,
        )?;
        ctx.pio.insert(
            Arc::new(Mutex::new(I8042::new(control.clone()))),
            I8042_DATA_PORT,
            I8042_PORT_LEN,
        )?;
        ctx.pio.insert(
            Arc::new(Mutex::new(AcpiPmPorts::new(control))),
            u64::from(boot::layout::ACPI_PM_BASE),
            boot::acpi::PM_PORT_LEN,
        )?;

        let routing = Arc::new(GsiRouting::new(fd.clone()).map_err(irq_err("GSI routing"))?);
        let pci = PciBus::new(
            ctx.mmio.clone(),
            (boot::layout::PCI_MMIO_START, boot::layout::PCI_MMIO_SIZE),
        )?;
        let pci = Arc::new(Mutex::new(pci));
        ctx.pio
            .insert(pci.clone(), PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN)?;
        let rng = VirtioRng::from_urandom()?;
        let vectors = VirtioPciDevice::msix_vectors_for(&rng);
        let msi =
            KvmMsiGroup::new(routing.clone(), vectors).map_err(irq_err("virtio-rng MSI-X"))?;
        let rng_pci = VirtioPciDevice::new(Box::new(rng), mem.clone(), Arc::new(msi))
            .map_err(transport_err("virtio-rng"))?;
        pci.lock()
            .unwrap()
            .add_device(Arc::new(Mutex::new(rng_pci)))?;
        // The virtual GPU takes the next slot, built as `cfg.device` says.
        let vgpu = VirtioVgpu::new(cfg.device.clone())?;
        let vgpu_handle = vgpu.handle();
        let vectors = VirtioPciDevice::msix_vectors_for(&vgpu);
        let msi = KvmMsiGroup::new(routing, vectors).map_err(irq_err("vgpu MSI-X"))?;
        let vgpu_pci = VirtioPciDevice::new(Box::new(vgpu), mem.clone(), Arc::new(msi))
            .map_err(transport_err("vgpu"))?;
        pci.lock()
            .unwrap()
            .add_device(Arc::new(Mutex::new(vgpu_pci)))?;

        let kernel = boot::load_kernel(&mem, &cfg.kernel)?;
        let initrd = match &cfg.initrd {
            Some(p) => Some(boot::load_initrd(&mem, p, &kernel)?),
            None => None,
        };
        boot::configure_system(&mem, &kernel, &cfg.cmdline, initrd, cfg.cpus)?;

        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let vcpu = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            boot::configure_vcpu(&kvm, &mem, &vcpu, id, cfg.cpus, kernel.entry)
                .map_err(boot::Error::from)?;
            vcpus.push(vcpu);
        }
        Ok(Vm {
            _kvm: kvm,
            fd,
            mem,
            vcpus,
            ctx,
            vgpu: vgpu_handle,
        })
    }

    /// The handle that reports how the VM ended.
    pub fn control(&self) -> VmControl {
        self.ctx.control.clone()
    }

    /// The virtual GPU, to read its counters (for the report) at any time.
    pub fn vgpu(&self) -> VgpuHandle {
        self.vgpu.clone()
    }

    /// Starts the vCPU threads.
    pub fn start(self) -> std::io::Result<RunningVm> {
        let threads = start_vcpus(self.vcpus, self.ctx.clone())?;
        Ok(RunningVm {
            threads,
            vgpu: self.vgpu,
            _fd: self.fd,
            _mem: self.mem,
        })
    }
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    threads: VcpuThreads,
    vgpu: VgpuHandle,
    _fd: Arc<VmFd>,
    _mem: Arc<GuestMemoryMmap>,
}

impl RunningVm {
    /// The virtual GPU, to read its counters (for the report) at any time.
    pub fn vgpu(&self) -> VgpuHandle {
        self.vgpu.clone()
    }

    /// Stops the vCPU threads (the exit reason must be set).
    pub fn stop(self) {
        self.threads.stop(std::time::Duration::from_secs(2));
    }
}

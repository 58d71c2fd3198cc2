//! The PCI side of the VMM: configuration spaces, the configuration-mechanism-#1 bus with
//! its host bridge, and MSI-X.
//!
//! A device implements [`PciDevice`]; [`PciBus`] serves the guest's 0xCF8/0xCFC accesses,
//! allocates BARs from an MMIO window and registers them on the MMIO [`crate::bus::Bus`].

pub mod bus;
pub mod configuration;
pub mod msix;

pub use bus::{PciBus, PciBusError, PciDevice, PciHostBridge};
pub use configuration::{BarKind, BarReprogram, PciBarRegion, PciConfiguration, PciHeader};
pub use msix::{MsixCap, MsixConfig, MsixError};

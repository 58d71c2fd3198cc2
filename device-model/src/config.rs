//! The device's tunables and the configuration space the driver reads.

use crate::atc::{Atc, AtcError};
use crate::wire;

/// How the virtual GPU is built. Every limit bounds what a guest can make the device hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuConfig {
    /// PASIDs 1..=max_pasids are valid.
    pub max_pasids: u32,
    /// Most entries in one MAP payload.
    pub max_map_pages: u32,
    /// ATC capacity in translations (0 disables the ATC).
    pub atc_entries: u32,
    /// ATC associativity.
    pub atc_ways: u32,
    /// Bytes the driver should map around a faulting address (advice to the driver).
    pub fault_ahead: u32,
    /// Most jobs stalled on faults at once; more get BUSY.
    pub max_stalled_jobs: usize,
    /// Most page-table nodes (4 KiB of entries each, 8 KiB of host memory) per PASID.
    pub max_table_nodes: usize,
    /// Longest JOB range in bytes; jobs run on the vCPU thread that notifies, so this
    /// bounds how long one notification can take.
    pub max_job_bytes: u64,
    /// Most pages remembered as "removed by an invalidation" for refault counting.
    pub max_removal_records: usize,
}

impl Default for VgpuConfig {
    fn default() -> Self {
        VgpuConfig {
            max_pasids: 64,
            max_map_pages: 512,
            atc_entries: 512,
            atc_ways: 8,
            fault_ahead: 0,
            max_stalled_jobs: 64,
            max_table_nodes: 1024,
            max_job_bytes: 256 << 20,
            max_removal_records: 1 << 20,
        }
    }
}

/// Why a configuration cannot build a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The ATC geometry is impossible.
    #[error(transparent)]
    Atc(#[from] AtcError),
    /// A limit that must be nonzero is zero.
    #[error("{0} must not be zero")]
    Zero(&'static str),
}

impl VgpuConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Atc::new(self.atc_entries, self.atc_ways)?;
        if self.max_pasids == 0 {
            return Err(ConfigError::Zero("max_pasids"));
        }
        if self.max_map_pages == 0 {
            return Err(ConfigError::Zero("max_map_pages"));
        }
        if self.max_table_nodes == 0 {
            return Err(ConfigError::Zero("max_table_nodes"));
        }
        Ok(())
    }

    /// The configuration space.
    pub fn to_wire(&self) -> wire::Config {
        wire::Config {
            max_pasids: self.max_pasids,
            max_map_pages: self.max_map_pages,
            atc_entries: self.atc_entries,
            atc_ways: self.atc_ways,
            fault_ahead: self.fault_ahead,
            reserved: [0; 3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_ones_are_refused() {
        let c = VgpuConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.to_wire().max_map_pages, 512);
        let bad = VgpuConfig {
            atc_ways: 3,
            ..c.clone()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::Atc(_))));
        let bad = VgpuConfig { max_pasids: 0, ..c };
        assert_eq!(bad.validate(), Err(ConfigError::Zero("max_pasids")));
    }
}

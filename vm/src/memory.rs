//! Guest RAM: the one place guest memory is mapped and handed to KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors of guest memory setup.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// Underlying error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    Slot {
        /// Slot index.
        slot: u32,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Maps anonymous guest RAM for the given `(start, size)` regions.
pub fn create_guest_memory(
    regions: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(regions).map_err(|source| MemoryError::Map {
        size: regions.iter().map(|r| r.1 as u64).sum(),
        source,
    })
}

/// Registers every region of `mem` with KVM, one slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = mem
            .get_host_address(region.start_addr())
            .expect("region start is inside guest memory") as u64;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the mapping behind `host` lives as long as `mem`, which the VM owns for its
        // whole life, and the regions of a GuestMemoryMmap never overlap.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::Slot { slot, source })?;
    }
    Ok(())
}

/// Total bytes of RAM in `mem`.
pub fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// The first address past the last RAM byte.
pub fn ram_end(mem: &GuestMemoryMmap) -> GuestAddress {
    mem.last_addr().unchecked_add(1)
}

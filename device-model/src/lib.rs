//! The virtual GPU's device model. It knows nothing of KVM: the VMM adapts it to its PCI bus.

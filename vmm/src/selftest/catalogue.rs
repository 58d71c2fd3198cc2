//! What each suite's tests need that the guest kernel may lack, and which of them must pass
//! on the virtual GPU.

use crate::spec::Suite;

const NO_DEVICE_PRIVATE: &str = "migrates pages to device-private memory \
     (HMM_DMIRROR_MIGRATE_TO_DEV): the guest kernel has no CONFIG_DEVICE_PRIVATE";
/// Why the exclusive-access tests of hmm-tests cannot run here.
const NO_DEVICE_EXCLUSIVE: &str = "needs make_device_exclusive_range(), which 6.1 builds \
     only with CONFIG_DEVICE_PRIVATE (unset in the guest kernel)";
/// Why the device-coherent variants of hmm-tests cannot run here.
const NO_DEVICE_COHERENT: &str = "needs device-coherent memory (dmirror units 2 and 3); the \
     virtual GPU offers only /dev/hmm_dmirror0 and /dev/hmm_dmirror1 (and MEMORY_DEVICE_COHERENT \
     needs CONFIG_DEVICE_PRIVATE too)";

/// The hmm-tests (6.1) that cannot run on the guest kernel, with the reason. A name ending in
/// `*` covers every test that starts with the rest. Checked against hmm-tests.c: each one
/// calls HMM_DMIRROR_MIGRATE_TO_DEV or HMM_DMIRROR_EXCLUSIVE, or opens a coherent unit.
pub(crate) const HMM_UNSUPPORTED: &[(&str, &str)] = &[
    ("hmm.hmm_device_coherent.*", NO_DEVICE_COHERENT),
    ("hmm2.hmm2_device_coherent.*", NO_DEVICE_COHERENT),
    ("hmm.hmm_device_private.migrate", NO_DEVICE_PRIVATE),
    (
        "hmm.hmm_device_private.migrate_file_private",
        NO_DEVICE_PRIVATE,
    ),
    ("hmm.hmm_device_private.migrate_fault", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.migrate_release", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.migrate_shared", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.migrate_multiple", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.hmm_gup_test", NO_DEVICE_PRIVATE),
    (
        "hmm.hmm_device_private.hmm_cow_in_device",
        NO_DEVICE_PRIVATE,
    ),
    ("hmm2.hmm2_device_private.migrate_mixed", NO_DEVICE_PRIVATE),
    ("hmm2.hmm2_device_private.snapshot", NO_DEVICE_PRIVATE),
    ("hmm2.hmm2_device_private.double_map", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.exclusive", NO_DEVICE_EXCLUSIVE),
    (
        "hmm.hmm_device_private.exclusive_mprotect",
        NO_DEVICE_EXCLUSIVE,
    ),
    ("hmm.hmm_device_private.exclusive_cow", NO_DEVICE_EXCLUSIVE),
];

/// The hmm-tests that only mirror (no device memory), which must pass on the virtual GPU
/// (issue 6's list, less the `exclusive*` tests this kernel cannot run).
pub const HMM_MUST_PASS: &[&str] = &[
    "hmm.hmm_device_private.open_close",
    "hmm.hmm_device_private.anon_read",
    "hmm.hmm_device_private.anon_read_prot",
    "hmm.hmm_device_private.anon_write",
    "hmm.hmm_device_private.anon_write_prot",
    "hmm.hmm_device_private.anon_write_child",
    "hmm.hmm_device_private.anon_write_child_shared",
    "hmm.hmm_device_private.anon_write_huge",
    "hmm.hmm_device_private.anon_write_hugetlbfs",
    "hmm.hmm_device_private.file_read",
    "hmm.hmm_device_private.file_write",
    "hmm.hmm_device_private.anon_read_multiple",
    "hmm.hmm_device_private.anon_teardown",
    "hmm.hmm_device_private.mixedmap",
    "hmm.hmm_device_private.compound",
];

/// The catalogue: what each suite's tests need, and which must pass here.
impl Suite {
    /// Why `test` cannot run on the guest kernel, if it cannot.
    pub fn unsupported(self, test: &str) -> Option<&'static str> {
        let list = match self {
            Suite::Hmm => HMM_UNSUPPORTED,
        };
        list.iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => test.starts_with(prefix),
                None => test == *pattern,
            })
            .map(|(_, reason)| *reason)
    }

    /// The tests that must pass on the virtual GPU.
    pub fn must_pass(self) -> &'static [&'static str] {
        match self {
            Suite::Hmm => HMM_MUST_PASS,
        }
    }
}

//! The device's tunables and the configuration space the driver reads.

use std::fmt;

use crate::mmu::atc::{Atc, AtcError};
use crate::oracle::OracleMode;
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
    /// Bytes the driver should map around a faulting address (advice to the driver):
    /// one of [`FAULT_AHEAD_CHOICES`].
    pub fault_ahead: u32,
    /// Most page requests one job may have outstanding at once (1 = stall on the first).
    pub fault_batch: u32,
    /// Invalidation ranges longer than this many bytes become one whole-PASID invalidation
    /// instead of per-block ATS requests; 0 keeps per-block requests for every range but
    /// the whole address space.
    pub pasid_inval_threshold: u64,
    /// Most jobs stalled on faults at once; more get BUSY.
    pub max_stalled_jobs: usize,
    /// Most page-table nodes (4 KiB of entries each, 8 KiB of host memory) per PASID.
    pub max_table_nodes: usize,
    /// Longest JOB range in bytes; jobs run on the vCPU thread that notifies, so this
    /// bounds how long one notification can take.
    pub max_job_bytes: u64,
    /// Most pages remembered as "removed by an invalidation" for refault counting.
    pub max_removal_records: usize,
    /// Microseconds between taking an INVALIDATE off the queue and completing it. Until
    /// then engines may still use the old translations, as with a real ATS invalidation in
    /// flight; 0 completes it at once. A driver that lets the CPU page table change before
    /// the completion arrives leaves a window the coherence oracle sees.
    pub inval_latency_us: u32,
    /// How often the coherence oracle checks a translation an engine uses.
    pub oracle: OracleMode,
}

impl Default for VgpuConfig {
    fn default() -> Self {
        VgpuConfig {
            max_pasids: 64,
            max_map_pages: 512,
            atc_entries: 512,
            atc_ways: 8,
            fault_ahead: 0,
            fault_batch: 1,
            pasid_inval_threshold: 0,
            max_stalled_jobs: 64,
            max_table_nodes: 1024,
            max_job_bytes: 256 << 20,
            max_removal_records: 1 << 20,
            inval_latency_us: DEFAULT_INVAL_LATENCY_US,
            oracle: OracleMode::Every,
        }
    }
}

/// Default INVALIDATE completion latency: long enough that a job submitted right after an
/// invalidation the driver did not wait for still finds the old translation. In the nested
/// guest on these machines a syscall plus a queue notification takes about a millisecond:
/// with 500 us the early-complete bug went unseen by `touch`, with 5 ms it showed 48
/// violations.
pub const DEFAULT_INVAL_LATENCY_US: u32 = 5_000;
/// Longest INVALIDATE completion latency the options accept (the driver's command timeout
/// is seconds).
pub const MAX_INVAL_LATENCY_US: u32 = 100_000;

/// The fault-ahead windows the driver knows (SPEC.md): none, 64 KiB, 2 MiB.
pub const FAULT_AHEAD_CHOICES: [u32; 3] = [0, 64 << 10, 2 << 20];
/// Largest ATC the options accept: its slots are host memory and every range invalidation
/// scans them.
pub const MAX_ATC_ENTRIES: u32 = 1 << 16;
/// Largest fault batch: a batch's records must fit the fault queue many times over.
pub const MAX_FAULT_BATCH: u32 = wire::FAULT_QUEUE_SIZE as u32 / 4;

/// The keys of a device option string, with what each accepts (for error messages).
pub const OPTION_KEYS: [(&str, &str); 7] = [
    (
        "atc_entries",
        "0..=65536 (0 disables the ATC), a multiple of atc_ways",
    ),
    ("atc_ways", "1..=atc_entries, dividing atc_entries"),
    ("fault_ahead", "0, 64K or 2M"),
    ("fault_batch", "1..=16"),
    (
        "pasid_inval_threshold",
        "a size such as 1G (K, M, G suffixes; 0 = only whole-space ranges)",
    ),
    (
        "inval_latency_us",
        "0..=100000 microseconds from taking an INVALIDATE to completing it",
    ),
    (
        "oracle",
        "every, sampled (one translation in 16) or off: how often the coherence oracle checks",
    ),
];

/// The value of one device option, as the report's `device_config` echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// A count or a size in bytes.
    Number(u64),
    /// A named choice.
    Word(&'static str),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Number(n) => write!(f, "{n}"),
            OptionValue::Word(w) => f.write_str(w),
        }
    }
}

/// Separators between `key=value` options. `,` is the natural one; `+` and `;` exist
/// because the nested run passes the options through a comma-separated kernel argument.
const OPTION_SEPARATORS: [char; 3] = [',', '+', ';'];

/// Why a device option string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    /// A key the device does not have.
    #[error("unknown device option {key:?}; valid options: {valid}", valid = valid_options())]
    UnknownKey {
        /// The key given.
        key: String,
    },
    /// An option without `=value`.
    #[error("device option {0:?} has no value; valid options: {valid}", valid = valid_options())]
    NoValue(String),
    /// A value the key does not accept.
    #[error("device option {key}={value:?}: expected {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What the key accepts.
        expected: &'static str,
    },
    /// The options together describe no device.
    #[error("device options: {0}; valid options: {valid}", valid = valid_options())]
    Invalid(#[from] ConfigError),
}

fn valid_options() -> String {
    OPTION_KEYS
        .iter()
        .map(|(k, v)| format!("{k} ({v})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A size: a number of bytes with an optional K, M or G suffix (binary units).
fn parse_bytes(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
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
        if self.fault_batch == 0 {
            return Err(ConfigError::Zero("fault_batch"));
        }
        Ok(())
    }

    /// The default device with `options` applied: `key=value` pairs separated by `,`, `+`
    /// or `;` (see [`OPTION_KEYS`]). An empty string is the default device.
    pub fn from_options(options: &str) -> Result<VgpuConfig, OptionError> {
        let mut c = VgpuConfig::default();
        for opt in options.split(OPTION_SEPARATORS).map(str::trim) {
            if opt.is_empty() {
                continue;
            }
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| OptionError::NoValue(opt.to_string()))?;
            let (key, expected) = OPTION_KEYS
                .iter()
                .copied()
                .find(|(k, _)| *k == key.trim())
                .ok_or_else(|| OptionError::UnknownKey {
                    key: key.to_string(),
                })?;
            let value = value.trim();
            let bad = || OptionError::BadValue {
                key,
                value: value.to_string(),
                expected,
            };
            if key == "oracle" {
                c.oracle = OracleMode::from_name(value).ok_or_else(bad)?;
                continue;
            }
            let bytes = parse_bytes(value).ok_or_else(bad)?;
            let small = u32::try_from(bytes).map_err(|_| bad())?;
            match key {
                "atc_entries" if small <= MAX_ATC_ENTRIES => c.atc_entries = small,
                "atc_ways" if small >= 1 => c.atc_ways = small,
                "fault_ahead" if FAULT_AHEAD_CHOICES.contains(&small) => c.fault_ahead = small,
                "fault_batch" if (1..=MAX_FAULT_BATCH).contains(&small) => c.fault_batch = small,
                "pasid_inval_threshold" => c.pasid_inval_threshold = bytes,
                "inval_latency_us" if small <= MAX_INVAL_LATENCY_US => c.inval_latency_us = small,
                _ => return Err(bad()),
            }
        }
        // Geometry (ways dividing entries) is checked on the whole set, not per key.
        c.validate()?;
        Ok(c)
    }

    /// Every tunable [`Self::from_options`] accepts, by name, as the report echoes them.
    pub fn options(&self) -> [(&'static str, OptionValue); 7] {
        use OptionValue::{Number, Word};
        [
            ("atc_entries", Number(u64::from(self.atc_entries))),
            ("atc_ways", Number(u64::from(self.atc_ways))),
            ("fault_ahead", Number(u64::from(self.fault_ahead))),
            ("fault_batch", Number(u64::from(self.fault_batch))),
            ("pasid_inval_threshold", Number(self.pasid_inval_threshold)),
            ("oracle", Word(self.oracle.name())),
            ("inval_latency_us", Number(u64::from(self.inval_latency_us))),
        ]
    }

    /// The tunables as an option string that [`Self::from_options`] reads back, joined by
    /// `sep` (the nested run uses `+`, which survives its comma-separated hop).
    pub fn to_options(&self, sep: char) -> String {
        self.options()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(&sep.to_string())
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

    #[test]
    fn options_parse_with_any_separator() {
        assert_eq!(VgpuConfig::from_options(""), Ok(VgpuConfig::default()));
        let c = VgpuConfig::from_options("atc_entries=512,atc_ways=8,fault_ahead=64K").unwrap();
        assert_eq!(
            (c.atc_entries, c.atc_ways, c.fault_ahead),
            (512, 8, 64 << 10)
        );
        let c = VgpuConfig::from_options(
            "atc_entries=64+atc_ways=4;fault_ahead=2M+fault_batch=16+pasid_inval_threshold=1G+oracle=sampled",
        )
        .unwrap();
        assert_eq!(c.oracle, OracleMode::SAMPLED);
        assert_eq!((c.atc_entries, c.atc_ways), (64, 4));
        assert_eq!(c.fault_ahead, 2 << 20);
        assert_eq!(c.fault_batch, 16);
        assert_eq!(c.pasid_inval_threshold, 1 << 30);
        assert_eq!(
            VgpuConfig::from_options("inval_latency_us=0")
                .unwrap()
                .inval_latency_us,
            0
        );
        assert_eq!(c.to_wire().atc_entries, 64);
        assert_eq!(c.to_wire().fault_ahead, 2 << 20);
        // What the nested run sends round-trips, and has no comma.
        let s = c.to_options('+');
        assert!(!s.contains(','));
        assert_eq!(VgpuConfig::from_options(&s), Ok(c));
        // The oracle checks every access unless told otherwise, and can be switched off.
        assert_eq!(VgpuConfig::default().oracle, OracleMode::Every);
        for (name, mode) in OracleMode::CHOICES {
            let c = VgpuConfig::from_options(&format!("oracle={name}")).unwrap();
            assert_eq!(c.oracle, mode);
            assert!(c.to_options(',').contains(&format!("oracle={name}")));
        }
        // The ATC can be switched off.
        assert_eq!(
            VgpuConfig::from_options("atc_entries=0")
                .unwrap()
                .atc_entries,
            0
        );
    }

    #[test]
    fn bad_options_name_the_valid_ones() {
        let e = VgpuConfig::from_options("atc_size=4").unwrap_err();
        assert!(matches!(e, OptionError::UnknownKey { .. }));
        let msg = e.to_string();
        for (k, _) in OPTION_KEYS {
            assert!(msg.contains(k), "{msg}");
        }
        assert!(matches!(
            VgpuConfig::from_options("atc_entries"),
            Err(OptionError::NoValue(_))
        ));
        for bad in [
            "fault_ahead=4K",
            "fault_ahead=lots",
            "fault_batch=0",
            "fault_batch=17",
            "atc_entries=65537",
            "atc_entries=99999999999G",
            "atc_ways=0",
            "pasid_inval_threshold=-1",
            "inval_latency_us=100001",
            "oracle=sometimes",
            "oracle=16",
        ] {
            let e = VgpuConfig::from_options(bad).unwrap_err();
            assert!(matches!(e, OptionError::BadValue { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("expected"), "{e}");
        }
        // Each value fine, together impossible.
        assert!(matches!(
            VgpuConfig::from_options("atc_entries=12,atc_ways=8"),
            Err(OptionError::Invalid(_))
        ));
        assert!(matches!(
            VgpuConfig::from_options("atc_entries=4,atc_ways=8"),
            Err(OptionError::Invalid(_))
        ));
    }
}

//! `vmm bench oracle`: what the coherence oracle costs a device job, measured in one process
//! with the device model only (no guest, no KVM).
//!
//! The setup is what a bound process looks like to the device: guest memory holding x86-64
//! page tables that map a region with 4 KiB pages (the CPU side the oracle walks), and PASID
//! 1 bound to that table with the same region mapped in the device page table, 4 KiB leaves
//! as the driver maps them without fault-ahead. The same FILL and CHECKSUM jobs over the
//! whole region then run through the engine's job entry point (`Job::run_checked`, what the
//! device runs for a JOB command) with the oracle `every`, `sampled` and `off`, round-robin
//! in one run, so all three modes see the same machine load. The region is larger than the
//! ATC, so every page also walks the device page table: the job time is the device's whole
//! translation path, with and without the oracle's walk of the CPU table.

use std::fmt::Write as _;
use std::time::Instant;

use device_model::address::{Pasid, PAGE_SIZE};
use device_model::atc::Atc;
use device_model::counters::GlobalCounters;
use device_model::engine::{fnv1a64, Job, Step};
use device_model::guest_tables::{GuestTables, GuestTablesError};
use device_model::mmu::Mmu;
use device_model::oracle::{Oracle, OracleMode};
use device_model::wire::{self, job_op};
use device_model::VgpuConfig;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The goal for the job time with the oracle on every access over the time without.
pub const GOAL_EVERY_OVER_OFF: f64 = 2.0;

/// Where the CPU page tables start in the benchmark's guest memory.
const TABLES: u64 = 0x1000;
/// Where the region's frames start.
const FRAMES: u64 = 0x100_0000;
/// The region's first virtual address: an mmap-like user address whose walk uses four
/// distinct table indices.
const REGION_VA: u64 = 0x7f3a_1c00_0000;
/// The PASID the jobs run in.
const PASID: Pasid = Pasid(1);
/// The FILL pattern.
const PATTERN: u64 = 0x0bad_cafe_f00d_0001;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The region size is not a positive multiple of 4 KiB or too large for one job.
    #[error("region of {0} bytes: must be a multiple of 4 KiB between 4 KiB and 256 MiB")]
    Region(u64),
    /// Guest memory could not be mapped.
    #[error("cannot map the benchmark's guest memory: {0}")]
    Memory(String),
    /// The CPU page tables could not be written.
    #[error("cannot build the CPU page tables: {0}")]
    Tables(#[from] GuestTablesError),
    /// The device side could not be set up.
    #[error("cannot set up the device: {0}")]
    Device(String),
    /// A job did not complete (a setup bug: everything is mapped).
    #[error("{op} with the oracle {mode} did not complete: {step:?}")]
    Job {
        /// The job.
        op: &'static str,
        /// The oracle mode.
        mode: &'static str,
        /// How it ended.
        step: Step,
    },
    /// The jobs disagree on their result, or the oracle found a violation: the modes did
    /// not run the same, correct jobs.
    #[error("the benchmark's jobs are inconsistent: {0}")]
    Inconsistent(String),
}

/// The jobs timed, in report order.
pub const JOBS: [&str; 2] = ["FILL", "CHECKSUM"];

/// Median job times of one job kind, by oracle mode (`OracleMode::CHOICES` order).
#[derive(Clone, Debug, PartialEq)]
pub struct JobTimes {
    /// `FILL`, `CHECKSUM`, or `both` (the two back to back).
    pub job: &'static str,
    /// Median nanoseconds with the oracle every, sampled, off.
    pub median_ns: [u64; 3],
}

impl JobTimes {
    /// Median time with the oracle on every access over the median with it off.
    pub fn every_over_off(&self) -> f64 {
        ratio(self.median_ns[0], self.median_ns[2])
    }

    /// Median time with the oracle sampling over the median with it off.
    pub fn sampled_over_off(&self) -> f64 {
        ratio(self.median_ns[1], self.median_ns[2])
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// What `vmm bench oracle` measured.
#[derive(Clone, Debug, PartialEq)]
pub struct OracleBench {
    /// Bytes each job covers.
    pub region_bytes: u64,
    /// Timed rounds (each runs every job in every mode once).
    pub iterations: u32,
    /// Per job kind, then `both`.
    pub jobs: Vec<JobTimes>,
    /// CPU-table walks the oracle made per mode over the timed rounds (every, sampled, off).
    pub oracle_checks: [u64; 3],
}

impl OracleBench {
    /// The times of FILL and CHECKSUM back to back.
    pub fn both(&self) -> &JobTimes {
        &self.jobs[JOBS.len()]
    }

    /// What one CPU-table walk added to a job with the oracle on every access, in
    /// nanoseconds: (every - off) over the walks of one round. Noise can make it negative.
    pub fn ns_per_check(&self) -> f64 {
        let both = self.both();
        let walks_per_round = self.oracle_checks[0] as f64 / f64::from(self.iterations.max(1));
        (both.median_ns[0] as f64 - both.median_ns[2] as f64) / walks_per_round.max(1.0)
    }

    /// Whether the oracle on every access stays within the goal.
    pub fn goal_met(&self) -> bool {
        self.both().every_over_off() <= GOAL_EVERY_OVER_OFF
    }

    /// The human table.
    pub fn summary(&self) -> String {
        let ms = |ns: u64| format!("{:.3} ms", ns as f64 / 1e6);
        let mut s = format!(
            "oracle bench: {} MiB region, {} pages of 4 KiB (CPU and device), {} iterations, modes round-robin\n",
            self.region_bytes >> 20,
            self.region_bytes / PAGE_SIZE,
            self.iterations
        );
        let _ = writeln!(
            s,
            "  {:<10} {:>12} {:>12} {:>12} {:>10} {:>12}",
            "job", "every", "sampled", "off", "every/off", "sampled/off"
        );
        for j in &self.jobs {
            let _ = writeln!(
                s,
                "  {:<10} {:>12} {:>12} {:>12} {:>9.2}x {:>11.2}x",
                j.job,
                ms(j.median_ns[0]),
                ms(j.median_ns[1]),
                ms(j.median_ns[2]),
                j.every_over_off(),
                j.sampled_over_off()
            );
        }
        let _ = writeln!(
            s,
            "  oracle CPU-table walks: every {}, sampled {}, off {} ({:.1} ns each, every - off)",
            self.oracle_checks[0],
            self.oracle_checks[1],
            self.oracle_checks[2],
            self.ns_per_check()
        );
        let _ = writeln!(
            s,
            "  goal every/off <= {GOAL_EVERY_OVER_OFF:.1}x: {} ({:.2}x)",
            if self.goal_met() { "met" } else { "NOT met" },
            self.both().every_over_off()
        );
        s
    }

    /// The machine-readable result.
    pub fn to_json(&self) -> serde_json::Value {
        let modes = OracleMode::CHOICES.map(|(name, _)| name);
        let jobs: serde_json::Map<String, serde_json::Value> = self
            .jobs
            .iter()
            .map(|j| {
                let mut o = serde_json::Map::new();
                for (m, ns) in modes.iter().zip(j.median_ns) {
                    o.insert(format!("{m}_median_ns"), ns.into());
                }
                o.insert("every_over_off".into(), j.every_over_off().into());
                o.insert("sampled_over_off".into(), j.sampled_over_off().into());
                (j.job.to_string(), o.into())
            })
            .collect();
        let checks: serde_json::Map<String, serde_json::Value> = modes
            .iter()
            .zip(self.oracle_checks)
            .map(|(m, n)| (m.to_string(), n.into()))
            .collect();
        serde_json::json!({
            "region_bytes": self.region_bytes,
            "pages": self.region_bytes / PAGE_SIZE,
            "iterations": self.iterations,
            "sampled_one_in": match OracleMode::SAMPLED {
                OracleMode::Sampled(n) => n,
                _ => 1,
            },
            "jobs": jobs,
            "oracle_checks": checks,
            "ns_per_check": self.ns_per_check(),
            "goal_every_over_off": GOAL_EVERY_OVER_OFF,
            "goal_met": self.goal_met(),
        })
    }
}

/// The device and guest memory of the benchmark.
struct Rig {
    mem: GuestMemoryMmap,
    mmu: Mmu,
    max_job_bytes: u64,
    region_bytes: u64,
}

impl Rig {
    fn new(region_bytes: u64) -> Result<Rig, BenchError> {
        let config = VgpuConfig::default();
        if region_bytes == 0
            || !region_bytes.is_multiple_of(PAGE_SIZE)
            || region_bytes > config.max_job_bytes
        {
            return Err(BenchError::Region(region_bytes));
        }
        let pages = region_bytes / PAGE_SIZE;
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (FRAMES + region_bytes) as usize)])
                .map_err(|e| BenchError::Memory(e.to_string()))?;
        // One PT per 512 pages, plus a PD per GiB, a PDPT and the PML4, with room to spare;
        // they all fit below the frames.
        let mut tables = GuestTables::new(&mem, GuestAddress(TABLES), GuestAddress(FRAMES))?;
        tables.map_pages(&mem, REGION_VA, FRAMES, pages, true)?;

        let atc = Atc::new(config.atc_entries, config.atc_ways)
            .map_err(|e| BenchError::Device(e.to_string()))?;
        // Enough page-table nodes for the region whatever its size.
        let nodes = (pages / 512 + 16) as usize;
        let mut mmu = Mmu::new(atc, config.max_pasids, nodes.max(config.max_table_nodes));
        mmu.bind(PASID, tables.root())
            .map_err(|e| BenchError::Device(e.to_string()))?;
        let space = mmu
            .space(PASID)
            .map_err(|e| BenchError::Device(e.to_string()))?;
        for p in 0..pages {
            let va = REGION_VA + p * PAGE_SIZE;
            space
                .table
                .map_page(
                    device_model::address::Iova(va),
                    GuestAddress(FRAMES + p * PAGE_SIZE),
                    true,
                )
                .map_err(|e| BenchError::Device(e.to_string()))?;
        }
        Ok(Rig {
            mem,
            mmu,
            max_job_bytes: config.max_job_bytes,
            region_bytes,
        })
    }

    /// Runs one job over the region with `oracle`; returns its nanoseconds and result.
    fn job(
        &mut self,
        op: &'static str,
        mode: &'static str,
        oracle: &mut Oracle,
        counters: &mut GlobalCounters,
    ) -> Result<(u64, u64), BenchError> {
        let (flags, arg0) = match op {
            "FILL" => (job_op::FILL, PATTERN),
            _ => (job_op::CHECKSUM, 0),
        };
        let cmd = wire::Cmd {
            opcode: wire::opcode::JOB,
            pasid: PASID.0,
            start: REGION_VA,
            length: self.region_bytes,
            arg0,
            arg1: 1,
            flags,
            ..Default::default()
        };
        let mut job = Job::from_cmd(&cmd, &[], self.max_job_bytes, 0)
            .map_err(|st| BenchError::Device(format!("JOB refused with status {st}")))?;
        let start = Instant::now();
        let step = job.run_checked(&mut self.mmu, &self.mem, counters, Some(oracle));
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match step {
            Step::Done(value) => Ok((ns, value)),
            step => Err(BenchError::Job { op, mode, step }),
        }
    }

    /// FNV-1a-64 of the region as the CPU reads it.
    fn cpu_checksum(&self) -> Result<u64, BenchError> {
        let mut data = vec![0u8; self.region_bytes as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(FRAMES))
            .map_err(|e| BenchError::Memory(e.to_string()))?;
        Ok(fnv1a64(0xcbf2_9ce4_8422_2325, &data))
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// Runs the benchmark: one untimed warm-up round, then `iterations` timed rounds; each round
/// runs FILL then CHECKSUM in every oracle mode, starting with a different mode each round.
/// Every CHECKSUM must return the CPU's checksum of the filled region and no mode may see a
/// violation, so all modes provably ran the same correct jobs.
pub fn oracle_bench(region_bytes: u64, iterations: u32) -> Result<OracleBench, BenchError> {
    let mut rig = Rig::new(region_bytes)?;
    let modes = OracleMode::CHOICES;
    let mut oracles = modes.map(|(_, m)| Oracle::new(m));
    let mut counters = GlobalCounters::default();
    // times[mode][job], and FILL + CHECKSUM of one round in times[mode][JOBS.len()].
    let mut times: [[Vec<u64>; 3]; 3] = Default::default();
    let mut checksum = None;
    for round in 0..=iterations {
        let timed = round > 0;
        if round == 1 {
            // The warm-up's walks are not part of the result.
            oracles = modes.map(|(_, m)| Oracle::new(m));
        }
        for k in 0..modes.len() {
            let m = (k + round as usize) % modes.len();
            let name = modes[m].0;
            let (fill_ns, _) = rig.job(JOBS[0], name, &mut oracles[m], &mut counters)?;
            let (sum_ns, sum) = rig.job(JOBS[1], name, &mut oracles[m], &mut counters)?;
            // Every FILL writes the same data: the CPU reads it once.
            let want = match checksum {
                Some(want) => want,
                None => *checksum.insert(rig.cpu_checksum()?),
            };
            if sum != want {
                return Err(BenchError::Inconsistent(format!(
                    "CHECKSUM with the oracle {name}: {sum:#x}, the CPU reads {want:#x}"
                )));
            }
            if timed {
                times[m][0].push(fill_ns);
                times[m][1].push(sum_ns);
                times[m][2].push(fill_ns + sum_ns);
            }
        }
    }
    if counters.violations != 0 {
        return Err(BenchError::Inconsistent(format!(
            "{} coherence violations on tables that agree",
            counters.violations
        )));
    }
    let jobs = ["FILL", "CHECKSUM", "both"]
        .into_iter()
        .enumerate()
        .map(|(j, job)| JobTimes {
            job,
            median_ns: [0, 1, 2].map(|m| median(&mut times[m][j])),
        })
        .collect();
    Ok(OracleBench {
        region_bytes,
        iterations,
        jobs,
        oracle_checks: oracles.each_ref().map(Oracle::checks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plumbing, not the timing: each mode really ran, with its own oracle setting, on
    /// jobs that returned the CPU's data.
    #[test]
    fn every_mode_runs_the_same_checked_jobs() {
        let region = 64 * PAGE_SIZE;
        let b = oracle_bench(region, 3).unwrap();
        assert_eq!(b.iterations, 3);
        assert_eq!(
            b.jobs.iter().map(|j| j.job).collect::<Vec<_>>(),
            ["FILL", "CHECKSUM", "both"]
        );
        for j in &b.jobs {
            assert!(j.median_ns.iter().all(|&ns| ns > 0), "{j:?}");
        }
        // Every: one walk per page per job (2 jobs, 3 rounds); sampled: one in 16; off: none.
        let pages = region / PAGE_SIZE;
        assert_eq!(b.oracle_checks, [pages * 2 * 3, pages * 2 * 3 / 16, 0]);
        let j = b.to_json();
        assert_eq!(j["pages"], 64);
        assert!(j["jobs"]["both"]["every_over_off"].as_f64().unwrap() > 0.0);
        assert_eq!(j["oracle_checks"]["off"], 0);
        assert!(b.summary().contains("every/off"));
    }

    #[test]
    fn bad_regions_are_refused() {
        for bad in [0, 100, 512 << 20] {
            assert!(matches!(oracle_bench(bad, 1), Err(BenchError::Region(_))));
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [5, 1, 3]), 3);
        assert_eq!(median(&mut [4, 1, 3, 2]), 2);
        assert_eq!(median(&mut []), 0);
    }
}

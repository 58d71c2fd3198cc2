//! What the coherence oracle costs a device job, measured in one process with the device
//! model only (no guest, no KVM): what `vmm bench oracle` reports, and the setup the
//! criterion benchmarks (`benches/translate.rs`) share.
//!
//! The setup is what a bound process looks like to the device ([`Region`]): guest memory
//! holding x86-64 page tables that map a region with 4 KiB pages (the CPU side the oracle
//! walks), and PASID 1 bound to that table with the same region mapped in the device page
//! table, 4 KiB leaves as the driver maps them without fault-ahead. The same FILL and
//! CHECKSUM jobs over the whole region then run through the engine's job entry point
//! (`Job::run_checked`, what the device runs for a JOB command) with the oracle `every`,
//! `sampled` and `off`, round-robin in one run, so all three modes see the same machine
//! load. The region is larger than the ATC, so every page also walks the device page table:
//! the job time is the device's whole translation path, with and without the oracle's walk
//! of the CPU table.

use std::fmt::Write as _;
use std::time::Instant;

use vm_memory::mmap::FromRangesError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::address::{Iova, Pasid, PAGES_PER_HUGE_PAGE, PAGE_SIZE};
use crate::config::VgpuConfig;
use crate::counters::GlobalCounters;
use crate::engine::{fnv1a64, Job, JobError, Step, FNV_OFFSET_BASIS};
use crate::mmu::atc::{Atc, AtcError};
use crate::mmu::page_table::{PageTable, PageTableError};
use crate::mmu::{Mmu, MmuError};
use crate::oracle::{Oracle, OracleMode};
use crate::wire::{self, job_op};
use crate::x86::{TableWriter, WriterError};

/// The goal for the job time with the oracle on every access over the time without.
pub const GOAL_EVERY_OVER_OFF: f64 = 2.0;

/// Where the CPU page tables start in the benchmark's guest memory.
const TABLES: u64 = 0x1000;
/// Where the region's frames start.
const FRAMES: u64 = 0x100_0000;
/// The region's first virtual address: an mmap-like user address whose walk uses four
/// distinct table indices.
pub const REGION_VA: u64 = 0x7f3a_1c00_0000;
/// The PASID the jobs run in.
pub const PASID: Pasid = Pasid(1);
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
    Memory(#[from] FromRangesError),
    /// The region could not be read back.
    #[error("cannot read the region: {0}")]
    Read(#[from] GuestMemoryError),
    /// The CPU page tables could not be written.
    #[error("cannot build the CPU page tables: {0}")]
    Tables(#[from] WriterError),
    /// The device's ATC could not be built.
    #[error("cannot set up the device: {0}")]
    Atc(#[from] AtcError),
    /// The device's address space could not be bound.
    #[error("cannot set up the device: {0}")]
    Mmu(#[from] MmuError),
    /// The device page table refused the region.
    #[error("cannot set up the device: {0}")]
    Table(#[from] PageTableError),
    /// The job command was refused (a setup bug).
    #[error("JOB refused: {0}")]
    Refused(#[from] JobError),
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
    /// A CHECKSUM disagreed with the CPU's reading of the region: the modes did not run
    /// the same, correct jobs.
    #[error(
        "the benchmark's jobs are inconsistent: CHECKSUM with the oracle {mode}: {got:#x}, \
         the CPU reads {want:#x}"
    )]
    Checksum {
        /// The oracle mode of the job.
        mode: &'static str,
        /// What the job returned.
        got: u64,
        /// What the CPU reads.
        want: u64,
    },
    /// The oracle found violations on tables that agree.
    #[error(
        "the benchmark's jobs are inconsistent: {0} coherence violations on tables that agree"
    )]
    Violations(u64),
}

/// The jobs timed, in report order.
pub const JOBS: [&str; 2] = ["FILL", "CHECKSUM"];

/// One of the timed jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchJob {
    /// FILL the region with the pattern.
    Fill,
    /// CHECKSUM the region.
    Checksum,
}

impl BenchJob {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            BenchJob::Fill => JOBS[0],
            BenchJob::Checksum => JOBS[1],
        }
    }
}

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

/// Maps `pages` 4 KiB pages from `va` to the frames from `frame` on, writable, in a device
/// page table (how the driver maps without fault-ahead).
pub fn map_pages(
    table: &mut PageTable,
    va: u64,
    frame: u64,
    pages: u64,
) -> Result<(), PageTableError> {
    for p in 0..pages {
        let off = p * PAGE_SIZE;
        table.map_page(Iova(va + off), GuestAddress(frame + off), true)?;
    }
    Ok(())
}

/// Caches in `atc`, for `pasid`, `table`'s translations of the `pages` pages from `va`.
pub fn cache_pages(atc: &mut Atc, pasid: Pasid, table: &PageTable, va: u64, pages: u64) {
    for p in 0..pages {
        if let Some(t) = table.translate(Iova(va + p * PAGE_SIZE)) {
            atc.insert(pasid, t);
        }
    }
}

/// Page-table nodes a table needs for `pages` 4 KiB pages in one run: one leaf table per
/// 512 pages, with room for the tables above and a run that straddles boundaries.
pub fn table_nodes_for(pages: u64) -> usize {
    (pages / PAGES_PER_HUGE_PAGE + 16) as usize
}

/// A bound process as the device sees it: guest memory with CPU page tables mapping a
/// region of 4 KiB pages at [`REGION_VA`], and [`PASID`] bound to them with the same region
/// mapped in its device page table.
pub struct Region {
    mem: GuestMemoryMmap,
    mmu: Mmu,
    max_job_bytes: u64,
    region_bytes: u64,
}

impl Region {
    /// The setup for a region of `region_bytes` (a multiple of 4 KiB, at most one job).
    pub fn new(region_bytes: u64) -> Result<Region, BenchError> {
        let config = VgpuConfig::default();
        if region_bytes == 0
            || !region_bytes.is_multiple_of(PAGE_SIZE)
            || region_bytes > config.max_job_bytes
        {
            return Err(BenchError::Region(region_bytes));
        }
        let pages = region_bytes / PAGE_SIZE;
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (FRAMES + region_bytes) as usize)])?;
        // One PT per 512 pages, plus a PD per GiB, a PDPT and the PML4, with room to spare;
        // they all fit below the frames.
        let mut tables = TableWriter::new(&mem, GuestAddress(TABLES), GuestAddress(FRAMES))?;
        tables.map_pages(&mem, REGION_VA, FRAMES, pages, true)?;

        let atc = Atc::new(config.atc_entries, config.atc_ways)?;
        let nodes = table_nodes_for(pages).max(config.max_table_nodes);
        let mut mmu = Mmu::new(atc, config.max_pasids, nodes);
        mmu.bind(PASID, tables.root())?;
        map_pages(&mut mmu.space(PASID)?.table, REGION_VA, FRAMES, pages)?;
        Ok(Region {
            mem,
            mmu,
            max_job_bytes: config.max_job_bytes,
            region_bytes,
        })
    }

    /// Bytes of the region.
    pub fn bytes(&self) -> u64 {
        self.region_bytes
    }

    /// Runs `job` over the region with `oracle` (its mode named `mode` in errors); returns
    /// its nanoseconds and result.
    pub fn job(
        &mut self,
        job: BenchJob,
        mode: &'static str,
        oracle: &mut Oracle,
        counters: &mut GlobalCounters,
    ) -> Result<(u64, u64), BenchError> {
        let (flags, arg0) = match job {
            BenchJob::Fill => (job_op::FILL, PATTERN),
            BenchJob::Checksum => (job_op::CHECKSUM, 0),
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
        let mut j = Job::from_cmd(&cmd, &[], self.max_job_bytes, 0).map_err(BenchError::Refused)?;
        let start = Instant::now();
        let step = j.run_checked(&mut self.mmu, &self.mem, counters, Some(oracle));
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match step {
            Step::Done(value) => Ok((ns, value)),
            step => Err(BenchError::Job {
                op: job.name(),
                mode,
                step,
            }),
        }
    }

    /// FNV-1a-64 of the region as the CPU reads it.
    pub fn cpu_checksum(&self) -> Result<u64, BenchError> {
        let mut data = vec![0u8; self.region_bytes as usize];
        self.mem.read_slice(&mut data, GuestAddress(FRAMES))?;
        Ok(fnv1a64(FNV_OFFSET_BASIS, &data))
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
    let mut region = Region::new(region_bytes)?;
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
            let (fill_ns, _) = region.job(BenchJob::Fill, name, &mut oracles[m], &mut counters)?;
            let (sum_ns, sum) =
                region.job(BenchJob::Checksum, name, &mut oracles[m], &mut counters)?;
            // Every FILL writes the same data: the CPU reads it once.
            let want = match checksum {
                Some(want) => want,
                None => *checksum.insert(region.cpu_checksum()?),
            };
            if sum != want {
                return Err(BenchError::Checksum {
                    mode: name,
                    got: sum,
                    want,
                });
            }
            if timed {
                times[m][0].push(fill_ns);
                times[m][1].push(sum_ns);
                times[m][2].push(fill_ns + sum_ns);
            }
        }
    }
    if counters.violations != 0 {
        return Err(BenchError::Violations(counters.violations));
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
        assert_eq!(j["region_bytes"], region);
        assert_eq!(j["sampled_one_in"], 16);
        assert!(j["jobs"]["both"]["every_over_off"].as_f64().unwrap() > 0.0);
        assert!(j["jobs"]["FILL"]["every_median_ns"].as_u64().unwrap() > 0);
        assert_eq!(j["oracle_checks"]["off"], 0);
        assert_eq!(j["goal_met"], b.goal_met());
        let s = b.summary();
        assert!(s.contains("every/off") && s.contains("64 pages"), "{s}");
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

    #[test]
    fn the_region_is_mapped_alike_on_both_sides() {
        let mut r = Region::new(3 * PAGE_SIZE).unwrap();
        assert_eq!(r.bytes(), 3 * PAGE_SIZE);
        let table = r.mmu.table(PASID).unwrap();
        assert_eq!(table.leaf_counts(), (3, 0));
        let t = table.translate(Iova(REGION_VA + 0x2008)).unwrap();
        assert_eq!(
            t.gpa(Iova(REGION_VA + 0x2008)),
            GuestAddress(FRAMES + 0x2008)
        );
        let cpu = crate::x86::walk(&r.mem, GuestAddress(TABLES), REGION_VA + 0x2008).unwrap();
        assert_eq!(
            (cpu.gpa, cpu.writable),
            (GuestAddress(FRAMES + 0x2008), true)
        );
        let mut o = Oracle::new(OracleMode::Every);
        let mut c = GlobalCounters::default();
        r.job(BenchJob::Fill, "every", &mut o, &mut c).unwrap();
        let (_, sum) = r.job(BenchJob::Checksum, "every", &mut o, &mut c).unwrap();
        assert_eq!(sum, r.cpu_checksum().unwrap());
        assert_eq!((c.violations, o.checks()), (0, 6));
        // The shared helpers: a table and a cache of the same pages.
        let mut t = PageTable::new(table_nodes_for(4));
        map_pages(&mut t, 0x1000, 0x9000, 4).unwrap();
        let mut atc = Atc::new(8, 8).unwrap();
        cache_pages(&mut atc, Pasid(2), &t, 0x1000, 8);
        assert_eq!(atc.len(), 4);
    }
}

//! `vgpu-race`: device faults race CPU invalidations of the very pages they map.
//!
//! Racer threads keep dropping (`madvise(MADV_DONTNEED)`, a CLEAR notification) and
//! rewriting the pages of a small buffer while the main thread has the device read it over
//! and over, so device faults are served while the pages they snapshot are being
//! invalidated. The driver's fault path must notice (`mmu_interval_read_retry`) and take a
//! new snapshot; the device's `fault_retries` counter shows how often it did. A driver that
//! maps a stale snapshot (`inject=no-seq-retry`) or lets the kernel free the pages before
//! the device completed the invalidation (`early-complete`) leaves the device reading freed
//! pages, which the coherence oracle counts. While it runs, the driver's `fault_delay_us`
//! test aid holds each fault between its snapshot and its device update, so that a race
//! which would otherwise be rare happens many times a second.
//!
//! Checks: device reads complete (a read whose fault the driver gave up on with EBUSY,
//! after a second of snapshots invalidated on every try, is a liveness cost the kernel's
//! HMM contract allows; it is counted, and fails the workload only when most reads end that
//! way), CLEAR notifications reached the device, and after the race the device reads exactly
//! what the CPU wrote. Prints one `VGPU-WORKLOAD {json}`
//! line; exits 1 if a check failed.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use guest_programs::device::Vgpu;
use guest_programs::protocol::{Counters, Event};
use guest_programs::uapi::{self, JOB_CHECKSUM, STATUS_FAULT, STATUS_OK};
use guest_programs::workload::{fnv1a64, Buffer, Checks, DriverParam};

const PAGE: usize = 4096;
const PAGES: usize = 16;
const LEN: usize = PAGES * PAGE;
/// How long the racers run.
const RACE: Duration = Duration::from_secs(3);
/// Racer threads; each drops and rewrites its share of the buffer.
const RACERS: usize = 1;
/// Pause of a racer between rounds.
const RACER_PAUSE: Duration = Duration::from_millis(5);
/// Most racer rounds per device read. A fault whose snapshot is invalidated on every try
/// gives up after a second (HMM_RANGE_DEFAULT_TIMEOUT), and a correct driver may do just
/// that under an adversary that never stops: unbounded racers made device reads fail on a
/// loaded machine. With a budget per read every read makes progress.
const ROUNDS_PER_READ: u64 = 4;
/// The driver's fault_delay_us while the race runs.
const FAULT_DELAY_US: &str = "2000";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vgpu-race: {e}");
            ExitCode::from(2)
        }
    }
}

/// The byte the CPU keeps at offset `i` of the buffer.
fn pattern(i: usize) -> u8 {
    (i * 13 + 5) as u8
}

/// One racer: until `stop`, drops the pages of `[addr, addr + len)` and writes the pattern
/// back (`first` is the buffer offset of `addr`), at most [`ROUNDS_PER_READ`] rounds per
/// device read finished (`reads`). Returns the rounds it made.
fn race(
    addr: usize,
    first: usize,
    len: usize,
    stop: &AtomicBool,
    reads: &AtomicU64,
) -> io::Result<u64> {
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        if rounds >= (reads.load(Ordering::Relaxed) + 1) * ROUNDS_PER_READ {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // SAFETY: the range is inside the buffer, which outlives the racers (scoped
        // threads); only the racers write it on the CPU while they run, each its own half.
        if unsafe { libc::madvise(addr as *mut _, len, libc::MADV_DONTNEED) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..len {
            // SAFETY: as above; the mapping is readable and writable.
            unsafe { std::ptr::write_volatile((addr + i) as *mut u8, pattern(first + i)) };
        }
        rounds += 1;
        std::thread::sleep(RACER_PAUSE);
    }
    Ok(rounds)
}

fn run() -> io::Result<bool> {
    let vgpu = Vgpu::bind(uapi::POLICY_DEFAULT)?;
    let before = vgpu.counters()?;
    let mut buf = Buffer::new(LEN)?;
    let mut c = Checks::new("race");
    for (i, b) in buf.bytes_mut(0, LEN).iter_mut().enumerate() {
        *b = pattern(i);
    }
    let want = fnv1a64(buf.bytes(0, LEN));

    let delay = DriverParam::set("fault_delay_us", FAULT_DELAY_US)?;
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let (jobs, failed, gave_up, rounds) = std::thread::scope(|s| -> io::Result<_> {
        let share = LEN / RACERS;
        let racers: Vec<_> = (0..RACERS)
            .map(|k| {
                let (addr, stop, reads) = (buf.addr(k * share), &stop, &reads);
                s.spawn(move || race(addr, k * share, share, stop, reads))
            })
            .collect();
        let start = Instant::now();
        let (mut jobs, mut failed, mut gave_up) = (0, 0, 0);
        let mut outcome = Ok(());
        while start.elapsed() < RACE {
            match vgpu.job(JOB_CHECKSUM, buf.addr(0), LEN, 0) {
                Ok(r) => {
                    jobs += 1;
                    reads.store(jobs, Ordering::Relaxed);
                    if r.status == STATUS_FAULT && r.result == libc::EBUSY as u64 {
                        gave_up += 1;
                    } else if r.status != STATUS_OK {
                        failed += 1;
                        println!(
                            "race: device read {jobs}: status {} result {}",
                            r.status, r.result
                        );
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut rounds = 0;
        for r in racers {
            rounds += r.join().expect("racer panicked")?;
        }
        outcome.map(|()| (jobs, failed, gave_up, rounds))
    })?;
    drop(delay);
    println!(
        "race: {jobs} device reads, {failed} failed, {gave_up} gave up (EBUSY), {rounds} racer rounds"
    );

    c.check(failed == 0, || {
        format!("{failed} of {jobs} device reads failed during the race")
    });
    c.check(gave_up * 2 <= jobs, || {
        format!("{gave_up} of {jobs} device reads gave up (EBUSY) during the race")
    });
    c.check(rounds > 0 && jobs > 0, || "the race did not run".into());
    // Quiet now: the device must read exactly what the CPU wrote last.
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(0), LEN, 0)?;
    c.status("checksum after the race", r.status, STATUS_OK);
    c.check(r.result == want, || {
        format!(
            "checksum after the race: device {:#x}, CPU {want:#x}",
            r.result
        )
    });

    let delta = Counters::movement(&before, &vgpu.counters()?);
    c.notified(&delta, &[Event::Clear]);
    buf.munmap(0, LEN)?;
    Ok(c.report("race", &delta))
}

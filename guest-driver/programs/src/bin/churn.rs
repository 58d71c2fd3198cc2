//! `vgpu-churn`: the guest's memory management under load, without the device.
//!
//! For 10 s, one thread per CPU maps an anonymous buffer, writes it, forks a child that
//! writes half of it (copy-on-write) and exits, then checks its own copy, write-protects,
//! drops and unmaps the buffer, over and over; another thread keeps reading `/dev/hwrng`
//! (virtio-rng, which every VMM here has), so device interrupts arrive all the while. It
//! never opens the virtual GPU, so it is the control experiment for the platform (the
//! virtual host's nested virtualization, the VMM's vCPUs, memory and interrupts): a guest
//! that crashes here crashed without the virtual GPU's help.
//! Prints `churn: ...` and exits 1 if a parent ever read back other data than it wrote.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use guest_programs::workload::{run_in_child, Buffer};

const PAGE: usize = 4096;
const LEN: usize = 64 * PAGE;
const RUN: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rounds = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let rng_bytes = AtomicU64::new(0);
    let (r, f, b) = (&rounds, &failures, &rng_bytes);
    let errors: Vec<io::Error> = std::thread::scope(|s| {
        let mut workers: Vec<_> = (0..cpus)
            .map(|id| s.spawn(move || churn(id as u8, r, f)))
            .collect();
        workers.push(s.spawn(move || read_rng(b)));
        workers
            .into_iter()
            .filter_map(|w| w.join().expect("churn thread").err())
            .collect()
    });
    let (rounds, failures) = (rounds.into_inner(), failures.into_inner());
    println!(
        "churn: {cpus} threads, {rounds} rounds, {failures} failures, {} KiB from /dev/hwrng",
        rng_bytes.into_inner() >> 10
    );
    for e in &errors {
        eprintln!("vgpu-churn: {e}");
    }
    if !errors.is_empty() {
        ExitCode::from(2)
    } else if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn churn(id: u8, rounds: &AtomicU64, failures: &AtomicU64) -> io::Result<()> {
    let start = Instant::now();
    let mut round: u8 = 0;
    while start.elapsed() < RUN {
        round = round.wrapping_add(1);
        let mine = id.wrapping_mul(31).wrapping_add(round);
        let mut buf = Buffer::new(LEN)?;
        buf.bytes_mut(0, LEN).fill(mine);
        let child = run_in_child(|| {
            buf.bytes_mut(0, LEN / 2).fill(!mine);
            i32::from(buf.bytes(0, LEN / 2).iter().any(|&b| b != !mine))
        })?;
        if child != 0 || buf.bytes(0, LEN).iter().any(|&b| b != mine) {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        buf.protect_read_only(0, LEN)?;
        buf.dontneed(LEN / 2, LEN / 2)?;
        buf.munmap(0, LEN)?;
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads the virtio-rng device for as long as the churn runs.
fn read_rng(bytes: &AtomicU64) -> io::Result<()> {
    use std::io::Read;
    let mut rng = std::fs::File::open("/dev/hwrng")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/hwrng: {e}")))?;
    let mut chunk = [0u8; 64];
    let start = Instant::now();
    while start.elapsed() < RUN {
        let n = rng.read(&mut chunk)?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

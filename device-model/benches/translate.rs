//! Costs of the translation path (issue 4's goals: an ATC hit under 50 ns, a 4-level walk
//! under 200 ns): an ATC hit, a page-table walk to a 4 KiB leaf, the ATS invalidation of a
//! 2 MiB range in a full ATC, and a whole FILL job over 64 pages with the coherence oracle
//! on every access and off (`vmm bench oracle`'s setup, from `device_model::bench`).
//!
//! `cargo bench -p device-model -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use device_model::address::{Iova, IovaRange, Pasid, HUGE_PAGE_SIZE, PAGE_SIZE};
use device_model::bench::{cache_pages, map_pages, table_nodes_for, BenchJob, Region};
use device_model::counters::GlobalCounters;
use device_model::mmu::atc::{Atc, Lookup};
use device_model::mmu::page_table::PageTable;
use device_model::oracle::{Oracle, OracleMode};

/// An address whose walk uses all four levels with distinct indices at each.
const VA: u64 = 0x7f5a_b3c4_d000;

/// A table mapping the page at [`VA`].
fn one_page() -> PageTable {
    let mut table = PageTable::new(table_nodes_for(1));
    map_pages(&mut table, VA, 0x1234_5000, 1).unwrap();
    table
}

fn atc_hit(c: &mut Criterion) {
    let table = one_page();
    let mut atc = Atc::new(512, 8).unwrap();
    cache_pages(&mut atc, Pasid(1), &table, VA, 1);
    c.bench_function("atc_hit", |b| {
        b.iter(|| {
            let hit = atc.lookup(black_box(Pasid(1)), black_box(Iova(VA + 0x10)), false);
            assert!(matches!(hit, Lookup::Hit(_)));
            hit
        })
    });
}

fn page_walk(c: &mut Criterion) {
    let table = one_page();
    c.bench_function("page_walk_4_levels", |b| {
        b.iter(|| table.translate(black_box(Iova(VA + 0x10))).unwrap())
    });
}

fn range_invalidation(c: &mut Criterion) {
    // A full 512-entry ATC: 256 pages inside the 2 MiB range, 256 outside it.
    let mut table = PageTable::new(table_nodes_for(2048));
    let mut atc = Atc::new(512, 8).unwrap();
    let outside = 1280 * PAGE_SIZE;
    map_pages(&mut table, 0, 0, 256).unwrap();
    map_pages(&mut table, outside, outside, 256).unwrap();
    cache_pages(&mut atc, Pasid(1), &table, 0, 256);
    cache_pages(&mut atc, Pasid(1), &table, outside, 256);
    let range = IovaRange::pages(0, HUGE_PAGE_SIZE).unwrap();
    c.bench_function("atc_invalidate_2m_range", |b| {
        // Each run starts from the full cache (cloning it is setup, not timed).
        b.iter_batched_ref(
            || atc.clone(),
            |atc| atc.invalidate_range(Pasid(1), black_box(range)),
            BatchSize::SmallInput,
        )
    });
}

fn fill_job(c: &mut Criterion) {
    let mut region = Region::new(64 * PAGE_SIZE).unwrap();
    let mut counters = GlobalCounters::default();
    for (name, mode) in [("every", OracleMode::Every), ("off", OracleMode::Off)] {
        let mut oracle = Oracle::new(mode);
        c.bench_function(&format!("fill_64_pages_oracle_{name}"), |b| {
            b.iter(|| {
                region
                    .job(BenchJob::Fill, name, &mut oracle, &mut counters)
                    .unwrap()
            })
        });
    }
    assert_eq!(counters.violations, 0);
}

criterion_group!(benches, atc_hit, page_walk, range_invalidation, fill_job);
criterion_main!(benches);

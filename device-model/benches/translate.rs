//! Costs of the translation path (issue 4's goals: an ATC hit under 50 ns, a 4-level walk
//! under 200 ns): an ATC hit, a page-table walk to a 4 KiB leaf, and the ATS invalidation
//! of a 2 MiB range in a full ATC.
//!
//! `cargo bench -p device-model -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use device_model::address::{Iova, IovaRange, Pasid, HUGE_PAGE_SIZE, PAGE_SIZE};
use device_model::atc::{Atc, Lookup};
use device_model::page_table::PageTable;
use vm_memory::GuestAddress;

/// An address whose walk uses all four levels with distinct indices at each.
const VA: u64 = 0x7f5a_b3c4_d000;

fn atc_hit(c: &mut Criterion) {
    let mut table = PageTable::new(16);
    table
        .map_page(Iova(VA), GuestAddress(0x1234_5000), true)
        .unwrap();
    let mut atc = Atc::new(512, 8).unwrap();
    atc.insert(Pasid(1), table.translate(Iova(VA)).unwrap());
    c.bench_function("atc_hit", |b| {
        b.iter(|| {
            let hit = atc.lookup(black_box(Pasid(1)), black_box(Iova(VA + 0x10)), false);
            assert!(matches!(hit, Lookup::Hit(_)));
            hit
        })
    });
}

fn page_walk(c: &mut Criterion) {
    let mut table = PageTable::new(16);
    table
        .map_page(Iova(VA), GuestAddress(0x1234_5000), true)
        .unwrap();
    c.bench_function("page_walk_4_levels", |b| {
        b.iter(|| table.translate(black_box(Iova(VA + 0x10))).unwrap())
    });
}

fn range_invalidation(c: &mut Criterion) {
    // A full 512-entry ATC: 256 pages inside the 2 MiB range, 256 outside it.
    let mut table = PageTable::new(64);
    let mut atc = Atc::new(512, 8).unwrap();
    for i in 0..512u64 {
        let va = if i < 256 { i } else { 1024 + i } * PAGE_SIZE;
        table.map_page(Iova(va), GuestAddress(va), true).unwrap();
        atc.insert(Pasid(1), table.translate(Iova(va)).unwrap());
    }
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

criterion_group!(benches, atc_hit, page_walk, range_invalidation);
criterion_main!(benches);

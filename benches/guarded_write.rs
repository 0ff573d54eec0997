//! A guarded write through each guard style, next to the same write in a
//! bare SQLite transaction measured in the same run; with
//! synchronous=NORMAL and FULL.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::Pair;
use criterion::{Criterion, criterion_group, criterion_main};
use leasehold::Synchronous;

pub fn bench_pair(c: &mut Criterion, group: &str, mut pair: Pair) {
    let mut g = c.benchmark_group(group);
    g.bench_function(format!("{}/leasehold", pair.name), |b| {
        b.iter(|| (pair.leasehold)())
    });
    g.bench_function(format!("{}/baseline", pair.name), |b| {
        b.iter(|| (pair.baseline)())
    });
    g.finish();
}

fn guarded_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    bench_pair(
        c,
        "guarded_write",
        common::guarded_write_txn(p, Synchronous::Normal, "NORMAL"),
    );
    bench_pair(
        c,
        "guarded_write",
        common::guarded_write_check_in(p, Synchronous::Normal, "NORMAL"),
    );
    bench_pair(c, "guarded_write", common::guarded_write_fragment(p));
    bench_pair(
        c,
        "guarded_write_full",
        common::guarded_write_check_in(p, Synchronous::Full, "FULL"),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = guarded_write
}
criterion_main!(benches);

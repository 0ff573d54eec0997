//! A standalone token check next to a raw prepared SELECT; `get` and `list`
//! with 100,000 leases in the table next to the same with 100.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let pairs = [
        (common::token_check(p), "raw prepared SELECT"),
        (common::reads(p, 100_000, false), "100 leases in the table"),
        (common::reads(p, 100_000, true), "100 leases in the table"),
    ];
    for (mut pair, baseline) in pairs {
        let mut g = c.benchmark_group("reads");
        g.bench_function(format!("{}/leasehold", pair.name), |b| {
            b.iter(|| (pair.leasehold)())
        });
        g.bench_function(format!("{}/{baseline}", pair.name), |b| {
            b.iter(|| (pair.baseline)())
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = reads
}
criterion_main!(benches);

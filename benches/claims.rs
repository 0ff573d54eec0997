//! Claims of new tenures (with their releases), extensions and batched renewals, next to
//! raw rusqlite upserts doing the same writes in the same run.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn claims(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    for mut pair in [
        common::claim(p, common::ClaimCase::NewTenure),
        common::claim(p, common::ClaimCase::NewTenureLogged),
        common::claim(p, common::ClaimCase::Extend),
        common::extend_tenure(p),
        common::batched_renewals(p),
    ] {
        let mut g = c.benchmark_group("claims");
        g.bench_function(format!("{}/leasehold", pair.name), |b| {
            b.iter(|| (pair.leasehold)())
        });
        g.bench_function(format!("{}/baseline", pair.name), |b| {
            b.iter(|| (pair.baseline)())
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = claims
}
criterion_main!(benches);

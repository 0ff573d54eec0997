//! Hand-over latency across processes, the cost of watching, and a renewal
//! round of 10,000 trackers.
//!
//! - `handover/after release`: the leader (this process) releases; a tracker
//!   in another process, waiting as a minion, claims. Measured from just
//!   after the release's commit to just after the successor's claim
//!   committed (as its `wait_leader` ticket resolves), on the wall clock both
//!   processes share. Releases land at a random phase.
//! - `handover/after SIGKILL`: a leader process claims for 100 ms and is
//!   killed; measured from the lease's nominal expiry to the successor's
//!   claim.
//! - `watch/idle`: CPU used by an engine whose background thread watches for
//!   other processes' changes (one minion tracker and ten blocked waiters),
//!   as a share of one core.
//! - `trackers/10000 round`: CPU time and write transactions for one renewal
//!   round of 10,000 trackers with a 30 s guarantee (on a manual clock).
//!
//! The latencies are also printed as p50/p99 (criterion reports means and
//! medians only). Set `LEASEHOLD_BENCH_SHORT=1` for a quick run.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::procs::{
    Helper, handover_after_kill, handover_after_release, idle_watch, report, serve_role, short,
    ten_thousand_trackers,
};
use criterion::Criterion;
use leasehold::Engine;

fn handover(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("handover.db");
    let engine = Engine::open(&db).expect("engine");
    let mut successor = Helper::spawn("successor", &db);
    let mut group = c.benchmark_group("handover");
    group.sample_size(10);
    let mut release_ms = Vec::new();
    group.bench_function("after release", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let d = handover_after_release(&engine, &mut successor);
                    release_ms.push(d.as_secs_f64() * 1e3);
                    d
                })
                .sum()
        })
    });
    let mut kill_ms = Vec::new();
    group.bench_function("after SIGKILL", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let d = handover_after_kill("doomed", &db, &mut successor);
                    kill_ms.push(d.as_secs_f64() * 1e3);
                    d
                })
                .sum()
        })
    });
    group.finish();
    report("handover/after release", release_ms);
    report("handover/after SIGKILL (from nominal expiry)", kill_ms);
}

fn main() {
    if serve_role() {
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(if short() { 1 } else { 5 }))
        .configure_from_args();
    handover(&mut c);
    idle_watch();
    let (n, cpu, txns, renewals) = ten_thousand_trackers();
    println!("trackers/{n} round: {cpu:?} CPU, {txns} write transactions, {renewals} renewals");
    c.final_summary();
}

//! Eight processes hammering one file with guarded writes: how long single
//! transactions wait for the write lock, how evenly the processes are
//! served, how large the WAL grows, and whether a lease renewal keeps its
//! deadline — with SQLite's default busy handler and with leasehold's fair
//! one, in the same run.
//!
//! Modes: "flat out" (every process commits as fast as it can) and "paced"
//! (every process offers 2,000 transactions per second on a schedule).
//! Each writer's transaction is a `Txn`: its own lease's guard plus an
//! `UPDATE` of its own row, `synchronous=NORMAL`. Writer 0 also runs a
//! tracker with a 50 ms guarantee whose renewals must keep their deadlines.
//!
//! `LEASEHOLD_BENCH_SHORT=1` runs each case for 1 s instead of 10 s.

#![allow(missing_docs)]

mod common;

use common::procs::{PROCESSES, print, run_case, serve_role};

fn main() {
    if serve_role() || std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    println!("contention: {PROCESSES} processes, guarded writes on one file");
    let default_flat = run_case(dir.path(), "default", None);
    print("default, flat out", &default_flat);
    let fair_flat = run_case(dir.path(), "fair", None);
    print("fair, flat out", &fair_flat);
    let default_paced = run_case(dir.path(), "default", Some(2000));
    print("default, paced 2k/s", &default_paced);
    let fair_paced = run_case(dir.path(), "fair", Some(2000));
    print("fair, paced 2k/s", &fair_paced);
    println!(
        "fair vs default, flat out: throughput ratio {:.2}",
        fair_flat.throughput / default_flat.throughput
    );
}

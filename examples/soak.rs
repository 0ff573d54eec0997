//! A long run of the reliability workload: worker processes contend for one
//! lease and write only through guarded transactions while nemeses kill,
//! pause, clock-step and starve them; the history checker judges the result.
//!
//! ```sh
//! cargo run --release --example soak -- --minutes 10
//! ```
//!
//! Options: `--minutes N` (default 1), `--workers N` (4), `--lease-ms N`
//! (300), `--seed N`, `--no-guard` (writes unguarded: the checker must then
//! find violations). Half the time runs without clock steps (so guarantee
//! windows are checked too), half with every nemesis. Exits non-zero if a
//! violation is found (or, with `--no-guard`, if none is).

use std::process::Command;
use std::time::Duration;

use leasehold::testing::{Nemesis, RunReport, Workload, serve_worker};

const USAGE: &str =
    "usage: soak [--minutes N (1)] [--workers N (4)] [--lease-ms N (300)] [--seed N] [--no-guard]";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn print(phase: &str, r: &RunReport) {
    let c = &r.check;
    println!("{phase}:");
    println!(
        "  operations {} {:?}, tenures {}, acknowledged writes {}, rows {}",
        c.total_operations(),
        c.operations,
        c.tenures,
        c.acknowledged_writes,
        c.rows
    );
    println!("  faults {:?}, worker processes {}", r.faults, r.processes);
    println!("  violations: {}", c.violations.len());
    for v in c.violations.iter().take(5) {
        println!("    - {v}");
    }
    if let Some(p) = &c.saved_history {
        println!("  history saved to {}", p.display());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if serve_worker() {
        return Ok(());
    }
    let known = ["--minutes", "--workers", "--lease-ms", "--seed"];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--no-guard" => {}
            _ if known.contains(&a.as_str()) => {
                args.next();
            }
            _ => {
                eprintln!("soak: unknown argument {a:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let minutes: f64 = arg("--minutes").map_or(Ok(1.0), |m| m.parse())?;
    let workers: u32 = arg("--workers").map_or(Ok(4), |m| m.parse())?;
    let lease_ms: u64 = arg("--lease-ms").map_or(Ok(300), |m| m.parse())?;
    let seed: u64 =
        arg("--seed").map_or(Ok(leasehold::testing::wall_ms() as u64), |m| m.parse())?;
    let guard = !std::env::args().any(|a| a == "--no-guard");
    let half = Duration::from_secs_f64(minutes * 60.0 / 2.0);
    println!(
        "soak: {minutes} min, {workers} workers, {lease_ms} ms leases, seed {seed}, writes {}",
        if guard { "guarded" } else { "UNGUARDED" }
    );
    let exe = std::env::current_exe()?;
    let command = || Command::new(&exe);
    let mut total = 0;
    for (phase, nemeses) in [
        (
            "phase 1: kills, pauses, a held write lock, pool exhaustion (guarantee windows checked)",
            vec![
                Nemesis::Kill,
                Nemesis::Pause,
                Nemesis::LockHolder,
                Nemesis::PoolExhaustion,
            ],
        ),
        (
            "phase 2: every nemesis, clock steps included",
            vec![
                Nemesis::Kill,
                Nemesis::Pause,
                Nemesis::ClockStep,
                Nemesis::LockHolder,
                Nemesis::PoolExhaustion,
            ],
        ),
    ] {
        println!("{phase} …");
        let dir = tempfile::tempdir()?;
        let report = Workload::builder()
            .workers(workers)
            .duration(half)
            .lease(Duration::from_millis(lease_ms))
            .guard(guard)
            .nemeses(nemeses)
            .seed(seed)
            .verbose(true)
            .build()?
            .run(dir.path(), &command)?;
        print(phase, &report);
        total += report.check.violations.len();
        if !report.check.passed() {
            // Keep the evidence.
            let kept = dir.keep();
            println!("  files kept in {}", kept.display());
        }
    }
    let ok = if guard { total == 0 } else { total > 0 };
    println!(
        "verdict: {}",
        match (guard, ok) {
            (true, true) => "PASS — no violation",
            (true, false) => "FAIL — violations found",
            (false, true) => "the checker caught the unguarded writes (as it must)",
            (false, false) => "FAIL — unguarded writes went unnoticed",
        }
    );
    if ok {
        Ok(())
    } else {
        Err("soak failed".into())
    }
}

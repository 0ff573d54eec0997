//! Hand-over latency across processes, the cost of watching, and a renewal
//! round of 10,000 trackers.
//!
//! - `handover/after release`: the leader (this process) releases; a tracker
//!   in another process, waiting as a minion, claims. Measured from just
//!   after the release's commit to just after the successor's claim
//!   committed (as its `wait_leader` ticket resolves), on the wall clock both
//!   processes share.
//! - `handover/after SIGKILL`: a leader process claims for 100 ms and is
//!   killed; measured from the lease's nominal expiry to the successor's
//!   claim.
//! - `watch/idle`: CPU used by an engine whose background thread watches for
//!   other processes' changes (one minion tracker and ten blocked waiters),
//!   as a share of one core.
//! - `trackers/10k round`: CPU time and write transactions for one renewal
//!   round of 10,000 trackers with a 30 s guarantee (on a manual clock).
//!
//! The latencies are also printed as p50/p99 (criterion reports means and
//! medians only). Set `LEASEHOLD_BENCH_SHORT=1` for a quick run.
//!
//! The helper processes are this bench binary re-run with
//! `LEASEHOLD_BENCH_ROLE` set.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use leasehold::{Engine, Key, ManualClock};

fn key() -> Key {
    Key::new("bench", "handover").expect("key")
}

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_nanos()
}

fn short() -> bool {
    std::env::var_os("LEASEHOLD_BENCH_SHORT").is_some()
}

// Helper processes.

fn successor(db: &str) {
    let engine = Engine::open(db).expect("open");
    let out = |line: String| {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}").expect("write");
        o.flush().expect("flush");
    };
    for line in std::io::stdin().lock().lines() {
        if line.expect("stdin").trim() != "track" {
            continue;
        }
        let tracker = engine
            .tracker(&key(), "successor")
            .guarantee(Duration::from_secs(10))
            .build()
            .expect("tracker");
        assert!(!tracker.claim_leader().wait(), "the bench holds the lease");
        out("minion".into());
        assert!(tracker.wait_leader().wait());
        let led = wall_ns();
        out(format!("led {led}"));
        tracker.stop();
        out("released".into());
    }
}

fn doomed_leader(db: &str) {
    let engine = Engine::open(db).expect("open");
    let tenure = engine
        .claim(&key(), "doomed", Duration::from_millis(100))
        .expect("claim");
    let expiry_ns = tenure.expires_at().timestamp_nanos_opt().expect("ns");
    println!("claimed {expiry_ns}");
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(3600));
}

struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    fn spawn(role: &str, db: &std::path::Path) -> Helper {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env("LEASEHOLD_BENCH_ROLE", role)
            .env("LEASEHOLD_BENCH_DB", db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn helper");
        let stdin = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Helper {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("send");
        self.stdin.flush().expect("flush");
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("helper line")
    }

    fn next_ns(&self, prefix: &str) -> i128 {
        let line = self.next();
        line.strip_prefix(prefix)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected {prefix}…, got {line}"))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Measurements.

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut samples_ms: Vec<f64>) {
    samples_ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        samples_ms.len(),
        percentile(&samples_ms, 0.5),
        percentile(&samples_ms, 0.99),
        samples_ms.last().copied().unwrap_or(0.0)
    );
}

/// One hand-over after a release; returns the latency.
fn handover_after_release(engine: &Engine, successor: &mut Helper) -> Duration {
    engine
        .claim(&key(), "bench", Duration::from_secs(60))
        .expect("claim");
    successor.send("track");
    assert_eq!(successor.next(), "minion");
    // Release at a random phase of the successor's watch interval, as real
    // releases are (right after "minion" its thread has just polled).
    std::thread::sleep(Duration::from_micros(u64::from(wall_ns() as u32 % 2000)));
    engine.release(&key(), "bench").expect("release");
    let released = wall_ns() as i128;
    let led = successor.next_ns("led ");
    assert_eq!(successor.next(), "released");
    Duration::from_nanos((led - released).max(0) as u64)
}

/// One hand-over after the leader is killed; returns the latency from the
/// lease's nominal expiry.
fn handover_after_kill(db: &std::path::Path, successor: &mut Helper) -> Duration {
    let mut leader = Helper::spawn("doomed", db);
    let expiry = leader.next_ns("claimed ");
    successor.send("track");
    assert_eq!(successor.next(), "minion");
    leader.child.kill().expect("SIGKILL");
    let led = successor.next_ns("led ");
    assert_eq!(successor.next(), "released");
    leader.child.wait().expect("reap");
    Duration::from_nanos((led - expiry).max(0) as u64)
}

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
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = handover_after_release(&engine, &mut successor);
                release_ms.push(d.as_secs_f64() * 1e3);
                total += d;
            }
            total
        })
    });
    let mut kill_ms = Vec::new();
    group.bench_function("after SIGKILL", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = handover_after_kill(&db, &mut successor);
                kill_ms.push(d.as_secs_f64() * 1e3);
                total += d;
            }
            total
        })
    });
    group.finish();
    report("handover/after release", release_ms);
    report("handover/after SIGKILL (from nominal expiry)", kill_ms);
}

/// CPU time this process has used, from /proc (Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/schedstat").expect("schedstat");
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("ns");
    // schedstat covers the main thread only; sum all threads instead.
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let s = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += s
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total.max(ns))
}

fn idle_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("idle.db");
    let other = Engine::open(&db).expect("other");
    other
        .claim(&key(), "other", Duration::from_secs(3600))
        .expect("claim");
    let engine = Engine::open(&db).expect("engine");
    let tracker = engine.tracker(&key(), "watcher").build().expect("tracker");
    assert!(tracker.wait_minion().wait());
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.block_until_released(&key()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200)); // let them block
    let secs = if short() { 1 } else { 5 };
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = process_cpu() - cpu0;
    let wall = t0.elapsed();
    println!(
        "watch/idle: {:.3}% of one core ({:?} CPU over {:?}; 1 minion tracker, 10 waiters, watch interval 1 ms)",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        cpu,
        wall
    );
    // Stop the tracker first, or it would take the lease the moment it is
    // released and the waiters would (rightly) go on waiting.
    tracker.stop();
    other.release(&key(), "other").expect("release");
    for w in waiters {
        w.join().expect("waiter").expect("released");
    }
}

fn ten_thousand_trackers() {
    let n = if short() { 2_000 } else { 10_000 };
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(leasehold::chrono::Utc::now());
    let engine = Engine::builder(dir.path().join("many.db"))
        .clock(clock.clone())
        .build()
        .expect("engine");
    let t0 = Instant::now();
    let trackers: Vec<_> = (0..n)
        .map(|i| {
            engine
                .tracker(
                    &Key::new("many", format!("app-{i}")).expect("key"),
                    "unit/0",
                )
                .guarantee(Duration::from_secs(30))
                .build()
                .expect("tracker")
        })
        .collect();
    engine.settle();
    let started = t0.elapsed();
    let before = engine.background_stats();
    let cpu0 = process_cpu();
    let w0 = Instant::now();
    clock.advance(Duration::from_secs(30));
    engine.settle();
    let cpu = process_cpu() - cpu0;
    let wall = w0.elapsed();
    let after = engine.background_stats();
    assert!(trackers.iter().all(leasehold::LeaseTracker::is_leader));
    println!(
        "trackers/{n} round: {:?} CPU, {:?} wall, {} write transactions, {} renewals (first claims of all {n}: {:?})",
        cpu,
        wall,
        after.write_transactions - before.write_transactions,
        after.claims - before.claims,
        started
    );
}

fn main() {
    if let Ok(role) = std::env::var("LEASEHOLD_BENCH_ROLE") {
        let db = std::env::var("LEASEHOLD_BENCH_DB").expect("db");
        match role.as_str() {
            "successor" => successor(&db),
            "doomed" => doomed_leader(&db),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(if short() { 1 } else { 5 }))
        .configure_from_args();
    handover(&mut c);
    idle_watch();
    ten_thousand_trackers();
    c.final_summary();
}

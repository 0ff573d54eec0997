//! Multi-process measurements: hand-over latency, the cost of watching,
//! a renewal round of many trackers, and write-lock contention. Helper
//! processes are the running bench binary itself, re-run with
//! `LEASEHOLD_BENCH_ROLE` set; every bench's `main` starts with
//! [`serve_role`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leasehold::{Engine, Key, LockWait, ManualClock, Txn};

pub fn short() -> bool {
    std::env::var_os("LEASEHOLD_BENCH_SHORT").is_some()
}

/// If this process is a helper, does its job and returns true.
pub fn serve_role() -> bool {
    let Ok(role) = std::env::var("LEASEHOLD_BENCH_ROLE") else {
        return false;
    };
    let db = std::env::var("LEASEHOLD_BENCH_DB").expect("db");
    if super::pg::serve(&role, &db) {
        return true;
    }
    match role.as_str() {
        "successor" => successor(&db),
        "doomed" => doomed_leader(&db),
        "writer" => writer(&db),
        other => panic!("unknown role {other}"),
    }
    true
}

fn key() -> Key {
    Key::new("bench", "handover").expect("key")
}

pub fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_nanos()
}
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

pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    pub fn spawn(role: &str, db: impl AsRef<std::ffi::OsStr>) -> Helper {
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

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Prints and returns (p50, p99) in ms.
pub fn report(name: &str, mut samples_ms: Vec<f64>) -> (f64, f64) {
    samples_ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        samples_ms.len(),
        percentile(&samples_ms, 0.5),
        percentile(&samples_ms, 0.99),
        samples_ms.last().copied().unwrap_or(0.0)
    );
    (percentile(&samples_ms, 0.5), percentile(&samples_ms, 0.99))
}

/// One hand-over after a release; returns the latency, measured from the
/// release call.
pub fn handover_after_release<B: leasehold::Backend>(
    engine: &leasehold::engine::Engine<B>,
    successor: &mut Helper,
) -> Duration {
    handover_after_release_both(engine, successor).0
}

/// One hand-over after a release; returns the latency measured from the
/// release call and from its return (once its commit is durable: what
/// matters when the commit itself takes an fsync).
pub fn handover_after_release_both<B: leasehold::Backend>(
    engine: &leasehold::engine::Engine<B>,
    successor: &mut Helper,
) -> (Duration, Duration) {
    engine
        .claim(&key(), "bench", Duration::from_secs(60))
        .expect("claim");
    successor.send("track");
    assert_eq!(successor.next(), "minion");
    // Release at a random phase of the successor's watch interval, as real
    // releases are (right after "minion" its thread has just polled).
    std::thread::sleep(Duration::from_micros(u64::from(wall_ns() as u32 % 2000)));
    // Stamped before the call, so the figure includes the release's own
    // transaction: stamped after, a descheduled bench process would see
    // the successor lead "before" the release.
    let released = wall_ns() as i128;
    engine.release(&key(), "bench").expect("release");
    let committed = wall_ns() as i128;
    let led = successor.next_ns("led ");
    assert_eq!(successor.next(), "released");
    let since = |t: i128| Duration::from_nanos((led - t).max(0) as u64);
    (since(released), since(committed))
}

/// One hand-over after the leader is killed; returns the latency from the
/// lease's nominal expiry.
pub fn handover_after_kill(
    role: &str,
    db: impl AsRef<std::ffi::OsStr>,
    successor: &mut Helper,
) -> Duration {
    let mut leader = Helper::spawn(role, db);
    let expiry = leader.next_ns("claimed ");
    successor.send("track");
    assert_eq!(successor.next(), "minion");
    leader.child.kill().expect("SIGKILL");
    let led = successor.next_ns("led ");
    assert_eq!(successor.next(), "released");
    leader.child.wait().expect("reap");
    Duration::from_nanos((led - expiry).max(0) as u64)
}

/// CPU time this process has used, from /proc (Linux).
pub fn process_cpu() -> Duration {
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

/// Returns the share of one core used, in percent.
pub fn idle_watch() -> f64 {
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
    let percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "watch/idle: {percent:.3}% of one core ({cpu:?} CPU over {wall:?}; 1 minion tracker, 10 waiters)"
    );
    // Stop the tracker first, or it would take the lease the moment it is
    // released and the waiters would (rightly) go on waiting.
    tracker.stop();
    other.release(&key(), "other").expect("release");
    for w in waiters {
        w.join().expect("waiter").expect("released");
    }
    percent
}

/// One renewal round of 10,000 trackers (2,000 in short mode): returns
/// (trackers, CPU time, write transactions, renewals).
pub fn ten_thousand_trackers() -> (usize, Duration, u64, u64) {
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
    (
        n,
        cpu,
        after.write_transactions - before.write_transactions,
        after.claims - before.claims,
    )
}

pub const PROCESSES: usize = 8;

fn policy(name: &str) -> LockWait {
    match name {
        "default" => LockWait::SqliteDefault,
        _ => LockWait::Fair,
    }
}

/// A writer process: waits for "go", writes until its time is up, then
/// prints its latencies (µs) and counts as one JSON line.
fn writer(db: &str) {
    let id: usize = std::env::var("LEASEHOLD_BENCH_ID")
        .expect("id")
        .parse()
        .expect("id");
    let pol = std::env::var("LEASEHOLD_BENCH_POLICY").expect("policy");
    let paced: Option<u64> = std::env::var("LEASEHOLD_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok());
    let secs: f64 = std::env::var("LEASEHOLD_BENCH_SECS")
        .expect("secs")
        .parse()
        .expect("secs");
    let engine = Engine::builder(db)
        .lock_wait(policy(&pol))
        .busy_timeout(Duration::from_secs(30))
        .build()
        .expect("engine");
    let key = Key::new("bench", format!("writer-{id}")).expect("key");
    let token = engine
        .claim(&key, "me", Duration::from_secs(3600))
        .expect("claim")
        .token();
    let mut txn = Txn::new();
    token.add_to(&mut txn);
    txn.execute("UPDATE rows SET n = n + 1 WHERE id = ?", [id as i64]);
    // Writer 0 also keeps a short lease with a tracker: its renewals must
    // keep their deadlines under the load.
    let tracker = (id == 0).then(|| {
        engine
            .tracker(&Key::new("bench", "renewing").expect("key"), "writer-0")
            .guarantee(Duration::from_millis(50))
            .safety_margin(Duration::from_millis(10))
            .build()
            .expect("tracker")
    });
    if let Some(t) = &tracker {
        assert!(t.wait_leader().wait());
    }
    let lost = tracker.as_ref().map(|t| t.wait_minion());
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut latencies: Vec<u32> = Vec::with_capacity(100_000);
    let mut offered = 0u64;
    let mut lateness_max = Duration::ZERO;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(rate) = paced {
            let due = start + Duration::from_nanos(offered * 1_000_000_000 / rate);
            if due >= end {
                break;
            }
            if due > now {
                std::thread::sleep(due - now);
            }
            offered += 1;
            let t0 = Instant::now();
            engine.commit(&txn).expect("commit");
            let done = Instant::now();
            latencies.push((done - t0).as_micros() as u32);
            lateness_max = lateness_max.max(done.saturating_duration_since(due));
        } else {
            let t0 = Instant::now();
            engine.commit(&txn).expect("commit");
            latencies.push(t0.elapsed().as_micros() as u32);
        }
    }
    let missed = lost
        .as_ref()
        .map_or(0, |l| u8::from(l.try_wait() == Some(true)));
    println!(
        "{}",
        serde_json::json!({
            "id": id,
            "count": latencies.len(),
            "offered": offered,
            "lateness_max_us": lateness_max.as_micros() as u64,
            "renewal_lost": missed,
            "latencies": latencies,
        })
    );
}

pub struct Outcome {
    pub throughput: f64,
    pub p50: u32,
    pub p99: u32,
    pub p999: u32,
    pub max: u32,
    pub min_share: f64,
    pub served: f64,
    pub lateness_max_ms: f64,
    pub renewal_lost: u64,
    pub wal_max_kib: u64,
    /// Commits per process.
    pub counts: Vec<u64>,
}

pub fn run_case(dir: &Path, pol: &str, rate: Option<u64>) -> Outcome {
    let db = dir.join(format!("contention-{pol}-{}.db", rate.unwrap_or(0)));
    let engine = Engine::open(&db).expect("engine");
    {
        let conn = engine.connection().expect("conn");
        conn.execute_batch("CREATE TABLE rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            .expect("table");
        for i in 0..PROCESSES {
            conn.execute("INSERT INTO rows VALUES (?, 0)", [i as i64])
                .expect("row");
        }
    }
    drop(engine);
    // Ten seconds: the WAL must stay bounded through that long a run.
    let secs = if short() { 1.0 } else { 10.0 };
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            let mut cmd = Command::new(std::env::current_exe().expect("exe"));
            cmd.env("LEASEHOLD_BENCH_ROLE", "writer")
                .env("LEASEHOLD_BENCH_DB", &db)
                .env("LEASEHOLD_BENCH_ID", i.to_string())
                .env("LEASEHOLD_BENCH_POLICY", pol)
                .env("LEASEHOLD_BENCH_SECS", secs.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            if let Some(r) = rate {
                cmd.env("LEASEHOLD_BENCH_RATE", r.to_string());
            }
            let mut child = cmd.spawn().expect("spawn");
            let out = BufReader::new(child.stdout.take().expect("stdout"));
            (child, out)
        })
        .collect();
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
    }
    for (child, _) in &mut children {
        writeln!(child.stdin.as_mut().expect("stdin"), "go").expect("go");
    }
    // Sample the WAL's size while they run.
    let wal = db.with_extension("db-wal");
    let started = Instant::now();
    let mut wal_max = 0;
    while started.elapsed() < Duration::from_secs_f64(secs) {
        wal_max = wal_max.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut counts = Vec::new();
    let (mut offered, mut lateness, mut lost) = (0u64, 0u64, 0u64);
    for (mut child, mut out) in children {
        let mut line = String::new();
        out.read_line(&mut line).expect("result");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        counts.push(v["count"].as_u64().expect("count"));
        offered += v["offered"].as_u64().unwrap_or(0);
        lateness = lateness.max(v["lateness_max_us"].as_u64().unwrap_or(0));
        lost += v["renewal_lost"].as_u64().unwrap_or(0);
        all.extend(
            v["latencies"]
                .as_array()
                .expect("latencies")
                .iter()
                .map(|x| x.as_u64().unwrap_or(0) as u32),
        );
        child.wait().expect("wait");
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
    let total: u64 = counts.iter().sum();
    let max = *counts.iter().max().unwrap_or(&1) as f64;
    let min = *counts.iter().min().unwrap_or(&0) as f64;
    Outcome {
        throughput: total as f64 / secs,
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        max: *all.last().unwrap_or(&0),
        min_share: min / max,
        served: if offered > 0 {
            total as f64 / offered as f64
        } else {
            1.0
        },
        lateness_max_ms: lateness as f64 / 1000.0,
        renewal_lost: lost,
        wal_max_kib: wal_max / 1024,
        counts,
    }
}

pub fn print(name: &str, o: &Outcome) {
    println!(
        "{name:<22} {:>9.0} tx/s  wait p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  \
         min share {:.2}  served {:.3} (latest {:.1} ms)  renewal lost {}  WAL max {} KiB\n{:<22} commits per process: {:?}",
        o.throughput,
        f64::from(o.p50) / 1e3,
        f64::from(o.p99) / 1e3,
        f64::from(o.p999) / 1e3,
        f64::from(o.max) / 1e3,
        o.min_share,
        o.served,
        o.lateness_max_ms,
        o.renewal_lost,
        o.wal_max_kib,
        "",
        o.counts
    );
}

//! The reliability suite's short version: the recorded-history checker under
//! each nemesis, on real processes and a real file; the checker's teeth;
//! crash consistency under 200 SIGKILLs; and the workload's own promises (its
//! builder's defaults and refusals, and a run shaped by it: the leader of a
//! key of the test's own paused for three leases, as the report shows).
//!
//! Workers are this test binary re-run into the `worker` test (see
//! `leasehold::testing::serve_worker`).

mod support;

use std::process::Command;
use std::time::Duration;

use leasehold::testing::{
    self, CheckOptions, Fault, Nemesis, RunReport, Span, Strike, WorkerEnd, Workload,
};
use leasehold::{Engine, Error, Key, MAX_DURATION, SCHEMA_VERSION};

/// The entry point of worker processes; a no-op in the parent.
#[test]
fn worker() {
    testing::serve_worker();
}

fn worker_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// The settings every nemesis test shares (spelled out, so that a change
/// of the builder's defaults does not change what these tests mean).
fn workload(nemeses: impl IntoIterator<Item = Nemesis>, guard: bool, seconds: u64) -> Workload {
    Workload::builder()
        .workers(3)
        .duration(Duration::from_secs(seconds))
        .lease(Duration::from_millis(250))
        .guard(guard)
        .nemeses(nemeses)
        .seed(0x1ea5e)
        .build()
        .expect("workload")
}

fn run(
    nemeses: impl IntoIterator<Item = Nemesis>,
    guard: bool,
    seconds: u64,
) -> (tempfile::TempDir, RunReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = workload(nemeses, guard, seconds)
        .run(dir.path(), &worker_command)
        .expect("workload");
    (dir, report)
}

#[track_caller]
fn passes(dir: &tempfile::TempDir, report: &RunReport, fault: &str) {
    let c = &report.check;
    assert!(
        c.passed(),
        "violations under {fault} (history in {}): {:#?}",
        dir.path().display(),
        c.violations
    );
    assert!(c.tenures >= 1, "someone led: {c:?}");
    assert!(c.acknowledged_writes > 0, "writes happened: {c:?}");
    assert!(
        report.faults.get(fault).copied().unwrap_or(0) > 0,
        "{fault} struck: {:?}",
        report.faults
    );
}

#[test]
fn kills_of_the_leader() {
    let (dir, report) = run(vec![Nemesis::Kill], true, 4);
    passes(&dir, &report, "Kill");
    assert!(
        report.faults.get("KillInTxn").copied().unwrap_or(0) > 0,
        "some kills landed inside a write transaction: {:?}",
        report.faults
    );
    assert!(report.check.tenures >= 2, "kills handed leadership over");
}

#[test]
fn pauses_past_the_lease() {
    let (dir, report) = run(vec![Nemesis::Pause], true, 4);
    passes(&dir, &report, "Pause");
    // The paused leaders' writes after waking were refused by their guards.
    let refused = testing::read_histories(dir.path())
        .expect("histories")
        .into_iter()
        .filter(
            |e| matches!(e, testing::Entry::Fail { error, .. } if error.contains("guard failed")),
        )
        .count();
    assert!(refused > 0, "a paused leader tried to write after waking");
}

#[test]
fn clock_steps_forward_and_back() {
    let (dir, report) = run(vec![Nemesis::ClockStep, Nemesis::Kill], true, 4);
    passes(&dir, &report, "ClockStep");
}

#[test]
fn a_long_held_write_lock() {
    let (dir, report) = run(vec![Nemesis::LockHolder], true, 4);
    passes(&dir, &report, "LockHolder");
}

#[test]
fn pool_exhaustion() {
    let (dir, report) = run(vec![Nemesis::PoolExhaustion, Nemesis::Kill], true, 4);
    passes(&dir, &report, "PoolExhaustion");
}

/// What the issue asked to write without a hand-made orchestrator: three
/// workers on a key of the test's own (with the commas and quotes a
/// comma-separated format would trip on), and every pause SIGSTOPs the
/// leader for three times its lease. The report names the process paused
/// (its pid among the workers started), the observer sees it stopped, a
/// rival leads meanwhile, and the checker finds nothing wrong.
#[test]
fn pausing_the_leader_for_three_leases_on_a_key_of_our_own() {
    let lease = Duration::from_millis(200);
    let key = Key::new(r#"billing, "eu""#, r#"invoices {"a":1,"b":2}; w1=leader"#).expect("key");
    let workload = Workload::builder()
        .workers(3)
        .key(key.clone())
        .lease(lease)
        .nemeses([Nemesis::Pause])
        .pause(Span::exactly(lease * 3))
        .duration(Duration::from_secs(3))
        .seed(0xbeef)
        .build()
        .expect("workload");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut observed: Vec<(Strike, Option<char>)> = Vec::new();
    let report = workload
        .run_observed(dir.path(), &worker_command, &mut |strike| {
            let state = strike.target.as_ref().and_then(|t| process_state(t.pid));
            observed.push((strike.clone(), state));
        })
        .expect("workload");

    let c = &report.check;
    assert!(
        c.passed(),
        "violations (history in {}): {:#?}",
        dir.path().display(),
        c.violations
    );
    assert!(c.acknowledged_writes > 0, "writes happened: {c:?}");

    // Three workers, none killed, each listed with its pid.
    assert_eq!(report.processes, 3);
    let holders: Vec<&str> = report.workers.iter().map(|w| w.holder.as_str()).collect();
    assert_eq!(holders, ["w1", "w2", "w3"], "{:#?}", report.workers);
    for w in &report.workers {
        assert_eq!(w.end, WorkerEnd::Stopped, "{w:?}");
        assert!(w.pid > 0 && w.started <= w.ended, "{w:?}");
    }
    let mut pids: Vec<u32> = report.workers.iter().map(|w| w.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "distinct pids: {:#?}", report.workers);

    // Every strike was a pause of the leader for exactly three leases, seen
    // by the observer as it happened, while the process was stopped.
    assert!(!report.strikes.is_empty(), "the nemesis struck");
    assert_eq!(
        report.faults.get("Pause").copied(),
        Some(report.strikes.len() as u64)
    );
    assert_eq!(
        observed.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        report.strikes.iter().collect::<Vec<_>>()
    );
    for (strike, state) in &observed {
        assert_eq!(strike.nemesis(), Nemesis::Pause);
        assert_eq!(strike.fault, Fault::Pause { length: lease * 3 });
        let target = strike.target.as_ref().expect("a pause has a target");
        assert!(target.leader, "the leader was paused: {strike:?}");
        let worker = report.worker(target.proc).expect("a worker of the run");
        assert_eq!(
            (worker.pid, &worker.holder),
            (target.pid, &target.holder),
            "{strike:?}"
        );
        assert!(worker.started <= strike.at && strike.at <= worker.ended);
        if cfg!(target_os = "linux") {
            assert_eq!(*state, Some('T'), "stopped while observed: {strike:?}");
        }
    }

    // The workers used our key, not the default one, and a rival's tenure
    // began while a paused leader slept.
    let conn = leasehold::rusqlite::Connection::open(dir.path().join("db.sqlite")).expect("open");
    let default_rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM leasehold_leases WHERE namespace = 'checker'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(default_rows, 0, "nobody claimed the default key");
    let mut claims = conn
        .prepare(
            "SELECT holder, at_ms FROM leasehold_events
             WHERE namespace = ?1 AND name = ?2 AND kind = 'claimed'",
        )
        .expect("prepare");
    let claims: Vec<(String, i64)> = claims
        .query_map([key.namespace(), key.name()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(c.tenures >= 2 && claims.len() as u64 == c.tenures, "{c:?}");
    let pause_ms = (lease * 3).as_millis() as i64;
    assert!(
        report.strikes.iter().any(|s| {
            let paused = &s.target.as_ref().expect("target").holder;
            claims.iter().any(|(holder, at)| {
                holder != paused && (s.wall_ms..s.wall_ms + pause_ms).contains(at)
            })
        }),
        "a rival took over during a pause: {:?} {claims:?}",
        report.strikes
    );
}

/// A process's state letter from `/proc` (`T`: stopped), where there is one.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (command) S …": the command may hold spaces and parentheses.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The builder's defaults are the ones documented (the ones these tests
/// were written against), lease-relative ones follow the lease whatever
/// the order of the calls, and nonsense is refused before anything starts.
#[test]
fn the_builder_keeps_its_documented_defaults_and_refuses_nonsense() {
    let ms = Duration::from_millis;
    let w = Workload::builder().build().expect("defaults");
    assert_eq!(
        (
            w.workers(),
            w.duration(),
            w.lease(),
            w.guard(),
            w.seed(),
            w.verbose()
        ),
        (3, Duration::from_secs(10), ms(250), true, 0x1ea5e, false)
    );
    assert_eq!(w.key(), &testing::workload_key());
    assert!(w.nemeses().is_empty());
    assert_eq!(w.interval(), Span::between(ms(100), ms(400)));
    assert_eq!(w.pause(), Span::between(ms(500), ms(700)));
    assert_eq!(w.lock_hold(), Span::between(ms(125), ms(375)));
    assert_eq!(w.clock_step(), ms(500));
    assert_eq!(w.pool_interval(), Span::between(ms(100), ms(400)));
    assert_eq!(w.pool_hold(), Span::between(ms(50), ms(250)));

    let w = Workload::builder()
        .lock_hold(Span::exactly(ms(5)))
        .lease(ms(1000))
        .nemesis(Nemesis::Kill)
        .nemesis(Nemesis::Kill)
        .build()
        .expect("workload");
    assert_eq!(w.pause(), Span::between(ms(2000), ms(2200)));
    assert_eq!(w.clock_step(), ms(2000));
    assert_eq!(w.lock_hold(), Span::exactly(ms(5)), "set explicitly, kept");
    assert_eq!(w.nemeses(), [Nemesis::Kill, Nemesis::Kill]);

    let config = w.worker_config(std::path::Path::new("/some/dir"), 7);
    assert_eq!(
        (
            config.proc(),
            config.holder().as_str(),
            config.key(),
            config.lease()
        ),
        (7, "w7", &testing::workload_key(), ms(1000))
    );
    assert_eq!(config.dir(), std::path::Path::new("/some/dir"));

    let refused = [
        ("workers", Workload::builder().workers(0)),
        ("lease", Workload::builder().lease(Duration::ZERO)),
        ("lease", Workload::builder().lease(MAX_DURATION * 2)),
        (
            "clock step",
            Workload::builder().clock_step(MAX_DURATION * 2),
        ),
        (
            "pause",
            Workload::builder().pause(Span::between(ms(2), ms(1))),
        ),
        (
            "interval",
            Workload::builder().interval(Span::between(ms(2), ms(1))),
        ),
        (
            "pool hold",
            Workload::builder().pool_hold(Span::between(ms(2), ms(1))),
        ),
    ];
    for (what, builder) in refused {
        match builder.build() {
            Err(Error::InvalidArgument { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// A run never reuses a directory: its histories would mix with the old
/// ones. Refused before any worker starts.
#[test]
fn a_run_refuses_a_directory_that_holds_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db.sqlite"), "").expect("write");
    let started = std::cell::Cell::new(0);
    let e = workload([Nemesis::Kill], true, 1)
        .run(dir.path(), &|| {
            started.set(started.get() + 1);
            worker_command()
        })
        .expect_err("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(started.get(), 0);
}

/// The same workload without guards must be caught under the pause nemesis;
/// if it is not, the checker is wrong.
#[test]
fn the_checker_has_teeth() {
    let (dir, report) = run(vec![Nemesis::Pause], false, 4);
    let c = &report.check;
    assert!(
        !c.passed(),
        "unguarded writes after pauses went unnoticed: {c:?}"
    );
    assert!(
        c.violations
            .iter()
            .any(|v| v.contains("while the lease was held by")),
        "{:#?}",
        c.violations
    );
    let saved = c.saved_history.as_ref().expect("history saved");
    assert!(saved.exists());
    assert!(dir.path().join("failed-history.jsonl").exists());
}

/// At least 200 SIGKILLs at random moments of claims and guarded writes;
/// after each, the file is intact and the history checks out.
#[test]
fn crash_consistency_under_200_kills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db.sqlite");
    {
        let engine = Engine::builder(&db)
            .event_retention(10_000_000)
            .build()
            .expect("engine");
        testing::create_writes_table(&engine.connection().expect("conn")).expect("table");
    }
    let mut rng = testing::Rng::new(7);
    let workers = Workload::builder().lease(Duration::from_millis(30));
    let key = workers.clone().build().expect("workload").key().clone();
    for round in 0..200u32 {
        let workload = workers
            .clone()
            .seed(u64::from(round))
            .build()
            .expect("workload");
        let mut cmd = worker_command();
        workload
            .worker_config(dir.path(), round + 1)
            .set_env(&mut cmd)
            .expect("worker environment");
        cmd.stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        std::thread::sleep(Duration::from_micros(10_000 + rng.below(50_000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let conn = leasehold::rusqlite::Connection::open(&db).expect("open");
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok", "after kill {round}");
        assert_eq!(
            leasehold::schema_version(&conn).expect("version"),
            SCHEMA_VERSION
        );
        drop(conn);
        let report = testing::check(&db, dir.path(), &key, CheckOptions { clock_steps: false })
            .expect("check");
        assert!(
            report.passed(),
            "after kill {round}: {:#?}",
            report.violations
        );
    }
    let report =
        testing::check(&db, dir.path(), &key, CheckOptions { clock_steps: false }).expect("check");
    eprintln!("{report:?}");
    assert!(report.tenures > 50, "kills landed among claims: {report:?}");
    assert!(report.rows > 50, "and among writes: {report:?}");
}

/// A write whose transaction began after its writer's lease ran out must be
/// caught even when nobody else claimed meanwhile (the row then still names
/// the writer).
#[test]
fn the_checker_catches_a_write_after_the_lease_ran_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db.sqlite");
    // The engine's clock runs 10 s behind the wall clock: the lease it
    // grants for 1 s has run out on the wall clock already.
    let clock = leasehold::ManualClock::new(
        leasehold::chrono::Utc::now() - leasehold::chrono::Duration::seconds(10),
    );
    let engine = Engine::builder(&db).clock(clock).build().expect("engine");
    testing::create_writes_table(&engine.connection().expect("conn")).expect("table");
    let key = leasehold::Key::new("checker", "lease").expect("key");
    let mut rec = testing::Recorder::create(dir.path(), 1).expect("recorder");
    let d = Duration::from_secs(1);
    let n = rec.invoke("claim", "w1", None, None, Some(d));
    let epoch = engine.claim(&key, "w1", d).expect("claim").epoch();
    rec.ok(n, Some(epoch));
    // Unguarded, as a buggy guard would let it through.
    let n = rec.invoke("write", "w1", Some(epoch), Some(1), None);
    testing::guarded_write(&engine, &key, None, 1, "w1", epoch, 1).expect("write");
    rec.ok(n, None);
    let report = testing::check(
        &db,
        dir.path(),
        &key,
        testing::CheckOptions { clock_steps: false },
    )
    .expect("check");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("after the lease ran out")),
        "{:#?}",
        report.violations
    );
}

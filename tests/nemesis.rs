//! The reliability suite's short version: the recorded-history checker under
//! each nemesis, on real processes and a real file; the checker's teeth; and
//! crash consistency under 200 SIGKILLs.
//!
//! Workers are this test binary re-run into the `worker` test (see
//! `leasehold::testing::serve_worker`).

mod support;

use std::process::Command;
use std::time::Duration;

use leasehold::testing::{self, CheckOptions, Nemesis, RunReport, Workload};
use leasehold::{Engine, SCHEMA_VERSION};

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

fn run(nemeses: Vec<Nemesis>, guard: bool, seconds: u64) -> (tempfile::TempDir, RunReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = Workload {
        workers: 3,
        duration: Duration::from_secs(seconds),
        lease: Duration::from_millis(250),
        guard,
        nemeses,
        seed: 0x1ea5e,
        verbose: false,
    }
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
    for round in 0..200u32 {
        let mut cmd = worker_command();
        cmd.env(
            "LEASEHOLD_CHECKER_WORKER",
            format!("{},{},30,1,0,{round}", dir.path().display(), round + 1),
        )
        .stdout(std::process::Stdio::null());
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
        let report = testing::check(
            &db,
            dir.path(),
            &testing::workload_key(),
            CheckOptions { clock_steps: false },
        )
        .expect("check");
        assert!(
            report.passed(),
            "after kill {round}: {:#?}",
            report.violations
        );
    }
    let report = testing::check(
        &db,
        dir.path(),
        &testing::workload_key(),
        CheckOptions { clock_steps: false },
    )
    .expect("check");
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

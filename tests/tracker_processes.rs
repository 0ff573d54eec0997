//! Trackers in separate processes on one database file, with the leader
//! killed (SIGKILL), paused (SIGSTOP/SIGCONT) or stepping down.
//!
//! Workers are this test binary re-run with `LEASEHOLD_ROLE=tracker`. A
//! worker runs one tracker, reports `@leader <epoch>` and `@minion` as its
//! tickets resolve, and obeys lines on stdin: `write` (a guarded insert with
//! the token of its latest tenure, reported as `@wrote` or `@refused …`) and
//! `stop`. The parent meets workers only through these lines.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{Engine, Key, LeaseToken, Txn};
use support::{TempDb, role};

type R = Result<(), Box<dyn std::error::Error>>;

fn key() -> Key {
    Key::new("procs", "leader").expect("key")
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@{line}").expect("write");
    out.flush().expect("flush");
}

/// The worker process.
#[test]
fn worker() {
    if role().as_deref() != Some("tracker") {
        return;
    }
    let db = std::env::var("LEASEHOLD_TEST_DB").expect("db");
    let me = std::env::var("LEASEHOLD_HOLDER").expect("holder");
    let guarantee_ms: u64 = std::env::var("LEASEHOLD_GUARANTEE_MS")
        .expect("ms")
        .parse()
        .expect("ms");
    let file_events = std::env::var("LEASEHOLD_FILE_EVENTS").as_deref() != Ok("0");
    let engine = Engine::builder(&db)
        .file_events(file_events)
        .build()
        .expect("open");
    let tracker = Arc::new(
        engine
            .tracker(&key(), &me)
            .guarantee(Duration::from_millis(guarantee_ms))
            .build()
            .expect("tracker"),
    );
    let latest: Arc<Mutex<Option<LeaseToken>>> = Arc::default();
    say("started");
    {
        let tracker = Arc::clone(&tracker);
        let latest = Arc::clone(&latest);
        std::thread::spawn(move || {
            // The first claim's outcome, then every change.
            let mut leading = tracker.claim_leader().wait();
            if !leading {
                say("minion");
            }
            loop {
                if leading {
                    if let Some(token) = tracker.token() {
                        let epoch = token.epoch().unwrap_or(0);
                        *latest.lock().expect("lock") = Some(token);
                        say(&format!("leader {epoch}"));
                    }
                    if !tracker.wait_minion().wait() {
                        return;
                    }
                    say("minion");
                }
                leading = tracker.wait_leader().wait();
                if !leading {
                    return;
                }
            }
        });
    }
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").trim() {
            "write" => {
                let token = latest.lock().expect("lock").clone().expect("never led");
                let mut txn = Txn::new();
                token.add_to(&mut txn);
                txn.execute(
                    "INSERT INTO writes (holder, epoch) VALUES (?, ?)",
                    (me.as_str(), token.epoch().unwrap_or(0)),
                );
                match engine.commit(&txn) {
                    Ok(_) => say("wrote"),
                    Err(e) => say(&format!("refused {e}")),
                }
            }
            "stop" => {
                tracker.stop();
                say("stopped");
                return;
            }
            other => panic!("unknown command {other}"),
        }
    }
}

struct Worker {
    child: Child,
    reports: mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(db: &TempDb, holder: &str, guarantee_ms: u64) -> Worker {
        Worker::spawn_with(db, holder, guarantee_ms, true)
    }

    fn spawn_with(db: &TempDb, holder: &str, guarantee_ms: u64, file_events: bool) -> Worker {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env("LEASEHOLD_ROLE", "tracker")
            .env("LEASEHOLD_TEST_DB", &db.path)
            .env("LEASEHOLD_HOLDER", holder)
            .env("LEASEHOLD_GUARANTEE_MS", guarantee_ms.to_string())
            .env("LEASEHOLD_FILE_EVENTS", if file_events { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, reports) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find('@')
                    && tx.send(line[at + 1..].trim().to_owned()).is_err()
                {
                    return;
                }
            }
        });
        let mut w = Worker { child, reports };
        assert_eq!(w.next(), "started");
        w
    }

    /// The next report; fails the test if none comes within a minute (a
    /// hang guard, not a speed assertion).
    fn next(&mut self) -> String {
        let report = self
            .reports
            .recv_timeout(Duration::from_secs(60))
            .expect("worker report");
        eprintln!("worker {}: {report}", self.child.id());
        report
    }

    fn expect(&mut self, report: &str) {
        assert_eq!(self.next(), report);
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup() -> (TempDb, Engine) {
    let db = TempDb::new();
    let engine = Engine::open(&db.path).expect("engine");
    engine
        .connection()
        .expect("conn")
        .execute_batch("CREATE TABLE writes (holder TEXT, epoch INTEGER)")
        .expect("table");
    (db, engine)
}

fn lease(engine: &Engine) -> leasehold::Lease {
    engine.lease(&key()).expect("read").expect("lease")
}

#[test]
fn a_successor_leads_after_the_killed_leaders_lease_lapses() -> R {
    let (db, engine) = setup();
    let mut a = Worker::spawn(&db, "a", 300);
    a.expect("leader 1");
    let mut b = Worker::spawn(&db, "b", 300);
    b.expect("minion");
    a.child.kill()?; // SIGKILL
    a.child.wait()?;
    let last_expiry = lease(&engine).expires_at().expect("held");
    b.expect("leader 2");
    let now = lease(&engine);
    assert_eq!((now.holder(), now.epoch()), (Some("b"), 2));
    assert!(
        now.started_at().expect("held") >= last_expiry,
        "b began only after a's last renewal expired"
    );
    Ok(())
}

#[test]
fn a_successor_takes_over_as_soon_as_the_leader_steps_down() -> R {
    steps_down(true)
}

#[test]
fn a_polling_successor_takes_over_as_soon_as_the_leader_steps_down() -> R {
    steps_down(false)
}

fn steps_down(file_events: bool) -> R {
    let (db, engine) = setup();
    let mut a = Worker::spawn(&db, "a", 60_000);
    a.expect("leader 1");
    let mut b = Worker::spawn_with(&db, "b", 60_000, file_events);
    b.expect("minion");
    let expiry = lease(&engine).expires_at().expect("held");
    a.send("stop"); // its pending tickets resolve false: no "minion" report
    a.expect("stopped");
    b.expect("leader 2");
    let now = lease(&engine);
    assert_eq!(now.holder(), Some("b"));
    assert!(
        now.started_at().expect("held") < expiry,
        "woken by the release, not by the expiry two minutes later"
    );
    Ok(())
}

#[test]
fn a_paused_leader_resumes_as_a_minion_whose_writes_are_refused() -> R {
    let (db, engine) = setup();
    let mut a = Worker::spawn(&db, "a", 300);
    a.expect("leader 1");
    a.send("write");
    a.expect("wrote");
    let mut b = Worker::spawn(&db, "b", 300);
    b.expect("minion");
    a.signal("-STOP");
    b.expect("leader 2");
    b.send("write");
    b.expect("wrote");
    a.signal("-CONT");
    a.expect("minion");
    a.send("write");
    let refused = a.next();
    assert!(refused.starts_with("refused"), "{refused}");
    assert!(refused.contains("expected a at epoch 1"), "{refused}");
    let conn = engine.connection()?;
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT holder, epoch FROM writes ORDER BY rowid")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(rows, [("a".to_owned(), 1), ("b".to_owned(), 2)]);
    Ok(())
}

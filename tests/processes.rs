//! Several real processes on one real database file.
//!
//! Workers are this test binary re-run with `LEASEHOLD_ROLE` set (see
//! `support::spawn_worker`). Parent and workers meet explicitly: a worker
//! prints `@ready` and blocks reading its stdin until the parent writes a
//! line, and reports results as `@…` lines on stdout.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Stdio};

use leasehold::rusqlite::TransactionBehavior;
use leasehold::{Engine, Error, SCHEMA_VERSION};
use support::{TempDb, key, role, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// The entry point of every worker process; a no-op in the parent.
#[test]
fn worker() {
    let Some(role) = role() else { return };
    let db = std::env::var("LEASEHOLD_TEST_DB").expect("LEASEHOLD_TEST_DB");
    let say = |line: &str| {
        println!("@{line}");
        std::io::stdout().flush().expect("flush");
    };
    let mut stdin = std::io::stdin().lock();
    let mut wait_for_parent = || {
        let mut line = String::new();
        stdin.read_line(&mut line).expect("read stdin");
        line
    };
    match role.as_str() {
        "open" => {
            say("ready");
            wait_for_parent();
            let result = Engine::open(&db).map(drop);
            say(&format!("{result:?}"));
        }
        "claim" => {
            let me = std::env::var("LEASEHOLD_HOLDER").expect("holder");
            let engine = Engine::open(&db).expect("open");
            say("ready");
            wait_for_parent();
            match engine.claim(&key("contested"), &me, secs(60)) {
                Ok(t) => say(&format!("won {}", t.epoch())),
                Err(Error::ClaimDenied { current_holder, .. }) => {
                    say(&format!("denied {current_holder}"))
                }
                Err(e) => say(&format!("error {e}")),
            }
        }
        "fenced-writer" => {
            let engine = Engine::open(&db).expect("open");
            let tenure = engine
                .claim(&key("writer"), "worker", secs(60))
                .expect("claim");
            say(&format!("claimed {}", tenure.epoch()));
            wait_for_parent(); // the parent takes the lease away meanwhile
            let mut conn = engine.connection().expect("conn");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("begin");
            match tenure.token().check_in(&tx) {
                Ok(()) => {
                    tx.execute("INSERT INTO writes VALUES ('worker')", [])
                        .expect("insert");
                    tx.commit().expect("commit");
                    say("wrote");
                }
                Err(e) => say(&format!("refused {e}")),
            }
        }
        "holder" => {
            let engine = Engine::open(&db).expect("open");
            engine
                .claim(&key("held"), "worker", secs(3600))
                .expect("claim");
            say("claimed");
            wait_for_parent();
            engine.release(&key("held"), "worker").expect("release");
            say("released");
        }
        other => panic!("unknown role {other}"),
    }
}

struct Worker {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(role: &str, db: &TempDb, env: &[(&str, &str)]) -> Worker {
        let db_path = db.path.to_string_lossy().into_owned();
        let mut all = vec![("LEASEHOLD_TEST_DB", db_path.as_str())];
        all.extend_from_slice(env);
        let mut cmd_env = Vec::new();
        for (k, v) in &all {
            cmd_env.push((*k, *v));
        }
        let exe = std::env::current_exe().expect("exe");
        let mut child = std::process::Command::new(exe)
            .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env("LEASEHOLD_ROLE", role)
            .envs(cmd_env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Worker { child, out }
    }

    /// The next `@` line the worker prints.
    fn next(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).expect("read worker");
            assert!(n > 0, "worker exited before reporting");
            // The harness may print "test worker ... " before the report.
            if let Some(at) = line.find('@') {
                return line[at + 1..].trim_end().to_owned();
            }
        }
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write");
        stdin.flush().expect("flush");
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "worker failed: {status}");
    }
}

/// Starts `n` workers, waits for all to be ready, then releases them at once.
fn start_together(
    n: usize,
    role: &str,
    db: &TempDb,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Worker> {
    let mut workers: Vec<Worker> = (0..n)
        .map(|i| {
            let env = env(i);
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Worker::spawn(role, db, &env)
        })
        .collect();
    for w in &mut workers {
        assert_eq!(w.next(), "ready");
    }
    for w in &mut workers {
        w.go();
    }
    workers
}

#[test]
fn processes_opening_a_fresh_file_at_once_all_succeed_and_migrate_once() -> R {
    let db = TempDb::new();
    let workers = start_together(8, "open", &db, |_| Vec::new());
    for mut w in workers {
        assert_eq!(w.next(), "Ok(())");
        w.finish();
    }
    let conn = leasehold::rusqlite::Connection::open(&db.path)?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM leasehold_schema", [], |r| r.get(0))?;
    assert_eq!(rows, i64::from(SCHEMA_VERSION));
    assert_eq!(leasehold::schema_version(&conn)?, SCHEMA_VERSION);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    assert_eq!(mode, "wal");
    Ok(())
}

#[test]
fn processes_claiming_one_key_at_once_elect_exactly_one() -> R {
    let db = TempDb::new();
    Engine::open(&db.path)?;
    let workers = start_together(8, "claim", &db, |i| {
        vec![("LEASEHOLD_HOLDER".into(), format!("p{i}"))]
    });
    let mut winners = Vec::new();
    let mut denials = Vec::new();
    for (i, mut w) in workers.into_iter().enumerate() {
        let report = w.next();
        if report == "won 1" {
            winners.push(format!("p{i}"));
        } else if let Some(holder) = report.strip_prefix("denied ") {
            denials.push(holder.to_owned());
        } else {
            panic!("unexpected report from p{i}: {report}");
        }
        w.finish();
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    assert!(
        denials.iter().all(|d| *d == winners[0]),
        "denials name the winner: {denials:?}"
    );
    Ok(())
}

#[test]
fn a_process_whose_tenure_ended_cannot_write_through_its_token() -> R {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    engine
        .connection()?
        .execute_batch("CREATE TABLE writes (who TEXT)")?;
    let mut w = Worker::spawn("fenced-writer", &db, &[]);
    assert_eq!(w.next(), "claimed 1");
    // While the worker sits between its claim and its write, the lease moves.
    engine.revoke(&key("writer"))?.expect("revoked");
    engine.claim(&key("writer"), "parent", secs(60))?;
    w.go();
    let report = w.next();
    assert!(
        report.starts_with("refused op") || report.starts_with("refused guard failed"),
        "{report}"
    );
    assert!(
        report.contains("found it held by parent at epoch 2"),
        "{report}"
    );
    w.finish();
    let writes: i64 = engine
        .connection()?
        .query_row("SELECT count(*) FROM writes", [], |r| r.get(0))?;
    assert_eq!(writes, 0);
    Ok(())
}

#[test]
fn a_waiter_wakes_when_another_process_releases() -> R {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    let mut w = Worker::spawn("holder", &db, &[]);
    assert_eq!(w.next(), "claimed");
    let waiter = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.block_until_released(&key("held")))
    };
    let lease = engine.lease(&key("held"))?.expect("lease");
    assert!(lease.is_held());
    w.go();
    assert_eq!(w.next(), "released");
    waiter.join().expect("waiter")?;
    assert!(!engine.lease(&key("held"))?.expect("lease").is_held());
    w.finish();
    Ok(())
}

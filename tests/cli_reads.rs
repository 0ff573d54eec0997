//! The `leasehold` commands that only read: they never change the file,
//! never wait for a writer, and say what they find (hardening issues 11,
//! 12); and the errors that name what is wrong with a database file.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use leasehold::rusqlite::{Connection, TransactionBehavior};
use serde_json::Value;
use support::TempDb;

type R = Result<(), Box<dyn std::error::Error>>;

fn on(db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.env_remove("LEASEHOLD_DB").arg("--db").arg(db);
    cmd
}

fn lh(db: &Path, args: &[&str]) -> Output {
    on(db).args(args).output().expect("run leasehold")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn exits(o: &Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {} stderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

/// Every file of a directory, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn reading_an_applications_database_changes_nothing_and_says_why() -> R {
    let db = TempDb::new();
    Connection::open(&db.path)?.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);
         INSERT INTO orders (item) VALUES ('tea');",
    )?;
    let before = snapshot(db.dir.path());
    // Nothing to list: nothing printed, success.
    let o = lh(&db.path, &["list"]);
    exits(&o, 0);
    assert_eq!(text(&o.stdout), "");
    let o = lh(&db.path, &["--json", "list"]);
    exits(&o, 0);
    assert_eq!(text(&o.stdout).trim(), "[]");
    for args in [
        &["show", "ops", "m"][..],
        &["history", "ops", "m"],
        &["watch", "--duration", "1s"],
        &["export"],
    ] {
        let err = exits(&lh(&db.path, args), 4);
        assert!(
            err.contains("no leasehold schema") && err.contains("leasehold migrate"),
            "{args:?}: {err}"
        );
        let o = lh(&db.path, &[&["--json"][..], args].concat());
        let e: Value = serde_json::from_str(text(&o.stderr).trim())?;
        assert_eq!(e["error"]["kind"], "no_schema", "{e}");
    }
    assert_eq!(
        snapshot(db.dir.path()),
        before,
        "byte-identical, no new files"
    );
    Ok(())
}

#[test]
fn reading_commands_do_not_wait_for_a_writer() -> R {
    let db = TempDb::new();
    exits(
        &lh(&db.path, &["claim", "ops", "m", "h1", "--for", "1h"]),
        0,
    );
    // An application holds the write lock for longer than the busy timeout.
    let mut conn = Connection::open(&db.path)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE app (x)")?;
    for args in [
        &["list"][..],
        &["show", "ops", "m"],
        &["history", "ops", "m"],
        &["export"],
    ] {
        // Before: exit 6, "database still locked after 5s".
        exits(&lh(&db.path, args), 0);
    }
    assert!(text(&lh(&db.path, &["list"]).stdout).contains("h1"));
    tx.commit()?;
    Ok(())
}

#[test]
fn watch_says_when_it_missed_transitions() -> R {
    let db = TempDb::new();
    exits(&lh(&db.path, &["migrate"]), 0);
    for json in [false, true] {
        let mut cmd = on(&db.path);
        if json {
            cmd.arg("--json");
        }
        let mut watcher = cmd
            .args(["watch", "--duration", "60s"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(watcher.stdout.take().expect("stdout"));
        let mut line = String::new();
        if !json {
            out.read_line(&mut line)?;
            assert!(line.starts_with("watching"), "{line}");
        } else {
            // JSON mode prints no banner: claims keep coming from another
            // thread until watch shows one, so it has begun watching.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ticker = {
                let (stop, path) = (stop.clone(), db.path.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        n += 1;
                        let name = format!("ready{n}");
                        exits(&lh(&path, &["claim", "ops", &name, "h", "--for", "1h"]), 0);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            };
            loop {
                line.clear();
                assert!(out.read_line(&mut line)? > 0, "watch ended early");
                if line.contains("ready") {
                    break;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
            ticker.join().expect("ticker");
        }
        // While watch is frozen, more transitions than the history keeps
        // (10,000 by default) happen: an import of 12,000 held leases.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(watcher.id() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )?;
        let mut import = on(&db.path)
            .args(["import", "--window", "1h"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        {
            let mut input = std::io::BufWriter::new(import.stdin.take().expect("stdin"));
            writeln!(
                input,
                r#"{{"leasehold_export":1,"schema":{},"taken_at":"2026-11-30T00:00:00.000Z"}}"#,
                leasehold::SCHEMA_VERSION
            )?;
            for i in 0..12_000 {
                writeln!(
                    input,
                    r#"{{"lease":{{"namespace":"bulk{json}","name":"k{i}","holder":"h","epoch":1,"expires_in_ms":1000}}}}"#
                )?;
            }
            writeln!(input, r#"{{"end":{{"leases":12000,"pins":0}}}}"#)?;
        }
        assert!(import.wait()?.success());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(watcher.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let gap = loop {
            line.clear();
            assert!(out.read_line(&mut line)? > 0, "watch ended without a gap");
            if line.contains("gap") {
                break line.clone();
            }
            assert!(Instant::now() < deadline, "no gap reported");
        };
        if json {
            let v: Value = serde_json::from_str(&gap)?;
            assert_eq!(v["kind"], "gap", "{v}");
            assert!(v["missed"].as_u64().is_some_and(|n| n > 0), "{v}");
        } else {
            assert!(gap.contains("events"), "{gap}");
        }
        let _ = watcher.kill();
        let _ = watcher.wait();
    }
    Ok(())
}

#[test]
fn database_files_that_cannot_serve_say_what_is_wrong() -> R {
    let db = TempDb::new();
    // A directory given as the database: invalid input, named.
    let err = exits(
        &lh(db.dir.path(), &["claim", "ops", "m", "h", "--for", "1s"]),
        5,
    );
    assert!(err.contains("is a directory"), "{err}");
    // An application's own table in leasehold's way: one line, file kept.
    Connection::open(&db.path)?.execute_batch("CREATE TABLE leasehold_leases (mine TEXT)")?;
    let before = snapshot(db.dir.path());
    let err = exits(&lh(&db.path, &["claim", "ops", "m", "h", "--for", "1s"]), 5);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("leasehold_leases") && err.len() < 300, "{err}");
    assert_eq!(snapshot(db.dir.path()), before);
    // An edited migration: its own kind, not "schema_too_new".
    let other = db.dir.path().join("other.db");
    exits(&lh(&other, &["migrate"]), 0);
    Connection::open(&other)?.execute(
        "UPDATE leasehold_schema SET checksum = 'edited' WHERE version = 1",
        [],
    )?;
    let o = lh(&other, &["--json", "claim", "ops", "m", "h", "--for", "1s"]);
    exits(&o, 8);
    let e: Value = serde_json::from_str(text(&o.stderr).trim())?;
    assert_eq!(e["error"]["kind"], "schema_mismatch", "{e}");
    Ok(())
}

/// Whether process `pid` still runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

#[test]
fn run_stops_its_command_when_the_database_file_is_deleted_or_replaced() -> R {
    for replace in [false, true] {
        let db = TempDb::new();
        let pid_file = db.dir.path().join("pid");
        let script = format!(
            "echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 300",
            pid_file.display()
        );
        let child = on(&db.path)
            .args([
                "run", "ops", "m", "host-1", "--for", "60s", "--grace", "1s", "--", "sh", "-c",
                &script,
            ])
            .stderr(Stdio::piped())
            .spawn()?;
        support::wait_for_file(&pid_file, Duration::from_secs(30));
        let command: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        if replace {
            // A fresh database moved over the path: its epoch 1 must not sit
            // beside the run's own epoch 1.
            let other = db.dir.path().join("other.db");
            exits(&lh(&other, &["migrate"]), 0);
            std::fs::rename(&other, &db.path)?;
        } else {
            std::fs::remove_file(&db.path)?;
        }
        let out = child.wait_with_output()?;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains("lost ops/m"), "{err}");
        assert!(!running(command), "the command outlived the lost lease");
    }
    Ok(())
}

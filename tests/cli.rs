//! The `leasehold` binary, run for real on temp databases: every command,
//! its output, its error paths and exit codes.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::TempDb;
use support::output::{fails, json, ok, stderr, stdout};

type R = Result<(), Box<dyn std::error::Error>>;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.env_remove("LEASEHOLD_DB");
    cmd
}

/// `leasehold --db DB`, to add arguments to.
fn on(db: &Path) -> Command {
    let mut cmd = bin();
    cmd.arg("--db").arg(db);
    cmd
}

/// Runs `leasehold --db DB args…`.
fn lh(db: &Path, args: &[&str]) -> Output {
    on(db).args(args).output().expect("run leasehold")
}

#[test]
fn migrate_applies_and_prints_the_schema() -> R {
    let db = TempDb::new();
    let version = leasehold::SCHEMA_VERSION;
    assert!(ok(&lh(&db.path, &["migrate"])).contains(&format!("schema version {version}")));
    assert_eq!(
        json(&lh(&db.path, &["--json", "migrate"]))["version"],
        version
    );
    let sql = ok(&bin().args(["migrate", "--print-sql"]).output()?);
    assert!(sql.contains("CREATE TABLE leasehold_leases"));
    assert!(sql.contains("INSERT INTO leasehold_schema"));
    let j: Value = serde_json::from_str(&ok(&bin()
        .args(["--json", "migrate", "--print-sql"])
        .output()?))?;
    assert_eq!(
        j["migrations"].as_array().map(Vec::len),
        Some(leasehold::migrations().len())
    );
    Ok(())
}

#[test]
fn the_database_comes_from_the_flag_or_the_environment() -> R {
    let db = TempDb::new();
    let err = fails(&bin().arg("list").output()?, 2);
    assert!(err.contains("LEASEHOLD_DB"), "{err}");
    ok(&bin()
        .env("LEASEHOLD_DB", &db.path)
        .args(["claim", "a", "b", "h", "--for", "10s"])
        .output()?);
    assert!(ok(&lh(&db.path, &["list"])).contains("a/b"));
    Ok(())
}

#[test]
fn claim_list_show_release_and_their_errors() -> R {
    let db = TempDb::new();
    let p = &db.path;
    assert!(
        ok(&lh(
            p,
            &["claim", "ops", "migrate", "host-1", "--for", "30s"]
        ))
        .contains("epoch 1")
    );
    let again = json(&lh(
        p,
        &[
            "--json", "claim", "ops", "migrate", "host-1", "--for", "30s",
        ],
    ));
    assert_eq!(
        (again["epoch"].as_u64(), again["extended"].as_bool()),
        (Some(1), Some(true))
    );
    let err = fails(
        &lh(p, &["claim", "ops", "migrate", "host-2", "--for", "30s"]),
        3,
    );
    assert_eq!(
        err.trim(),
        "leasehold: claim of ops/migrate by host-2 denied: it is held by host-1"
    );
    let err = fails(
        &lh(
            p,
            &[
                "--json", "claim", "ops", "migrate", "host-2", "--for", "30s",
            ],
        ),
        3,
    );
    let err: Value = serde_json::from_str(&err)?;
    assert_eq!(err["error"]["kind"], "claim_denied");
    assert_eq!(err["error"]["code"], 3);

    let list = ok(&lh(p, &["list"]));
    assert!(list.starts_with("KEY"), "{list}");
    assert!(list.contains("ops/migrate  host-1  1"), "{list}");
    let leases = json(&lh(p, &["--json", "list", "ops"]));
    assert_eq!(leases[0]["holder"], "host-1");
    assert!(leases[0]["left_ms"].as_i64().is_some_and(|ms| ms > 20_000));
    let shown = json(&lh(p, &["--json", "show", "ops", "migrate"]));
    assert_eq!(shown["epoch"], 1);
    assert!(ok(&lh(p, &["show", "ops", "migrate"])).contains("holder:   host-1"));
    fails(&lh(p, &["show", "ops", "nothing"]), 4);

    fails(&lh(p, &["release", "ops", "migrate", "host-2"]), 4);
    assert!(ok(&lh(p, &["release", "ops", "migrate", "host-1"])).contains("released"));
    assert!(ok(&lh(p, &["list"])).contains("no held leases"));
    assert!(ok(&lh(p, &["list", "--all"])).contains("vacant"));
    assert!(
        ok(&lh(
            p,
            &[
                "--quiet", "claim", "ops", "migrate", "host-2", "--for", "1m"
            ]
        ))
        .is_empty()
    );
    Ok(())
}

#[test]
fn revoke_pin_unpin_and_history() -> R {
    let db = TempDb::new();
    let p = &db.path;
    ok(&lh(p, &["claim", "ops", "k", "h1", "--for", "30s"]));
    assert!(
        ok(&lh(
            p,
            &[
                "pin",
                "ops",
                "k",
                "--entity",
                "machine-0",
                "--reason",
                "upgrade"
            ]
        ))
        .contains("pinned")
    );
    assert!(ok(&lh(p, &["list"])).contains("pinned by machine-0 (upgrade)"));
    fails(
        &lh(p, &["unpin", "ops", "k", "--entity", "someone-else"]),
        4,
    );
    ok(&lh(p, &["unpin", "ops", "k", "--entity", "machine-0"]));
    assert!(ok(&lh(p, &["revoke", "ops", "k"])).contains("revoked ops/k from h1 (epoch 1)"));
    assert!(ok(&lh(p, &["revoke", "ops", "k"])).contains("vacant"));
    ok(&lh(p, &["pin", "ops", "k", "--entity", "e", "--for", "1h"]));
    let history = ok(&lh(p, &["history", "ops", "k"]));
    let kinds: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        kinds,
        ["claimed", "pinned", "unpinned", "revoked", "pinned"]
    );
    let events = json(&lh(p, &["--json", "history", "ops", "k", "--limit", "2"]));
    assert_eq!(events.as_array().map(Vec::len), Some(2));
    assert_eq!(events[1]["entity"], "e");
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_error_and_its_exit_code() -> R {
    let db = TempDb::new();
    let p = &db.path;
    let err = fails(
        &lh(p, &["claim", "ops", "bell\u{7}", "h", "--for", "1s"]),
        5,
    );
    assert!(
        err.contains("invalid name") && err.contains("U+0007"),
        "{err}"
    );
    let huge = "n".repeat(10_000);
    let err = fails(&lh(p, &["claim", "ops", &huge, "h", "--for", "1s"]), 5);
    assert!(err.contains("10000 bytes long"), "{err}");
    assert!(err.len() < 300, "the message does not echo the whole name");
    fails(&lh(p, &["claim", "ops", "k", "h", "--for", "0s"]), 5);
    fails(&lh(p, &["claim", "ops", "k", "h", "--for", "400days"]), 5);
    // A duration that does not parse is bad input too, not a usage error.
    fails(&lh(p, &["claim", "ops", "k", "h", "--for", "soon"]), 5);
    fails(&lh(p, &["claim", "ops", "k"]), 2);
    fails(&lh(p, &["frobnicate"]), 2);
    // A name that is not UTF-8 is refused by the argument parser.
    let raw = on(p)
        .args(["claim", "ops"])
        .arg(OsString::from_vec(vec![b'a', 0xff, b'b']))
        .args(["h", "--for", "1s"])
        .output()?;
    let err = fails(&raw, 5);
    assert!(err.contains("NAME is not valid UTF-8"), "{err}");
    // Nothing was written by any of these.
    assert!(ok(&lh(p, &["list", "--all"])).contains("no leases"));
    let err = fails(&lh(p, &["claim", "a/b", "c", "h", "--for", "1s"]), 5);
    assert!(err.contains("must not contain '/'"), "{err}");

    let notes = db.dir.path().join("notes.txt");
    std::fs::write(&notes, "not a database at all\n".repeat(100))?;
    let err = fails(&lh(&notes, &["list"]), 5);
    assert!(err.contains("is not a SQLite database"), "{err}");

    let newer = leasehold::rusqlite::Connection::open(p)?;
    newer.execute(
        "INSERT INTO leasehold_schema VALUES (99, 'future', 'x', 0)",
        [],
    )?;
    let err = fails(&lh(p, &["list"]), 8);
    assert!(err.contains("version 99"), "{err}");
    Ok(())
}

#[test]
fn help_documents_the_exit_codes() -> R {
    let help = ok(&bin().arg("--help").output()?);
    for line in [
        "3  claim denied",
        "4  not held",
        "5  invalid input",
        "6  busy",
        "128 + N",
    ] {
        assert!(help.contains(line), "{line}: {help}");
    }
    Ok(())
}

// run

#[test]
fn run_hands_the_child_its_lease_and_exits_with_its_status() -> R {
    let db = TempDb::new();
    let o = lh(
        &db.path,
        &[
            "run",
            "ops",
            "migration",
            "host-1",
            "--",
            "sh",
            "-c",
            "echo $LEASEHOLD_NAMESPACE $LEASEHOLD_NAME $LEASEHOLD_HOLDER $LEASEHOLD_EPOCH $LEASEHOLD_DB; exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    // Its stdout is the command's alone.
    assert_eq!(
        stdout(&o),
        format!(
            "ops migration host-1 1 {}\n",
            std::fs::canonicalize(&db.path)?.display()
        )
    );
    assert!(
        stderr(&o).contains("holding ops/migration"),
        "{}",
        stderr(&o)
    );
    // The lease was released when the command ended.
    assert!(ok(&lh(&db.path, &["list"])).contains("no held leases"));
    Ok(())
}

#[test]
fn run_is_denied_or_waits_while_another_holds_the_lease() -> R {
    let db = TempDb::new();
    ok(&lh(
        &db.path,
        &["claim", "ops", "m", "other", "--for", "1h"],
    ));
    let err = fails(
        &lh(&db.path, &["run", "ops", "m", "host-1", "--", "true"]),
        3,
    );
    assert!(err.contains("held by other"), "{err}");

    // With --wait it starts once the lease is released.
    let mut waiting = on(&db.path)
        .args([
            "run",
            "ops",
            "m",
            "host-1",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo epoch $LEASEHOLD_EPOCH",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    // It cannot have run yet: the lease is held for an hour.
    assert!(waiting.try_wait()?.is_none());
    ok(&lh(&db.path, &["release", "ops", "m", "other"]));
    let out = waiting.wait_with_output()?;
    assert!(out.status.success());
    assert!(stdout(&out).contains("epoch 2"), "{}", stdout(&out));
    Ok(())
}

#[test]
fn run_stops_the_child_when_the_lease_is_revoked_elsewhere() -> R {
    let db = TempDb::new();
    let marker = db.dir.path().join("started");
    let script = format!("touch {}; exec sleep 60", marker.display());
    let child = on(&db.path)
        .args([
            "run", "ops", "m", "host-1", "--grace", "5s", "--", "sh", "-c", &script,
        ])
        .stderr(Stdio::piped())
        .spawn()?;
    support::wait_for_file(&marker, Duration::from_secs(30));
    ok(&lh(&db.path, &["revoke", "ops", "m"]));
    let out = child.wait_with_output()?;
    // Lost: 4, whatever the command's own status; the notice says how it
    // ended.
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("lost ops/m"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it was stopped by SIGTERM"),
        "{}",
        stderr(&out)
    );
    // It did not take the revoked lease back while stopping its command.
    let history = ok(&lh(&db.path, &["history", "ops", "m"]));
    assert_eq!(history.matches("claimed").count(), 1, "{history}");
    assert!(ok(&lh(&db.path, &["list"])).contains("no held leases"));
    Ok(())
}

#[test]
fn run_gives_the_lease_back_when_its_command_cannot_start() -> R {
    let db = TempDb::new();
    let o = lh(
        &db.path,
        &["run", "ops", "m", "host-1", "--", "/no/such/command"],
    );
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot run /no/such/command"),
        "{}",
        stderr(&o)
    );
    // With --json the message is JSON too.
    let o = lh(
        &db.path,
        &[
            "--json",
            "run",
            "ops",
            "m",
            "host-1",
            "--",
            "/no/such/command",
        ],
    );
    assert_eq!(o.status.code(), Some(127));
    let e: Value = serde_json::from_str(stderr(&o).trim())?;
    assert_eq!(e["error"]["code"], 127, "{e}");
    ok(&lh(
        &db.path,
        &["claim", "ops", "m", "host-2", "--for", "1s"],
    ));
    Ok(())
}

#[test]
fn run_refuses_to_share_a_tenure_or_leave_no_time_to_stop() -> R {
    let db = TempDb::new();
    ok(&lh(
        &db.path,
        &["claim", "ops", "m", "host-1", "--for", "1h"],
    ));
    let err = fails(
        &lh(&db.path, &["run", "ops", "m", "host-1", "--", "true"]),
        3,
    );
    assert!(err.contains("never shared"), "{err}");
    let err = fails(
        &lh(
            &db.path,
            &[
                "run", "ops", "x", "h", "--for", "10s", "--grace", "5s", "--", "true",
            ],
        ),
        5,
    );
    assert!(err.contains("--grace"), "{err}");
    Ok(())
}

#[test]
fn two_runs_as_one_holder_never_share_a_tenure() -> R {
    // A retried deploy step: two `run --wait` as the same holder, waiting
    // for another holder's release. A claim by the holder extends its
    // tenure, so without care both would run at once under one epoch.
    let db = TempDb::new();
    ok(&lh(
        &db.path,
        &["claim", "ops", "m", "other", "--for", "1h"],
    ));
    let log = db.dir.path().join("log");
    let script = format!(
        "echo start $LEASEHOLD_EPOCH >> {0}; sleep 0.3; echo end $LEASEHOLD_EPOCH >> {0}",
        log.display()
    );
    let start = || {
        on(&db.path)
            .args([
                "run", "ops", "m", "host-1", "--wait", "--", "sh", "-c", &script,
            ])
            .stdout(Stdio::null())
            .spawn()
    };
    let runs = [start()?, start()?, start()?];
    ok(&lh(&db.path, &["release", "ops", "m", "other"]));
    for child in runs {
        assert!(child.wait_with_output()?.status.success());
    }
    let log = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = log.lines().collect();
    // One after the other, each in a tenure of its own.
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut epochs = Vec::new();
    for pair in lines.chunks(2) {
        let epoch = pair[0].strip_prefix("start ").expect("a start");
        assert_eq!(pair[1], format!("end {epoch}"), "{lines:?}");
        epochs.push(epoch);
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 3, "{lines:?}");
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
fn run_stops_everything_its_command_started_when_the_lease_is_lost() -> R {
    // The command is a shell script whose own child would outlive a signal
    // sent to the shell alone, and go on working without the lease.
    let db = TempDb::new();
    let pid_file = db.dir.path().join("pid");
    let script = format!(
        "sleep 300 & echo $! > {0}.tmp; mv {0}.tmp {0}; wait",
        pid_file.display()
    );
    let child = on(&db.path)
        .args([
            "run", "ops", "m", "host-1", "--grace", "5s", "--", "sh", "-c", &script,
        ])
        .stderr(Stdio::piped())
        .spawn()?;
    support::wait_for_file(&pid_file, Duration::from_secs(30));
    let sleeper: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(running(sleeper));
    ok(&lh(&db.path, &["revoke", "ops", "m"]));
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!running(sleeper), "the command's child outlived the lease");
    Ok(())
}

#[test]
fn run_reports_a_lease_lost_just_before_the_command_exits() -> R {
    // The command ignores SIGTERM and exits right after the revoke:
    // whether or not `run` noticed the loss first, it reports 4 (lost),
    // not the command's status, and says how the command ended.
    for status in [0, 3] {
        let db = TempDb::new();
        let started = db.dir.path().join("started");
        let go = db.dir.path().join("go");
        let script = format!(
            "trap '' TERM; touch {}; while [ ! -e {} ]; do sleep 0.01; done; exit {status}",
            started.display(),
            go.display()
        );
        let child = on(&db.path)
            .args(["run", "ops", "m", "host-1", "--", "sh", "-c", &script])
            .stderr(Stdio::piped())
            .spawn()?;
        support::wait_for_file(&started, Duration::from_secs(30));
        ok(&lh(&db.path, &["revoke", "ops", "m"]));
        std::fs::write(&go, "")?;
        let out = child.wait_with_output()?;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains("lost ops/m"), "{err}");
        assert!(
            err.contains(&format!("it exited with status {status}")),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn run_keeps_stdout_for_its_command_and_hands_it_an_absolute_database() -> R {
    let db = TempDb::new();
    // A relative --db, and a command that changes directory.
    let o = bin()
        .current_dir(db.dir.path())
        .args([
            "--db", "test.db", "run", "ops", "dump", "h", "--", "sh", "-c",
        ])
        .arg("cd / && test -f \"$LEASEHOLD_DB\" && printf '%s' \"$LEASEHOLD_DB\"")
        .output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        std::fs::canonicalize(&db.path)?.display().to_string(),
        "stdout holds the command's output and nothing else"
    );
    assert!(
        stderr(&o).contains("holding ops/dump as h (epoch 1)"),
        "{}",
        stderr(&o)
    );
    Ok(())
}

#[test]
fn run_states_the_shortest_lease_it_accepts() -> R {
    let db = TempDb::new();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "ops", "short", "h"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        lh(&db.path, &args)
    };
    for (args, floor) in [
        (&["--for", "600ms"][..], "600ms"),
        (&["--for", "1ms"], "600ms"),
        (&["--for", "200ms", "--grace", "0s"], "200ms"),
        (&["--for", "2200ms", "--grace", "1s"], "2s 200ms"),
    ] {
        let err = fails(&run(args), 5);
        assert!(
            err.contains(&format!("must be longer than {floor}")),
            "{args:?}: {err}"
        );
    }
    // Just above the floor, the duration is accepted (the lease may still
    // be lost on a busy machine: that is exit 4, not a refusal).
    for args in [
        &["--for", "601ms"][..],
        &["--for", "201ms", "--grace", "0s"],
        &["--for", "2201ms", "--grace", "1s"],
    ] {
        let o = run(args);
        assert!(
            matches!(o.status.code(), Some(0 | 4)),
            "{args:?}: {:?} {}",
            o.status,
            stderr(&o)
        );
    }
    Ok(())
}

/// The lease's expiry, read from the database.
fn expiry(db: &Path) -> leasehold::chrono::DateTime<leasehold::chrono::Utc> {
    let shown = json(&lh(db, &["--json", "show", "ops", "m"]));
    let at = shown["expires_at"].as_str().expect("held");
    leasehold::chrono::DateTime::parse_from_rfc3339(at)
        .expect("a time")
        .with_timezone(&leasehold::chrono::Utc)
}

/// Starts `run` with a shell that starts a grandchild, and returns it with
/// the shell's and the grandchild's pids, once both run.
fn run_a_shell_with_a_grandchild(
    db: &TempDb,
    lease: &str,
    grace: &str,
) -> (std::process::Child, u32, u32) {
    let dir = db.dir.path();
    let script = format!(
        "echo $$ > {0}/shell.tmp; mv {0}/shell.tmp {0}/shell; sleep 300 & echo $! > {0}/child.tmp; mv {0}/child.tmp {0}/child; wait",
        dir.display()
    );
    let run = on(&db.path)
        .args([
            "run", "ops", "m", "host-1", "--for", lease, "--grace", grace, "--", "sh", "-c",
            &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    support::wait_for_file(&dir.join("child"), Duration::from_secs(30));
    let pid = |name: &str| -> u32 {
        std::fs::read_to_string(dir.join(name))
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    };
    let (shell, child) = (pid("shell"), pid("child"));
    assert!(running(shell) && running(child));
    (run, shell, child)
}

/// Asserts that none of `pids` runs by the time the lease expires (polling
/// until they are gone, failing if the expiry passes first).
#[track_caller]
fn none_survives_the_lease(db: &Path, pids: &[u32]) {
    let expires = expiry(db);
    loop {
        // Read the time before looking: a process seen gone is gone then.
        let now = leasehold::chrono::Utc::now();
        let alive: Vec<u32> = pids.iter().copied().filter(|p| running(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            now < expires,
            "{alive:?} still running at {now}, past the lease's expiry {expires}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_killed_run_leaves_nothing_of_its_command_running_past_the_lease() -> R {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let db = TempDb::new();
    let (mut run, shell, child) = run_a_shell_with_a_grandchild(&db, "1s", "100ms");
    // Renewals come when half the lease (500ms) is left: kill `run` a
    // little before the next one.
    loop {
        let kill_at = expiry(&db.path) - leasehold::chrono::Duration::milliseconds(560);
        let now = leasehold::chrono::Utc::now();
        if now < kill_at {
            std::thread::sleep((kill_at - now).to_std()?);
            break;
        }
        // Too late for this one (a slow machine): the next renewal.
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(run.id() as i32), Signal::SIGKILL)?;
    run.wait()?;
    none_survives_the_lease(&db.path, &[shell, child]);
    Ok(())
}

#[test]
fn a_stopped_run_leaves_nothing_of_its_command_running_past_the_lease() -> R {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let db = TempDb::new();
    let (run, shell, child) = run_a_shell_with_a_grandchild(&db, "1s", "100ms");
    let pid = Pid::from_raw(run.id() as i32);
    kill(pid, Signal::SIGSTOP)?;
    let checked = std::panic::catch_unwind(|| none_survives_the_lease(&db.path, &[shell, child]));
    kill(pid, Signal::SIGCONT)?;
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    // Resumed, it finds its command stopped and its lease lost.
    let out = run.wait_with_output()?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("ops/m (epoch 1)"), "{err}");
    Ok(())
}

/// The shortest lease `run` accepts (with `--grace 0`: just over twice its
/// 100 ms margin), `run` SIGKILLed just before a renewal (due when half the
/// lease is left): nothing of the group outlives the lease.
#[test]
fn at_the_shortest_lease_a_killed_run_leaves_nothing_running_past_it() -> R {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let db = TempDb::new();
    let refused = lh(
        &db.path,
        &[
            "run", "ops", "m", "h", "--for", "200ms", "--grace", "0", "--", "true",
        ],
    );
    assert_eq!(refused.status.code(), Some(5), "200ms is below the floor");
    let (mut run, shell, child) = run_a_shell_with_a_grandchild(&db, "201ms", "0");
    let kill_at = expiry(&db.path) - leasehold::chrono::Duration::milliseconds(110);
    if let Ok(wait) = (kill_at - leasehold::chrono::Utc::now()).to_std() {
        std::thread::sleep(wait);
    }
    kill(Pid::from_raw(run.id() as i32), Signal::SIGKILL)?;
    run.wait()?;
    none_survives_the_lease(&db.path, &[shell, child]);
    Ok(())
}

/// The same with `run` SIGSTOPped: its watcher stops the group in time.
#[test]
fn at_the_shortest_lease_a_stopped_run_leaves_nothing_running_past_it() -> R {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let db = TempDb::new();
    let (run, shell, child) = run_a_shell_with_a_grandchild(&db, "201ms", "0");
    let pid = Pid::from_raw(run.id() as i32);
    kill(pid, Signal::SIGSTOP)?;
    let checked = std::panic::catch_unwind(|| none_survives_the_lease(&db.path, &[shell, child]));
    kill(pid, Signal::SIGCONT)?;
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    let out = run.wait_with_output()?;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    Ok(())
}

#[test]
fn run_tells_its_watcher_every_renewal() -> R {
    // Without the renewals' deadlines the watcher would stop the command
    // 200ms before the first lease's end, at 1.8s.
    let db = TempDb::new();
    let o = lh(
        &db.path,
        &[
            "run", "ops", "m", "h", "--for", "2s", "--grace", "100ms", "--", "sleep", "4",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let history = ok(&lh(&db.path, &["history", "ops", "m"]));
    assert_eq!(history.matches("claimed").count(), 1, "{history}");
    Ok(())
}

#[test]
fn run_stops_what_its_command_left_behind_and_passes_signals_on() -> R {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // The command exits at once, leaving a child behind in its group.
    let db = TempDb::new();
    let pid_file = db.dir.path().join("pid");
    let script = format!(
        "sleep 300 & echo $! > {0}.tmp; mv {0}.tmp {0}",
        pid_file.display()
    );
    let o = lh(
        &db.path,
        &[
            "run", "ops", "m", "h", "--grace", "1s", "--", "sh", "-c", &script,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sleeper: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(!running(sleeper), "left running after run ended");
    assert!(ok(&lh(&db.path, &["list"])).contains("no held leases"));

    // SIGTERM to run reaches the command (and not run's watcher alone).
    let started = db.dir.path().join("started");
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.01; done",
        started.display()
    );
    let run = on(&db.path)
        .args(["run", "ops", "m", "h", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()?;
    support::wait_for_file(&started, Duration::from_secs(30));
    kill(Pid::from_raw(run.id() as i32), Signal::SIGTERM)?;
    let out = run.wait_with_output()?;
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    Ok(())
}

// export / import

fn export(db: &Path) -> String {
    ok(&lh(db, &["export"]))
}

#[test]
fn export_then_import_round_trips() -> R {
    let src = TempDb::new();
    let p = &src.path;
    ok(&lh(p, &["claim", "ops", "a", "h1", "--for", "1h"]));
    ok(&lh(p, &["claim", "ops", "b", "h2", "--for", "1h"]));
    ok(&lh(p, &["release", "ops", "b", "h2"]));
    ok(&lh(p, &["claim", "ops", "b", "h3", "--for", "1h"]));
    ok(&lh(p, &["revoke", "ops", "b"]));
    ok(&lh(
        p,
        &["pin", "ops", "a", "--entity", "m0", "--reason", "upgrade"],
    ));
    let dump = export(p);
    assert_eq!(dump.lines().count(), 5, "{dump}");
    let file = src.dir.path().join("dump.jsonl");
    std::fs::write(&file, &dump)?;

    let dst = TempDb::new();
    let msg = ok(&lh(
        &dst.path,
        &["import", file.to_str().expect("utf8"), "--window", "2m"],
    ));
    assert!(
        msg.contains("1 held lease, 1 vacant key and 1 pin"),
        "{msg}"
    );
    let a = json(&lh(&dst.path, &["--json", "show", "ops", "a"]));
    assert_eq!(
        (a["holder"].as_str(), a["epoch"].as_u64()),
        (Some("h1"), Some(1))
    );
    assert!(
        a["left_ms"].as_i64().is_some_and(|ms| ms <= 120_000),
        "a fresh window"
    );
    assert_eq!(a["pins"][0]["entity"], "m0");
    let b = json(&lh(&dst.path, &["--json", "show", "ops", "b"]));
    assert_eq!(
        (b["held"].as_bool(), b["epoch"].as_u64()),
        (Some(false), Some(2))
    );
    // Epochs continue from the imported ones.
    assert!(ok(&lh(&dst.path, &["claim", "ops", "b", "h4", "--for", "1s"])).contains("epoch 3"));
    // Re-importing the same dump is refused for b (its epoch is now lower).
    let err = fails(
        &on(&dst.path)
            .args(["import"])
            .stdin(std::fs::File::open(&file)?)
            .output()?,
        5,
    );
    assert!(err.contains("line 3, field epoch"), "{err}");
    Ok(())
}

fn import_refused(db: &Path, input: impl AsRef<[u8]>) -> String {
    let before = export(db);
    let mut child = on(db)
        .arg("import")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_ref())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let err = fails(&out, 5);
    assert!(err.contains("nothing written"), "{err}");
    let after = export(db);
    // Compare everything but the header's time and the time left.
    let strip = |s: &str| -> Vec<Value> {
        s.lines()
            .skip(1)
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).expect("json");
                if let Some(lease) = v.get_mut("lease") {
                    lease["expires_in_ms"] = Value::Null;
                }
                v
            })
            .collect()
    };
    assert_eq!(strip(&before), strip(&after), "nothing was written");
    err
}

#[test]
fn import_refuses_bad_input_whole() -> R {
    let db = TempDb::new();
    let p = &db.path;
    ok(&lh(p, &["claim", "ops", "x", "h1", "--for", "1h"]));
    ok(&lh(p, &["release", "ops", "x", "h1"]));
    ok(&lh(p, &["claim", "ops", "x", "h1", "--for", "1h"])); // epoch 2 here
    let header = r#"{"leasehold_export":1,"schema":2,"taken_at":"2026-11-25T00:00:00.000Z"}"#;
    let good = r#"{"lease":{"namespace":"ops","name":"new","holder":"h9","epoch":4,"expires_in_ms":1000}}"#;

    let err = import_refused(p, "");
    assert!(err.contains("line 1"), "{err}");
    let err = import_refused(
        p,
        format!("{header}\n{good}\n{{\"lease\": {{\"namespace\": \"ops\""),
    );
    assert!(
        err.contains("line 3") && err.contains("EOF"),
        "truncated mid-line: {err}"
    );
    let err = import_refused(p, format!("{header}\n{good}\n"));
    assert!(err.contains("truncated"), "cut at a line boundary: {err}");
    let err = import_refused(
        p,
        format!(
            "{header}\n{good}\n{}\n{{\"end\":{{\"leases\":2,\"pins\":0}}}}\n",
            r#"{"lease":{"namespace":"ops","name":"y","holder":null,"epoch":1,"expires_in_ms":null,"colour":"red"}}"#
        ),
    );
    assert!(
        err.contains("line 3") && err.contains("unknown field `colour`"),
        "{err}"
    );
    let err = import_refused(
        p,
        format!(
            "{header}\n{good}\n{}\n{{\"end\":{{\"leases\":2,\"pins\":0}}}}\n",
            r#"{"lease":{"namespace":"ops","name":"x","holder":"h1","epoch":1,"expires_in_ms":5}}"#
        ),
    );
    assert!(
        err.contains("line 3, field epoch") && err.contains("lower"),
        "{err}"
    );
    let err = import_refused(
        p,
        format!(
            "{header}\n{}\n{{\"end\":{{\"leases\":1,\"pins\":0}}}}\n",
            r#"{"lease":{"namespace":"ops","name":"tab\there","holder":null,"epoch":1,"expires_in_ms":null}}"#
        ),
    );
    assert!(err.contains("line 2, field name"), "{err}");
    let err = import_refused(
        p,
        format!("{header}\n{good}\n{{\"end\":{{\"leases\":5,\"pins\":0}}}}\n"),
    );
    assert!(err.contains("end line counts 5 leases"), "{err}");
    // A value of the wrong type: the field is named, and the line is the
    // file's (not serde's count within the line).
    let err = import_refused(
        p,
        format!(
            "{header}\n{}\n",
            r#"{"lease":{"namespace":"ops","name":"y","holder":null,"epoch":"3","expires_in_ms":null}}"#
        ),
    );
    assert!(err.contains("line 2, field lease.epoch"), "{err}");
    assert!(!err.contains("line 1"), "{err}");
    // An epoch no key could go on from.
    let err = import_refused(
        p,
        format!(
            "{header}\n{}\n{{\"end\":{{\"leases\":1,\"pins\":0}}}}\n",
            r#"{"lease":{"namespace":"ops","name":"y","holder":"h","epoch":9223372036854775807,"expires_in_ms":5}}"#
        ),
    );
    assert!(err.contains("line 2, field epoch"), "{err}");
    // Bytes that are not text.
    let mut bytes = format!("{header}\n").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\n");
    let err = import_refused(p, bytes);
    assert!(err.contains("line 2: not UTF-8"), "{err}");
    Ok(())
}

/// Runs `import` with `input` on stdin (written from a thread, whose write
/// may fail once the import has refused and gone).
fn import_with(db: &Path, input: Vec<u8>) -> Output {
    let mut child = on(db)
        .arg("import")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    out
}

const HEADER: &str = r#"{"leasehold_export":1,"schema":3,"taken_at":"2026-11-25T00:00:00.000Z"}"#;

#[test]
fn import_bounds_every_line_and_names_the_one_too_long() -> R {
    let db = TempDb::new();
    ok(&lh(&db.path, &["migrate"]));
    // A line of 8 MiB with no end, after a good header.
    let mut input = format!("{HEADER}\n").into_bytes();
    input.resize(input.len() + (8 << 20), b'x');
    let err = fails(&import_with(&db.path, input), 5);
    assert!(
        err.contains("line 2") && err.contains("1 MiB") && err.contains("1048576"),
        "{err}"
    );
    // The header itself.
    let err = fails(&import_with(&db.path, vec![b'{'; 3 << 20]), 5);
    assert!(err.contains("line 1") && err.contains("1 MiB"), "{err}");
    // A line of exactly 1 MiB is read (and refused for what it says).
    let mut input = format!("{HEADER}\n").into_bytes();
    input.resize(input.len() + (1 << 20), b' ');
    input.push(b'\n');
    let err = fails(&import_with(&db.path, input), 5);
    assert!(err.contains("line 2") && !err.contains("1 MiB"), "{err}");
    Ok(())
}

#[test]
fn import_skips_identical_duplicate_lines_and_refuses_conflicting_ones() -> R {
    let db = TempDb::new();
    let lease =
        r#"{"lease":{"namespace":"ops","name":"a","holder":"h1","epoch":4,"expires_in_ms":1000}}"#;
    let vacant =
        r#"{"lease":{"namespace":"ops","name":"b","holder":null,"epoch":2,"expires_in_ms":null}}"#;
    let pin = r#"{"pin":{"namespace":"ops","name":"a","entity":"m0","reason":"upgrade","expires_in_ms":null}}"#;
    let input = format!(
        "{HEADER}\n{lease}\n{vacant}\n{lease}\n{pin}\n{pin}\n{{\"end\":{{\"leases\":3,\"pins\":2}}}}\n"
    );
    let said = ok(&import_with(&db.path, input.into_bytes()));
    assert!(
        said.contains("imported 1 held lease, 1 vacant key and 1 pin")
            && said.contains(
                "skipped 2 duplicate lines repeating an earlier line exactly (lines 4, 6)"
            ),
        "{said}"
    );
    let shown = json(&lh(&db.path, &["--json", "show", "ops", "a"]));
    assert_eq!(shown["pins"].as_array().map(Vec::len), Some(1), "{shown}");

    let other = TempDb::new();
    ok(&lh(&other.path, &["migrate"]));
    let conflict =
        r#"{"lease":{"namespace":"ops","name":"a","holder":"h2","epoch":4,"expires_in_ms":1000}}"#;
    let err = import_refused(
        &other.path,
        format!("{HEADER}\n{lease}\n{conflict}\n{{\"end\":{{\"leases\":2,\"pins\":0}}}}\n"),
    );
    assert!(
        err.contains("line 3: ops/a is on line 2 already")
            && err.contains("held by h1 in epoch 4")
            && err.contains("held by h2 in epoch 4"),
        "{err}"
    );
    let pin2 = pin.replace("upgrade", "other reason");
    let err = import_refused(
        &other.path,
        format!("{HEADER}\n{lease}\n{pin}\n{pin2}\n{{\"end\":{{\"leases\":1,\"pins\":2}}}}\n"),
    );
    assert!(
        err.contains("line 4: the pin of ops/a by m0 is on line 3 already"),
        "{err}"
    );
    Ok(())
}

#[test]
fn import_says_whose_epoch_it_refuses() -> R {
    let db = TempDb::new();
    let p = &db.path;
    ok(&lh(p, &["claim", "ops", "ended", "h1", "--for", "1h"]));
    ok(&lh(p, &["release", "ops", "ended", "h1"]));
    ok(&lh(p, &["claim", "ops", "held", "h1", "--for", "1h"]));
    let one = |name: &str| {
        format!(
            "{HEADER}\n{{\"lease\":{{\"namespace\":\"ops\",\"name\":\"{name}\",\"holder\":\"h2\",\"epoch\":1,\"expires_in_ms\":5}}}}\n{{\"end\":{{\"leases\":1,\"pins\":0}}}}\n"
        )
    };
    let err = import_refused(p, one("ended"));
    assert!(
        err.contains("line 2, field epoch")
            && err.contains("whose tenure ended (a re-import would revive its tokens)")
            && !err.contains("someone else"),
        "{err}"
    );
    let err = import_refused(p, one("held"));
    assert!(err.contains("held here by h1"), "{err}");
    Ok(())
}

#[test]
fn import_refuses_a_header_it_cannot_vouch_for() -> R {
    let db = TempDb::new();
    ok(&lh(&db.path, &["migrate"]));
    let body = "{\"end\":{\"leases\":0,\"pins\":0}}\n";
    let header = |schema: &str, taken_at: &str| {
        format!(
            "{{\"leasehold_export\":1,\"schema\":{schema},\"taken_at\":\"{taken_at}\"}}\n{body}"
        )
    };
    let err = import_refused(&db.path, header("99", "2026-11-25T00:00:00.000Z"));
    assert!(
        err.contains("line 1, field schema") && err.contains("99 is newer"),
        "{err}"
    );
    let err = import_refused(&db.path, header("0", "2026-11-25T00:00:00.000Z"));
    assert!(err.contains("line 1, field schema"), "{err}");
    let err = import_refused(&db.path, header("3", "last tuesday"));
    assert!(
        err.contains("line 1, field taken_at") && err.contains("\"last tuesday\""),
        "{err}"
    );
    // An older schema's export is fine.
    ok(&import_with(
        &db.path,
        header("1", "2026-11-25T00:00:00Z").into_bytes(),
    ));
    Ok(())
}

// watch

#[test]
fn watch_prints_transitions_from_other_processes() -> R {
    let db = TempDb::new();
    ok(&lh(&db.path, &["migrate"]));
    // Reading commands do not create databases.
    let err = fails(&lh(&db.dir.path().join("typo.db"), &["watch"]), 5);
    assert!(err.contains("no database at"), "{err}");
    let watcher = on(&db.path)
        .args(["watch", "ops", "--duration", "20s"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(watcher.stdout.expect("stdout"));
    use std::io::BufRead;
    let mut line = String::new();
    out.read_line(&mut line)?;
    assert!(line.starts_with("watching ops"), "{line}");
    // The watcher is ready; make things happen from other processes.
    let p = db.path.clone();
    let actor = std::thread::spawn(move || {
        ok(&lh(&p, &["claim", "ops", "w", "h1", "--for", "500ms"]));
        ok(&lh(&p, &["claim", "other", "w", "h1", "--for", "1h"]));
        ok(&lh(&p, &["release", "ops", "w", "h1"]));
        ok(&lh(&p, &["claim", "ops", "w", "h2", "--for", "300ms"]));
    });
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        line.clear();
        assert!(
            out.read_line(&mut line)? > 0,
            "watch ended early: {kinds:?}"
        );
        // "<time>  ops/w  <kind>  <holder>  epoch <n>"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(1), Some(&"ops/w"), "{line}");
        kinds.push(format!("{} {}", words[2], words[3]));
    }
    actor.join().expect("actor");
    assert_eq!(
        kinds,
        ["claimed h1", "released h1", "claimed h2", "lapsed h2"]
    );
    // JSON mode prints one object per transition.
    let json = ok(&on(&db.path)
        .args(["--json", "watch", "ops", "--duration", "1s"])
        .output()?);
    assert!(
        json.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{json}"
    );
    Ok(())
}

#[test]
fn watch_says_each_lapse_once_even_when_it_saw_the_lease_already_lapsed() -> R {
    let db = TempDb::new();
    ok(&lh(&db.path, &["migrate"]));
    let watcher = on(&db.path)
        .args(["watch", "ops", "--duration", "20s"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(watcher.stdout.expect("stdout"));
    use std::io::BufRead;
    let mut line = String::new();
    out.read_line(&mut line)?;
    assert!(line.starts_with("watching ops"), "{line}");
    // A lease so short it may have run out before the watcher looks at it;
    // the next claim logs its lapse. Either way: said once, in order.
    ok(&lh(&db.path, &["claim", "ops", "z", "h1", "--for", "1ms"]));
    ok(&lh(&db.path, &["claim", "ops", "z", "h2", "--for", "1h"]));
    ok(&lh(&db.path, &["revoke", "ops", "z"]));
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        line.clear();
        assert!(
            out.read_line(&mut line)? > 0,
            "watch ended early: {kinds:?}"
        );
        let words: Vec<&str> = line.split_whitespace().collect();
        kinds.push(format!("{} {}", words[2], words[3]));
    }
    assert_eq!(
        kinds,
        ["claimed h1", "lapsed h1", "claimed h2", "revoked h2"]
    );
    Ok(())
}

// demo

#[test]
fn the_demo_passes_its_own_verdict_in_json_lines() -> R {
    let dir = tempfile::tempdir()?;
    let svg = dir.path().join("timeline.svg");
    let out = bin()
        .args(["--json", "demo", "--short", "--workers", "3", "--svg"])
        .arg(&svg)
        .output()?;
    let text = stdout(&out);
    // Nothing but JSON lines: one object per moment, then the verdict.
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let (verdict, timeline) = lines.split_last().expect("output");
    assert!(out.status.success(), "{verdict} {}", stderr(&out));
    assert_eq!(verdict["kind"], "verdict", "{verdict}");
    assert_eq!(verdict["pass"], true);
    assert!(
        verdict["epochs"].as_u64().is_some_and(|e| e >= 3),
        "kill and pause each hand over: {verdict}"
    );
    assert!(
        verdict["refused"].as_u64().is_some_and(|r| r >= 1),
        "the paused leader's write was refused: {verdict}"
    );
    let kinds: Vec<&str> = timeline.iter().filter_map(|m| m["kind"].as_str()).collect();
    assert_eq!(kinds.len(), timeline.len(), "every moment has a kind");
    for kind in ["joined", "leads", "wrote", "killed", "paused", "refused"] {
        assert!(kinds.contains(&kind), "{kind}: {kinds:?}");
    }
    // A file has no network to cut.
    assert!(!kinds.contains(&"cut"), "{kinds:?}");
    let picture = std::fs::read_to_string(&svg)?;
    assert!(picture.starts_with("<svg") && picture.contains("refused"));
    Ok(())
}

/// The names of `db`'s tables, read without leasehold.
fn tables(db: &Path) -> Vec<String> {
    let conn = leasehold::rusqlite::Connection::open(db).expect("open");
    let mut st = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .expect("prepare");
    st.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn the_demo_refuses_a_database_it_would_have_to_change() -> R {
    let dir = tempfile::tempdir()?;
    let demo_on = |db: &Path| {
        bin()
            .args(["demo", "--short", "--workers", "2", "--db"])
            .arg(db)
            .output()
            .expect("run demo")
    };
    // The user's own table named demo_writes, in a database without
    // leasehold: kept, and leasehold's tables are not even created.
    let users = dir.path().join("users.db");
    {
        let conn = leasehold::rusqlite::Connection::open(&users)?;
        conn.execute_batch(
            "CREATE TABLE demo_writes (what TEXT); INSERT INTO demo_writes VALUES ('precious');",
        )?;
    }
    let before = std::fs::read(&users)?;
    let err = fails(&demo_on(&users), 5);
    assert!(err.contains("demo_writes"), "{err}");
    assert_eq!(std::fs::read(&users)?, before, "the file is unchanged");
    assert_eq!(tables(&users), ["demo_writes"]);

    // The demo's lease held by someone else: said, not "no worker became
    // leader", and nothing changed.
    let held = dir.path().join("held.db");
    ok(&lh(
        &held,
        &[
            "claim",
            "application-leadership",
            "demo-app",
            "prod",
            "--for",
            "1h",
        ],
    ));
    let err = fails(&demo_on(&held), 5);
    assert!(err.contains("held by prod"), "{err}");
    assert!(!tables(&held).contains(&"demo_writes".to_owned()));
    ok(&lh(
        &held,
        &["release", "application-leadership", "demo-app", "prod"],
    ));
    ok(&lh(
        &held,
        &[
            "pin",
            "application-leadership",
            "demo-app",
            "--entity",
            "ops",
            "--reason",
            "freeze",
        ],
    ));
    let err = fails(&demo_on(&held), 5);
    assert!(err.contains("pinned by ops"), "{err}");

    // Not a database at all: refused, untouched, no side files.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes, not a database\n".repeat(200))?;
    let before = std::fs::read(&notes)?;
    let err = fails(&demo_on(&notes), 5);
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&notes)?, before);
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("notes"))
        .collect();
    assert_eq!(names, ["notes.txt"]);

    // A picture that could not be written is refused before the demo starts.
    let fresh = dir.path().join("fresh.db");
    let o = bin()
        .args(["demo", "--short", "--svg", "/nonexistent/x.svg", "--db"])
        .arg(&fresh)
        .output()?;
    let err = fails(&o, 5);
    assert!(err.contains("/nonexistent/x.svg"), "{err}");
    assert!(!fresh.exists(), "nothing was started");
    let o = bin()
        .args(["demo", "--short", "--svg"])
        .arg(dir.path())
        .output()?;
    let err = fails(&o, 5);
    assert!(err.contains("is a directory"), "{err}");

    // A fresh file gets the demo's table; a second demo on it refuses.
    let out = demo_on(&fresh);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tables(&fresh).contains(&"demo_writes".to_owned()));
    let err = fails(&demo_on(&fresh), 5);
    assert!(err.contains("demo_writes"), "{err}");
    Ok(())
}

/// The demo's worker processes still running (by their database path,
/// which names the demo's temporary directory): pid and state.
fn demo_workers(tmp: &Path) -> Vec<(u32, char)> {
    let needle = tmp.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("__demo-worker") && cmdline.contains(&needle) {
            let state = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.trim_start().chars().next())
                .unwrap_or('?');
            if state != 'Z' && state != 'X' {
                found.push((pid, state));
            }
        }
    }
    found
}

#[test]
fn a_demo_stopped_by_a_signal_stops_its_workers_and_removes_its_files() -> R {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for (signal, wait_for_pause) in [(Signal::SIGTERM, true), (Signal::SIGINT, false)] {
        let tmp = tempfile::tempdir()?;
        // Its stderr in a file, not a pipe: workers share it, and one left
        // paused would keep a pipe open for ever.
        let logs = tempfile::tempdir()?;
        let log = logs.path().join("stderr");
        let mut demo = bin()
            .env("TMPDIR", tmp.path())
            .args(["demo", "--workers", "3"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Stop it once its workers run, or once one of them is paused
        // (SIGSTOP: a worker nobody resumes would stay forever).
        loop {
            let workers = demo_workers(tmp.path());
            let ready = if wait_for_pause {
                workers.iter().any(|(_, state)| *state == 'T')
            } else {
                workers.len() == 3
            };
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo did not get there: {workers:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        kill(Pid::from_raw(demo.id() as i32), signal)?;
        let status = demo.wait()?;
        let err = std::fs::read_to_string(&log)?;
        assert_eq!(
            status.code(),
            Some(128 + signal as i32),
            "{signal}: {status:?} {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(demo_workers(tmp.path()), [], "{signal}: workers left");
        let left: Vec<_> = std::fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
    }
    Ok(())
}

// bytes that are not UTF-8

#[test]
fn an_argument_that_is_not_utf8_is_invalid_input_and_named() -> R {
    let db = TempDb::new();
    let bad = || OsString::from_vec(vec![b'm', 0xff, b'0']);
    let o = on(&db.path)
        .args(["pin", "ops", "k", "--entity"])
        .arg(bad())
        .output()?;
    let err = fails(&o, 5);
    assert!(err.contains("--entity is not valid UTF-8"), "{err}");
    let mut joined = OsString::from("--reason=");
    joined.push(bad());
    let o = on(&db.path)
        .args(["pin", "ops", "k", "--entity", "e"])
        .arg(joined)
        .output()?;
    let err = fails(&o, 5);
    assert!(err.contains("--reason is not valid UTF-8"), "{err}");
    let o = on(&db.path)
        .args(["--json", "claim", "ops", "k"])
        .arg(bad())
        .args(["--for", "1s"])
        .output()?;
    let e: Value = serde_json::from_str(fails(&o, 5).trim())?;
    assert_eq!(e["error"]["kind"], "invalid_input", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HOLDER")),
        "{e}"
    );
    Ok(())
}

// a closed pipe

/// Runs `cmd` with standard output a pipe whose reader is already closed.
fn into_a_closed_pipe(cmd: &mut Command) -> Output {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run leasehold")
}

#[track_caller]
fn ended_by_sigpipe(o: &Output) {
    use std::os::unix::process::ExitStatusExt;
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(
        o.status.signal(),
        Some(nix::sys::signal::Signal::SIGPIPE as i32),
        "{:?} {err}",
        o.status
    );
}

#[test]
fn a_closed_pipe_ends_every_printing_command_quietly() -> R {
    let db = TempDb::new();
    let p = &db.path;
    for i in 0..50 {
        ok(&lh(
            p,
            &["claim", "ops", &format!("k{i}"), "h", "--for", "1h"],
        ));
    }
    let commands: &[&[&str]] = &[
        &["list"],
        &["--json", "list"],
        &["show", "ops", "k1"],
        &["history", "ops", "k1"],
        &["export"],
        &["migrate", "--print-sql"],
        &["watch", "--duration", "10s"],
    ];
    for args in commands {
        let o = into_a_closed_pipe(on(p).args(*args));
        ended_by_sigpipe(&o);
    }
    // The demo cleans up after itself on its way out: no workers, no
    // temporary directory left.
    let tmp = tempfile::tempdir()?;
    let o = into_a_closed_pipe(bin().env("TMPDIR", tmp.path()).args([
        "demo",
        "--short",
        "--workers",
        "2",
    ]));
    ended_by_sigpipe(&o);
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 0, "temp dir left");
    Ok(())
}

// output files

/// Whether `dir` holds a file whose name ends with `.tmp`.
fn temp_files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn export_refuses_to_write_over_the_database_or_its_side_files() -> R {
    let db = TempDb::new();
    let dir = db.dir.path();
    ok(&lh(&db.path, &["claim", "ops", "a", "h", "--for", "1h"]));
    let before = std::fs::read(&db.path)?;
    std::os::unix::fs::symlink(&db.path, dir.join("link.db"))?;
    std::fs::hard_link(&db.path, dir.join("hard.db"))?;
    std::fs::create_dir(dir.join("sub"))?;
    let targets = [
        "test.db",
        "./test.db",
        "sub/../test.db",
        "link.db",
        "hard.db",
        "test.db-wal",
        "test.db-shm",
        "test.db-journal",
    ];
    for target in targets {
        let o = on(Path::new("test.db"))
            .current_dir(dir)
            .args(["export", "-o", target])
            .output()?;
        let err = fails(&o, 5);
        assert!(err.contains("refusing to write"), "{target}: {err}");
    }
    // Through a symlink to the database, the side files are the target's.
    let o = on(&dir.join("link.db"))
        .args(["export", "-o"])
        .arg(dir.join("test.db-wal"))
        .output()?;
    fails(&o, 5);
    assert_eq!(
        std::fs::read(&db.path)?,
        before,
        "the database is unchanged"
    );
    assert!(!dir.join("test.db-journal").exists());
    assert!(ok(&lh(&db.path, &["list"])).contains("ops/a"));
    // The demo's picture too, before it starts anything.
    let o = bin()
        .current_dir(dir)
        .args(["demo", "--short", "--db", "test.db", "--svg", "./link.db"])
        .output()?;
    let err = fails(&o, 5);
    assert!(err.contains("refusing to write"), "{err}");
    let o = bin()
        .current_dir(dir)
        .args(["demo", "--short", "--db", "new.db", "--svg", "new.db-wal"])
        .output()?;
    fails(&o, 5);
    // A dangling symlink to the database the demo is about to create.
    std::os::unix::fs::symlink("sub/../new.db", dir.join("dangling.svg"))?;
    let o = bin()
        .current_dir(dir)
        .args(["demo", "--short", "--db", "new.db", "--svg", "dangling.svg"])
        .output()?;
    fails(&o, 5);
    assert!(!dir.join("new.db").exists(), "nothing was started");
    Ok(())
}

#[test]
fn export_replaces_its_file_whole_keeping_its_mode() -> R {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let db = TempDb::new();
    let dir = db.dir.path();
    ok(&lh(&db.path, &["claim", "ops", "a", "h", "--for", "1h"]));
    let dump = dir.join("dump.jsonl");
    std::fs::write(&dump, "old")?;
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o640))?;
    ok(&lh(
        &db.path,
        &["export", "-o", dump.to_str().expect("utf8")],
    ));
    let text = std::fs::read_to_string(&dump)?;
    assert!(text.starts_with("{\"leasehold_export\""), "{text}");
    assert_eq!(
        std::fs::metadata(&dump)?.permissions().mode() & 0o7777,
        0o640
    );
    // Through a symlink: the target is replaced, the link stays a link.
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&dump, &link)?;
    std::fs::write(&dump, "old")?;
    ok(&lh(
        &db.path,
        &["export", "-o", link.to_str().expect("utf8")],
    ));
    assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    assert!(std::fs::read_to_string(&dump)?.contains("\"lease\""));
    // Through a dangling symlink: its target is created.
    let dangling = dir.join("dangling.jsonl");
    std::os::unix::fs::symlink("new.jsonl", &dangling)?;
    ok(&lh(
        &db.path,
        &["export", "-o", dangling.to_str().expect("utf8")],
    ));
    assert!(
        std::fs::symlink_metadata(&dangling)?
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read_to_string(dir.join("new.jsonl"))?.contains("\"lease\""));
    assert!(temp_files_in(dir).is_empty(), "{:?}", temp_files_in(dir));
    // What is not a regular file is written in place.
    ok(&lh(&db.path, &["export", "-o", "/dev/null"]));
    assert!(std::fs::metadata("/dev/null")?.file_type().is_char_device());
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo))
    };
    ok(&lh(
        &db.path,
        &["export", "-o", fifo.to_str().expect("utf8")],
    ));
    assert!(reader.join().expect("reader")?.contains("\"lease\""));
    assert!(std::fs::metadata(&fifo)?.file_type().is_fifo());
    // A write that fails says so.
    let err = fails(&lh(&db.path, &["export", "-o", "/dev/full"]), 1);
    assert!(err.contains("cannot write /dev/full"), "{err}");
    Ok(())
}

/// A 64 KiB tmpfs, unmounted on drop; `None` (after a loud message) where
/// mounting is not permitted.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            Some(SmallDisk(dir))
        } else {
            eprintln!(
                "\n*** SKIPPED: cannot mount a small tmpfs here (needs root); the full-disk case is untested ***\n"
            );
            None
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn export_onto_a_full_disk_leaves_the_old_file_whole() -> R {
    let Some(disk) = SmallDisk::mount() else {
        return Ok(());
    };
    let db = TempDb::new();
    {
        let engine = leasehold::Engine::open(&db.path)?;
        for i in 0..600 {
            let key = leasehold::Key::new("ops", format!("a-rather-long-lease-name-{i:04}"))?;
            engine.claim(&key, "a-holder-with-a-long-name", Duration::from_secs(3600))?;
        }
    }
    let dump = disk.0.path().join("dump.jsonl");
    let small = TempDb::new();
    ok(&lh(&small.path, &["claim", "ops", "a", "h", "--for", "1h"]));
    ok(&lh(
        &small.path,
        &["export", "-o", dump.to_str().expect("utf8")],
    ));
    let good = std::fs::read(&dump)?;
    // The big export (about 70 KB) does not fit.
    let err = fails(
        &lh(&db.path, &["export", "-o", dump.to_str().expect("utf8")]),
        1,
    );
    assert!(err.contains("cannot write"), "{err}");
    assert_eq!(std::fs::read(&dump)?, good, "the old file is whole");
    assert!(
        temp_files_in(disk.0.path()).is_empty(),
        "{:?}",
        temp_files_in(disk.0.path())
    );
    Ok(())
}

//! The release command line used as a careless or hostile user would:
//! durations past what a clock can count, a FIFO or a device as the
//! database, a command that stops itself or reads the terminal under
//! `run`, a demo killed outright.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::TempDb;

type R = Result<(), Box<dyn std::error::Error>>;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.env_remove("LEASEHOLD_DB");
    cmd
}

/// `leasehold --db DB args…`, to run.
fn on(db: &Path, args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("--db").arg(db).args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code and one line on stderr, without a panic's
/// message; returns that line.
#[track_caller]
fn fails(o: &Output, code: i32) -> String {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {} stderr: {err}",
        text(&o.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid"))
}

/// Waits for `child` at most `limit` (against a hang: a process that is
/// stuck for good); `None` if it is still there then.
fn wait_for(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// As [`wait_for`], killing the child if it is still there at the end.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let status = wait_for(child, limit)?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status)
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`…), if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The live processes whose command line mentions `needle` (this test's
/// temporary directory), for cleaning up after a failure.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != std::process::id())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| text(&c).contains(needle))
        })
        .filter(|p| !matches!(state(*p), Some('Z' | 'X') | None))
        .collect()
}

/// SIGKILLs what is left of a test's processes.
fn kill_leftovers(needle: &str) {
    for p in processes_mentioning(needle) {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
}

/// `watch --duration` longer than `Instant` can count panicked (exit
/// 101) adding it to the clock; it now runs as if without a duration, and
/// says the duration as given.
#[test]
fn watch_for_longer_than_the_clock_can_count_runs_instead_of_panicking() -> R {
    let db = TempDb::new();
    assert!(on(&db.path, &["migrate"]).output()?.status.success());
    let mut watch = on(&db.path, &["watch", "--duration", "580000000000y"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(watch.stdout.take().expect("stdout")).read_line(&mut first)?;
    let still_running = watch.try_wait()?.is_none();
    watch.kill()?;
    let out = watch.wait_with_output()?;
    assert!(
        still_running && first.starts_with("watching"),
        "first line {first:?}, stderr {}",
        text(&out.stderr)
    );
    Ok(())
}

/// `run --grace` near `Duration::MAX` panicked adding a tenth of it
/// (exit 101, a backtrace); it is a grace too long for `--for` (exit 5).
#[test]
fn run_with_a_grace_past_what_durations_hold_is_refused_not_a_panic() -> R {
    let db = TempDb::new();
    for grace in ["580000000000y", "18446744073709551615s"] {
        let o = on(
            &db.path,
            &["run", "ops", "r", "me", "--for", "30s", "--grace", grace],
        )
        .args(["--", "true"])
        .output()?;
        let err = fails(&o, 5);
        assert!(err.contains("is too short"), "{err}");
    }
    Ok(())
}

/// Durations past 584 million years were printed wrong (milliseconds
/// truncated to 64 bits: `--grace 580000000000y` was said as
/// "134290278years"); they are said as given.
#[test]
fn durations_past_584_million_years_are_said_as_given() -> R {
    let db = TempDb::new();
    let o = on(
        &db.path,
        &[
            "run",
            "ops",
            "r",
            "me",
            "--for",
            "30s",
            "--grace",
            "580000000000y",
        ],
    )
    .args(["--", "true"])
    .output()?;
    let err = fails(&o, 5);
    assert!(err.contains("--grace 580000000000years "), "{err}");
    assert!(on(&db.path, &["migrate"]).output()?.status.success());
    let mut watch = on(&db.path, &["watch", "--duration", "580000000000y"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(watch.stdout.take().expect("stdout")).read_line(&mut first)?;
    watch.kill()?;
    watch.wait()?;
    assert!(first.contains("for 580000000000years"), "{first:?}");
    Ok(())
}

/// `LEASEHOLD_DB` naming a FIFO: every reading command waited for ever in
/// SQLite's open (a FIFO opened to read blocks until a writer comes), and
/// the others failed as a storage error ("disk I/O error", exit 7). Now
/// each is refused at once as invalid input, as a directory is.
#[test]
fn a_fifo_as_the_database_is_refused_not_waited_on() -> R {
    let db = TempDb::new();
    let fifo = db.dir.path().join("pipe.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let export = db.dir.path().join("export.jsonl");
    std::fs::write(
        &export,
        "{\"leasehold_export\":1,\"schema\":3,\"taken_at\":\"2026-11-25T14:00:00.000Z\"}\n{\"end\":{\"leases\":0,\"pins\":0}}\n",
    )?;
    let export = export.to_str().expect("UTF-8 path");
    let commands: [&[&str]; 12] = [
        &["list"],
        &["show", "ops", "a"],
        &["history", "ops", "a"],
        &["export"],
        &["watch", "--duration", "1s"],
        &["migrate"],
        &["claim", "ops", "a", "me", "--for", "5s"],
        &["release", "ops", "a", "me"],
        &["pin", "ops", "a", "--entity", "e"],
        &["import", export],
        &["run", "ops", "a", "me", "--", "true"],
        &["demo", "--short"],
    ];
    for args in commands {
        let mut child = on(&fifo, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut status = wait_for(&mut child, Duration::from_secs(20))?;
        if status.is_none() {
            // Let a blocked opener go on (it reads an empty file); without
            // waiting for a reader if there is none.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&fifo);
            status = wait_at_most(&mut child, Duration::from_secs(10))?;
        }
        let out = child.wait_with_output()?;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(5),
            "leasehold {args:?} on a FIFO: stderr {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains("is a FIFO"), "{args:?}: {err}");
    }
    // `demo --db` names its database itself.
    let o = bin().arg("demo").arg("--db").arg(&fifo).output()?;
    assert!(fails(&o, 5).contains("is a FIFO"));
    Ok(())
}

/// A device as the database (`LEASEHOLD_DB=/dev/null`): `claim` failed as
/// a storage error and left SQLite's journal beside the device
/// (`/dev/null-journal`). Now it is refused and nothing is created. Needs
/// root to make a device in a temporary directory; skipped otherwise.
#[test]
fn a_device_as_the_database_is_refused_and_nothing_is_left_beside_it() -> R {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let db = TempDb::new();
    let dev = db.dir.path().join("null.db");
    if mknod(
        &dev,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .is_err()
    {
        eprintln!("skipped: mknod needs root");
        return Ok(());
    }
    for args in [
        &["claim", "ops", "a", "me", "--for", "5s"][..],
        &["list"],
        &["run", "ops", "a", "me", "--", "true"],
    ] {
        let o = on(&dev, args).output()?;
        assert!(fails(&o, 5).contains("is a device"), "{args:?}");
    }
    let beside: Vec<String> = std::fs::read_dir(db.dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(beside, vec!["null.db".to_owned()]);
    Ok(())
}

/// A command that is stopped (here it stops itself; in a terminal, reading
/// from it stops it with SIGTTIN) kept SIGINT pending: Ctrl-C on `run`
/// was passed on and did nothing, and run kept the lease for ever. Run now
/// continues the group after passing a signal on, as a shell's `kill`
/// does.
#[test]
fn a_stopped_command_ends_when_run_is_interrupted() -> R {
    let db = TempDb::new();
    let pidfile = db.dir.path().join("command.pid");
    let script = format!(
        "echo $$ > '{}'; kill -STOP $$; echo resumed",
        pidfile.display()
    );
    let mut run = on(&db.path, &["run", "ops", "stopped", "me", "--for", "3s"])
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    support::wait_for_file(&pidfile, Duration::from_secs(30));
    let command: u32 = loop {
        // Written, not only created.
        if let Ok(p) = std::fs::read_to_string(&pidfile)?.trim().parse() {
            break p;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(command) != Some('T') {
        assert!(Instant::now() < deadline, "the command never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    kill(pid(&run), Signal::SIGINT)?;
    let status = wait_at_most(&mut run, Duration::from_secs(30))?;
    kill_leftovers(&db.dir.path().to_string_lossy());
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(130)),
        "run ended with its command, killed by SIGINT (None: run was still there after 30 s)"
    );
    Ok(())
}

/// In a terminal, a command that read its standard input (a script's
/// "continue? [y/N]") was stopped by SIGTTIN, since its process group is
/// not the terminal's: it never ran again, and run kept the lease for it,
/// silently, for ever. It now reads an empty input. Runs `run` in a
/// pseudo-terminal made by util-linux's `script`; skipped without it.
#[test]
fn a_command_that_reads_the_terminal_gets_an_empty_input_instead_of_stopping() -> R {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to make a terminal");
        return Ok(());
    }
    let db = TempDb::new();
    let line = format!(
        "'{}' --db '{}' run ops tty me --for 3s -- sh -c 'read -r answer; echo \"read:[$answer]\"'",
        env!("CARGO_BIN_EXE_leasehold"),
        db.path.display()
    );
    let mut script = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        // Held open: the terminal never sees an end of input.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = wait_at_most(&mut script, Duration::from_secs(30))?;
    kill_leftovers(&db.dir.path().to_string_lossy());
    let out = script.wait_with_output()?;
    let said = text(&out.stdout);
    assert!(
        status.is_some_and(|s| s.success()) && said.contains("read:[]"),
        "status {status:?} (None: still stopped after 30 s), output {said:?}"
    );
    Ok(())
}

/// What is not a terminal still reaches the command.
#[test]
fn run_still_hands_a_piped_input_to_its_command() -> R {
    use std::io::Write;
    let db = TempDb::new();
    let mut run = on(&db.path, &["run", "ops", "pipe", "me", "--for", "3s"])
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    run.stdin
        .take()
        .expect("stdin")
        .write_all(b"through the pipe\n")?;
    let out = run.wait_with_output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through the pipe\n");
    Ok(())
}

/// The demo's worker processes (children of `demo`), with their states.
fn workers_of(demo: u32) -> Vec<(u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == demo).then_some((p, state))
        })
        .collect()
}

/// A demo killed outright (SIGKILL, as `timeout -s KILL` or an OOM kill
/// would) while it paused a worker left that worker stopped for ever
/// (outside an interactive shell, nothing continues it). The kernel now
/// kills the demo's workers with it.
#[test]
fn a_demo_killed_outright_leaves_no_paused_worker_behind() -> R {
    let tmp = TempDb::new();
    let mut demo = bin()
        .args(["demo", "--short"])
        // Its temporary directory, inside this test's.
        .env("TMPDIR", tmp.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let paused = loop {
        if let Some((p, _)) = workers_of(demo.id()).into_iter().find(|(_, s)| *s == 'T') {
            break p;
        }
        if demo.try_wait()?.is_some() || Instant::now() > deadline {
            kill_leftovers(&tmp.dir.path().to_string_lossy());
            return Err("the demo ended before a worker was seen paused".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    demo.kill()?;
    demo.wait()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut gone = false;
    while Instant::now() < deadline {
        if matches!(state(paused), None | Some('Z' | 'X')) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_leftovers(&tmp.dir.path().to_string_lossy());
    assert!(
        gone,
        "the paused worker {paused} outlived the demo, stopped"
    );
    Ok(())
}

/// `export -o` into a directory, or where no directory is, exited 1 (an
/// I/O error) where `demo --svg` exits 5; the README counts a bad output
/// file as invalid input (5), and export now checks it first as the demo
/// does.
#[test]
fn export_to_a_path_that_cannot_be_a_file_is_invalid_input() -> R {
    let db = TempDb::new();
    assert!(on(&db.path, &["migrate"]).output()?.status.success());
    let dir = db.dir.path();
    let not_a_dir = dir.join("plain");
    std::fs::write(&not_a_dir, "")?;
    for output in [
        dir.to_path_buf(),
        dir.join("missing").join("out.jsonl"),
        not_a_dir.join("out.jsonl"),
    ] {
        let o = on(&db.path, &["export", "-o"]).arg(&output).output()?;
        let err = fails(&o, 5);
        assert!(err.contains("cannot write"), "{}: {err}", output.display());
    }
    Ok(())
}

/// The hidden temporary files `export -o FILE` writes beside FILE.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Ctrl-C (or SIGTERM) while `export -o` wrote its file left the whole
/// temporary file behind it (`.FILE.PID.0.tmp`, as big as the export,
/// hidden). It is now removed, the old file is left as it was, and the
/// command ends by the signal.
#[test]
fn an_export_stopped_by_a_signal_leaves_no_temporary_file() -> R {
    let db = TempDb::new();
    {
        let engine = leasehold::Engine::open(&db.path)?;
        let leases = (0..30_000)
            .map(|i| {
                Ok(leasehold::ExportedLease {
                    key: leasehold::Key::new("ops", format!("a-rather-long-lease-name-{i:06}"))?,
                    holder: Some("a-holder-with-a-long-name".into()),
                    epoch: 1,
                    remaining: Some(Duration::from_secs(3600)),
                })
            })
            .collect::<Result<Vec<_>, leasehold::Error>>()?;
        let snapshot = leasehold::Snapshot {
            taken_at: leasehold::chrono::Utc::now(),
            leases,
            pins: Vec::new(),
        };
        engine.import(&snapshot, Duration::from_secs(3600))?;
    }
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("leases.jsonl");
    std::fs::write(&out, "the old export\n")?;
    // Catch the export while its temporary file exists: stop it there
    // (SIGSTOP), then send SIGTERM and let it go on.
    for _attempt in 0..50 {
        let mut export = on(&db.path, &["export", "-o"])
            .arg(&out)
            .stderr(Stdio::null())
            .spawn()?;
        let caught = loop {
            if !temporaries(out_dir.path()).is_empty() {
                kill(pid(&export), Signal::SIGSTOP)?;
                break !temporaries(out_dir.path()).is_empty();
            }
            if export.try_wait()?.is_some() {
                break false;
            }
        };
        if !caught {
            let _ = kill(pid(&export), Signal::SIGCONT);
            export.wait()?;
            std::fs::write(&out, "the old export\n")?;
            for t in temporaries(out_dir.path()) {
                std::fs::remove_file(out_dir.path().join(t))?;
            }
            continue;
        }
        kill(pid(&export), Signal::SIGTERM)?;
        kill(pid(&export), Signal::SIGCONT)?;
        let status = wait_at_most(&mut export, Duration::from_secs(30))?;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(Signal::SIGTERM as i32),
            "{status:?}"
        );
        assert_eq!(temporaries(out_dir.path()), Vec::<String>::new());
        assert_eq!(std::fs::read_to_string(&out)?, "the old export\n");
        return Ok(());
    }
    Err("never caught the export while it wrote its temporary file".into())
}

/// An import of one lease line repeated 200,000 times printed a summary
/// line of 1.6 MB (every duplicate's line number, joined in memory as
/// strings, and built as JSON even without `--json`); it names the first
/// few and counts the rest.
#[test]
fn an_import_of_many_repeated_lines_says_so_in_a_short_line() -> R {
    use std::io::Write;
    let db = TempDb::new();
    let n = 200_000;
    let line =
        r#"{"lease":{"namespace":"ops","name":"a","holder":"h","epoch":3,"expires_in_ms":2500}}"#;
    let mut input = String::from(
        "{\"leasehold_export\":1,\"schema\":3,\"taken_at\":\"2026-11-25T14:00:00.000Z\"}\n",
    );
    for _ in 0..n {
        input.push_str(line);
        input.push('\n');
    }
    input.push_str(&format!("{{\"end\":{{\"leases\":{n},\"pins\":0}}}}\n"));
    let mut import = on(&db.path, &["import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = import.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = import.wait_with_output()?;
    writer.join().expect("writer")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.len() < 1000, "{} bytes", said.len());
    assert!(
        said.contains("skipped 199999 duplicate lines")
            && said.contains("(lines 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, and 199989 more)"),
        "{said}"
    );
    Ok(())
}

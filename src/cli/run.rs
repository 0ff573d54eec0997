//! `run`: a command gated by a lease.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use leasehold::{Engine, Key};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{CliError, Output, parse_duration};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lease's namespace.
    namespace: String,
    /// The lease's name.
    name: String,
    /// Who holds it while the command runs.
    holder: String,
    /// The lease's duration; it is renewed when half is left.
    #[arg(long = "for", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// If someone else holds the lease, wait for it instead of failing.
    #[arg(long)]
    wait: bool,
    /// How long the command has to exit after SIGTERM before SIGKILL; it
    /// must be shorter than half of --for (the command is stopped that long,
    /// plus a tenth, before the lease could lapse).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

enum Happened {
    Exited(ExitStatus),
    Lost,
    Signal(i32),
}

fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

pub fn run(db: &Path, args: RunArgs, out: Output) -> Result<u8, CliError> {
    let engine = Engine::open(db)?;
    let key = Key::new(args.namespace.clone(), args.name.clone())?;
    if args.duration < Duration::from_millis(2) {
        return Err(CliError::Invalid("--for must be at least 2ms".into()));
    }
    // The command is stopped a safety margin before the lease could lapse,
    // and must be dead (SIGKILL after the grace period) before it does.
    let guarantee = args.duration / 2;
    let slack = (args.grace / 10).max(Duration::from_millis(100));
    let margin = args.grace + slack;
    if margin >= guarantee {
        return Err(CliError::Invalid(format!(
            "--grace {} leaves no time: it must be shorter than half of --for ({}) minus {}",
            super::leases::human(args.grace),
            super::leases::human(args.duration),
            super::leases::human(slack)
        )));
    }
    // Two runs as the same holder would share one tenure (a claim by the
    // holder is an extension): refuse, or wait for the other to finish.
    if let Some(lease) = engine.lease(&key)? {
        if lease.holder() == Some(args.holder.as_str()) {
            if !args.wait {
                return Err(CliError::Denied(format!(
                    "{key} is already held by {} (another run as {}?); a tenure is never shared",
                    args.holder, args.holder
                )));
            }
            engine.block_until_released(&key)?;
        }
    }
    if !args.wait {
        // A definite answer (with the holder's name) before starting anything.
        engine.claim(&key, &args.holder, args.duration)?;
    }
    // Once the lease is lost the command is stopped, and must not resume
    // under a new tenure: the tracker does not claim again.
    let tracker = engine
        .tracker(&key, &args.holder)
        .guarantee(guarantee)
        .safety_margin(margin)
        .reclaim(false)
        .build()?;
    if !tracker.wait_leader().wait() {
        return Err(CliError::Failed(format!("stopped before leading {key}")));
    }
    let Some(token) = tracker.token() else {
        return Err(CliError::Failed(format!(
            "lost {key} before the command could start"
        )));
    };
    let epoch = token.epoch().unwrap_or_default();
    out.say(format!(
        "leasehold: holding {key} as {} (epoch {epoch})",
        args.holder
    ));
    let lost = tracker.wait_minion();

    // Catch the signals that would otherwise kill us and orphan the child
    // (the lease would then only expire instead of being released) before
    // the child exists. SIGINT from a terminal reaches the child directly
    // (same process group), so it is caught but not passed on.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let spawned = Command::new(program)
        .args(rest)
        .env("LEASEHOLD_NAMESPACE", key.namespace())
        .env("LEASEHOLD_NAME", key.name())
        .env("LEASEHOLD_HOLDER", &args.holder)
        .env("LEASEHOLD_EPOCH", epoch.to_string())
        .env("LEASEHOLD_DB", db)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // Give the lease back at once, and exit as a shell would.
            tracker.stop();
            eprintln!("leasehold: cannot run {}: {e}", program.to_string_lossy());
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));

    let (tx, events) = mpsc::channel();
    // Set once the child is reaped: its pid may then be reused, so nothing
    // may signal it any more.
    let reaped = Arc::new(AtomicBool::new(false));
    {
        let tx = tx.clone();
        let reaped = Arc::clone(&reaped);
        std::thread::spawn(move || {
            let status = child.wait();
            reaped.store(true, Ordering::Release);
            let _ = tx.send(status.map(Happened::Exited));
        });
    }
    {
        let tx = tx.clone();
        let lost = lost.clone();
        std::thread::spawn(move || {
            if lost.wait() {
                let _ = tx.send(Ok(Happened::Lost));
            }
        });
    }
    let signal_handle = signals.handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(Ok(Happened::Signal(sig))).is_err() {
                return;
            }
        }
    });

    let mut stopping = false;
    let status = loop {
        match events.recv().expect("the child thread reports") {
            Ok(Happened::Exited(status)) => break status,
            Ok(Happened::Signal(sig)) if sig == SIGINT => {}
            Ok(Happened::Signal(sig)) => {
                if let (Ok(sig), false) = (Signal::try_from(sig), reaped.load(Ordering::Acquire)) {
                    let _ = kill(pid, sig);
                }
            }
            Ok(Happened::Lost) if !stopping => {
                stopping = true;
                eprintln!(
                    "leasehold: lost {key} (epoch {epoch}); stopping the command (SIGTERM, SIGKILL after {})",
                    super::leases::human(args.grace)
                );
                let _ = kill(pid, Signal::SIGTERM);
                let grace = args.grace;
                let reaped = Arc::clone(&reaped);
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    if !reaped.load(Ordering::Acquire) {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                });
            }
            Ok(Happened::Lost) => {}
            Err(e) => return Err(CliError::Failed(format!("waiting for the command: {e}"))),
        }
    };
    signal_handle.close();
    tracker.stop();
    match exit_code(status) {
        // A command that exits cleanly after losing its lease did not finish
        // its job under the lease: say so.
        0 if stopping => Err(CliError::NotHeld(format!(
            "lost {key} (epoch {epoch}) while the command ran; it stopped cleanly"
        ))),
        code => Ok(code),
    }
}

//! `run`: a command gated by a lease.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;

use leasehold::{Engine, Error, Key, Tenure};
use nix::sys::signal::{Signal, killpg};
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
    /// If anyone holds the lease (the same holder included: a tenure is
    /// never shared), wait for it instead of failing.
    #[arg(long)]
    wait: bool,
    /// How long the command has to exit after SIGTERM before SIGKILL. The
    /// command is stopped that long, plus a tenth (at least 100ms), before
    /// the lease could lapse, which must fit in half of --for. Default:
    /// 10s, or two thirds of half of --for if that is less.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    grace: Option<Duration>,
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
    let grace = args
        .grace
        .unwrap_or_else(|| Duration::from_secs(10).min(guarantee * 2 / 3));
    let slack = (grace / 10).max(Duration::from_millis(100));
    let margin = grace + slack;
    if margin >= guarantee {
        return Err(CliError::Invalid(format!(
            "{}--grace {} leaves no time: it and a tenth of it (at least 100ms), {} in all, must fit in half of --for ({})",
            if args.grace.is_none() {
                "the default "
            } else {
                ""
            },
            super::leases::human(grace),
            super::leases::human(margin),
            super::leases::human(guarantee)
        )));
    }
    let tenure = claim_new(&engine, &key, &args)?;
    let epoch = tenure.epoch();
    // Once the lease is lost the command is stopped, and must not resume
    // under a new tenure: the tracker does not claim again. Its first claim
    // extends the tenure just begun.
    let tracker = engine
        .tracker(&key, &args.holder)
        .guarantee(guarantee)
        .safety_margin(margin)
        .reclaim(false)
        .build()?;
    let leading = tracker.wait_leader().wait();
    let token = tracker
        .token()
        .filter(|t| leading && t.epoch() == Some(epoch));
    let Some(token) = token else {
        tracker.stop();
        return Err(CliError::NotHeld(format!(
            "lost {key} (epoch {epoch}) before the command could start"
        )));
    };
    out.say(format!(
        "leasehold: holding {key} as {} (epoch {epoch})",
        args.holder
    ));
    let lost = tracker.wait_minion();

    // Catch the signals that would otherwise kill us and orphan the command
    // (the lease would then only expire instead of being released) before
    // it exists, and pass them on to it.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let spawned = Command::new(program)
        .args(rest)
        .env("LEASEHOLD_NAMESPACE", key.namespace())
        .env("LEASEHOLD_NAME", key.name())
        .env("LEASEHOLD_HOLDER", &args.holder)
        .env("LEASEHOLD_EPOCH", epoch.to_string())
        .env("LEASEHOLD_DB", db)
        // Its own process group, so that stopping it stops whatever it
        // started too (a shell script's children).
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // Give the lease back at once, and exit as a shell would.
            tracker.stop();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            out.notice(
                "failed",
                code,
                &format!("cannot run {}: {e}", program.to_string_lossy()),
            );
            return Ok(code);
        }
    };
    let group = Group(Pid::from_raw(i32::try_from(child.id()).expect("pid fits")));

    let (tx, events) = mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().map(Happened::Exited));
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
            Ok(Happened::Signal(sig)) => {
                if let Ok(sig) = Signal::try_from(sig) {
                    group.signal(sig);
                }
            }
            Ok(Happened::Lost) if !stopping => {
                stopping = true;
                out.notice(
                    "not_held",
                    4,
                    &format!(
                        "lost {key} (epoch {epoch}); stopping the command (SIGTERM, SIGKILL after {})",
                        super::leases::human(grace)
                    ),
                );
                group.signal(Signal::SIGTERM);
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    group.signal(Signal::SIGKILL);
                });
            }
            Ok(Happened::Lost) => {}
            Err(e) => return Err(CliError::Failed(format!("waiting for the command: {e}"))),
        }
    };
    // Whatever the command left running in its group must not outlive the
    // lease: stop it before the lease is given back.
    group.end(grace);
    signal_handle.close();
    // A command that exits cleanly after losing its lease did not finish its
    // job under the lease, even if the loss was not noticed yet: say so.
    let code = exit_code(status);
    let lost = code == 0
        && (stopping
            || match token.check() {
                Ok(()) => false,
                Err(Error::GuardFailed { .. }) => true,
                Err(e) => {
                    tracker.stop();
                    return Err(e.into());
                }
            });
    tracker.stop();
    if lost {
        return Err(CliError::NotHeld(format!(
            "lost {key} (epoch {epoch}) while the command ran; it stopped cleanly"
        )));
    }
    Ok(code)
}

/// Begins a new tenure for the holder ([`Engine::claim_new`]). Refused —
/// or, with `--wait`, waited for — while anyone holds the lease, the same
/// holder included: two runs as one holder must not share a tenure.
fn claim_new(engine: &Engine, key: &Key, args: &RunArgs) -> Result<Tenure, CliError> {
    loop {
        match engine.claim_new(key, &args.holder, args.duration) {
            Ok(tenure) => return Ok(tenure),
            Err(Error::ClaimDenied { .. }) if args.wait => {
                engine.block_until_released(key)?;
            }
            Err(Error::ClaimDenied { current_holder, .. }) if current_holder == args.holder => {
                return Err(CliError::Denied(format!(
                    "{key} is already held by {0} (another run as {0}?); a tenure is never shared",
                    args.holder
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The command's process group (its id is the command's pid).
#[derive(Clone, Copy)]
struct Group(Pid);

impl Group {
    /// Signals every process of the group, if any is left.
    fn signal(self, sig: Signal) {
        let _ = killpg(self.0, sig);
    }

    fn alive(self) -> bool {
        killpg(self.0, None).is_ok()
    }

    /// Stops what is left of the group once the command has exited:
    /// SIGTERM, then SIGKILL after `grace`. Gives up waiting a second after
    /// SIGKILL (a zombie nobody reaps counts as alive).
    fn end(self, grace: Duration) {
        if !self.alive() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let wait = |limit: Duration| {
            let began = Instant::now();
            while self.alive() && began.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait(grace);
        if self.alive() {
            self.signal(Signal::SIGKILL);
            wait(Duration::from_secs(1));
        }
    }
}

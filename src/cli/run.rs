//! `run`: a command gated by a lease.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};

use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;

use leasehold::chrono::{DateTime, Utc};
use leasehold::engine::{Engine, LeaseTracker, Tenure};
use leasehold::{Backend, Error, GuardSql, Key};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{CliError, Db, Output, parse_duration, print, watcher};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lease's namespace.
    namespace: String,
    /// The lease's name.
    name: String,
    /// Who holds it while the command runs.
    holder: String,
    /// The lease's duration; it is renewed when half is left. It must be
    /// longer than twice the grace plus a tenth of it (at least 100ms):
    /// over 600ms with the default grace, over 200ms with --grace 0.
    #[arg(long = "for", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// If anyone holds the lease (the same holder included: a tenure is
    /// never shared), wait for it instead of failing.
    #[arg(long)]
    wait: bool,
    /// How long the command has to exit after SIGTERM before SIGKILL. The
    /// command gets SIGTERM that long, plus a tenth (at least 100ms),
    /// before the lease could lapse, which must fit in half of --for.
    /// Default: 10s, or a third of --for if that is less.
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
    /// The watcher stopped the command: no later deadline came in time.
    WatcherStopped,
}

fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

/// How the command ended, for a notice.
fn how_it_ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("it exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(Signal::SIGKILL) => "it was killed by SIGKILL".to_owned(),
            Ok(s) => format!("it was stopped by {s}"),
            Err(_) => format!("it was stopped by signal {sig}"),
        },
        _ => format!("it ended ({status})"),
    }
}

/// When the command is stopped, relative to the lease.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Timing {
    /// Half of `--for`: the tracker's guarantee; renewals come when this
    /// much of the lease is left.
    guarantee: Duration,
    /// SIGTERM to SIGKILL.
    grace: Duration,
    /// SIGKILL to the end of the lease: a tenth of the grace, at least
    /// 100 ms.
    slack: Duration,
}

impl Timing {
    const MIN_SLACK: Duration = Duration::from_millis(100);
    const MAX_DEFAULT_GRACE: Duration = Duration::from_secs(10);
    /// The shortest `--for` (exclusive) with the default grace. Up to 3 s
    /// the default grace is a third of `--for` and the slack 100 ms, and
    /// twice their sum stays under `--for` only above 600 ms; above 3 s it
    /// always does (a third plus a thirtieth, or 11 s from 30 s on).
    const DEFAULT_FLOOR: Duration = Duration::from_millis(600);

    fn margin(grace: Duration) -> Duration {
        // Saturating: a `--grace` near `Duration::MAX` is refused as too
        // long for `--for`, not a panic.
        grace.saturating_add((grace / 10).max(Timing::MIN_SLACK))
    }

    /// The shortest `--for` (exclusive) for a `--grace` (or the default).
    fn floor(grace: Option<Duration>) -> Duration {
        grace.map_or(Timing::DEFAULT_FLOOR, |g| {
            Timing::margin(g).saturating_mul(2)
        })
    }

    /// The timing of `--for duration` and `--grace`: the command is sent
    /// SIGTERM grace + slack before the lease could lapse and SIGKILL
    /// slack before it, and both must come in the lease's second half
    /// (after the renewal that failed).
    fn of(duration: Duration, grace: Option<Duration>) -> Result<Timing, CliError> {
        let guarantee = duration / 2;
        let chosen = grace.unwrap_or_else(|| Timing::MAX_DEFAULT_GRACE.min(duration / 3));
        let margin = Timing::margin(chosen);
        if margin.saturating_mul(2) >= duration || margin >= guarantee {
            let human = super::leases::human;
            return Err(CliError::Invalid(match grace {
                None => format!(
                    "--for {} is too short: with the default --grace (a third of --for, at most 10s) it must be longer than {}, so that the command gets SIGTERM, and SIGKILL after the grace, a tenth of the grace (at least 100ms) before the lease could lapse, all in its second half",
                    human(duration),
                    human(Timing::DEFAULT_FLOOR)
                ),
                Some(g) => format!(
                    "--for {} is too short: with --grace {} it must be longer than {}, twice {} (the grace plus a tenth of it, at least 100ms), which must fit in half of --for",
                    human(duration),
                    human(g),
                    human(Timing::floor(grace)),
                    human(margin)
                ),
            }));
        }
        Ok(Timing {
            guarantee,
            grace: chosen,
            slack: margin - chosen,
        })
    }

    fn margin_total(self) -> Duration {
        self.grace + self.slack
    }
}

pub fn run(db: &Db, args: RunArgs, out: Output) -> Result<u8, CliError> {
    let timing = Timing::of(args.duration, args.grace)?;
    let key = Key::new(args.namespace.clone(), args.name.clone())?;
    match db {
        Db::Sqlite(path) => {
            let engine = leasehold::Engine::open(path)?;
            // The command may change directory: it gets the database's
            // absolute path (canonical now that the engine has opened, or
            // created, it).
            let path = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path))?;
            hold(
                &engine,
                &[("LEASEHOLD_DB", path.into_os_string())],
                &|key: &Key, holder: &str, epoch| GuardSql::sqlite(key, holder, Some(epoch)),
                &key,
                timing,
                args,
                out,
            )
        }
        Db::Postgres { url, schema } => {
            let engine = super::open_pg(url, schema, false)?;
            // The connection string as given: the user's own, password and
            // all, for the command to connect as run did.
            hold(
                &engine,
                &[
                    ("LEASEHOLD_DB", OsString::from(url)),
                    ("LEASEHOLD_SCHEMA", OsString::from(schema)),
                ],
                &|key: &Key, holder: &str, epoch| {
                    GuardSql::postgres(schema, key, holder, Some(epoch))
                },
                &key,
                timing,
                args,
                out,
            )
        }
    }
}

/// How `run` writes the guard of a tenure (epoch) for its command.
type GuardText<'a> = &'a dyn Fn(&Key, &str, u64) -> leasehold::Result<GuardSql>;

/// Holds `key` on `engine` while the command runs, which gets `env` (where
/// the database is) and the guard of its tenure besides the lease's
/// variables.
fn hold<B: Backend>(
    engine: &Engine<B>,
    env: &[(&str, OsString)],
    guard: GuardText<'_>,
    key: &Key,
    timing: Timing,
    args: RunArgs,
    out: Output,
) -> Result<u8, CliError> {
    let Timing {
        guarantee, grace, ..
    } = timing;
    let key = key.clone();
    // What the guard needs is checked before anything is claimed.
    guard(&key, &args.holder, 1)?;
    let tenure = claim_new(engine, &key, &args)?;
    let epoch = tenure.epoch();
    let guard = guard(&key, &args.holder, epoch)?;
    // Once the lease is lost the command is stopped, and must not resume
    // under a new tenure: the tracker does not claim again. Its first claim
    // extends the tenure just begun.
    let tracker = engine
        .tracker(&key, &args.holder)
        .guarantee(guarantee)
        .safety_margin(timing.margin_total())
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
    // Everything of leasehold's own goes to stderr: stdout is the
    // command's (`run … -- pg_dump > dump.sql`).
    if !out.quiet && !out.json {
        print::err_line(&format!(
            "leasehold: holding {key} as {} (epoch {epoch})",
            args.holder
        ));
    }
    let lost = tracker.wait_minion();

    // Catch the signals that would otherwise kill us and orphan the command
    // (the lease would then only expire instead of being released) before
    // it exists, and pass them on to it.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (tx, events) = mpsc::channel();

    // The watcher first: the command joins its process group, so it is
    // watched from its first instruction, and stopped in time even if this
    // process dies or freezes.
    let mut watcher = match Watcher::spawn(timing, tx.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracker.stop();
            return Err(CliError::Failed(format!(
                "cannot start the watcher that stops the command in time: {e}"
            )));
        }
    };
    watcher.update(&tracker, engine);
    if watcher.sent.is_none() {
        // No guarantee to give the watcher: the lease was just lost.
        watcher.finish(timing);
        tracker.stop();
        return Err(CliError::NotHeld(format!(
            "lost {key} (epoch {epoch}) before the command could start"
        )));
    }
    let group = Group(watcher.pgid);

    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let spawned = Command::new(program)
        .args(rest)
        .env("LEASEHOLD_NAMESPACE", key.namespace())
        .env("LEASEHOLD_NAME", key.name())
        .env("LEASEHOLD_HOLDER", &args.holder)
        .env("LEASEHOLD_EPOCH", epoch.to_string())
        .env("LEASEHOLD_GUARD_STATEMENT", guard.statement())
        .env("LEASEHOLD_GUARD_PREDICATE", guard.predicate())
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The watcher's process group, so that stopping it stops whatever
        // it started too (a shell script's children).
        .process_group(watcher.pgid.as_raw())
        // That group is not the terminal's foreground group: reading from
        // the terminal would stop the command (SIGTTIN) for ever while run
        // kept the lease. It reads an empty input instead.
        .stdin(if std::io::stdin().is_terminal() {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // Give the lease back at once, and exit as a shell would.
            let watcher_gone = watcher.has_exited();
            watcher.finish(timing);
            tracker.stop();
            if watcher_gone {
                return Err(CliError::Failed(
                    "the watcher ended before the command could start".into(),
                ));
            }
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

    // Each renewal moves the watcher's deadline: look for one this often,
    // and often enough that it reaches the watcher well before the
    // watcher would act (its SIGTERM comes guarantee - margin after the
    // renewal was due).
    let gap = guarantee.saturating_sub(timing.margin_total());
    let poll = (guarantee / 10)
        .min(gap / 4)
        .clamp(Duration::from_millis(1), Duration::from_secs(1));
    let mut seen = Seen::default();
    let handle = |event: Happened, seen: &mut Seen| -> Option<ExitStatus> {
        match event {
            Happened::Exited(status) => return Some(status),
            Happened::Signal(sig) => {
                if let Ok(sig) = Signal::try_from(sig) {
                    group.signal(sig);
                }
            }
            Happened::Lost if !seen.stopping => {
                seen.stopping = true;
                seen.loss = true;
                seen.run_acted = true;
                out.notice(
                    "not_held",
                    4,
                    &format!(
                        "lost {key} (epoch {epoch}); stopping the command (SIGTERM, SIGKILL after {})",
                        super::leases::human(grace)
                    ),
                );
                // The watcher does the same by its deadline; this is belt
                // and braces.
                group.signal(Signal::SIGTERM);
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    group.signal(Signal::SIGKILL);
                });
            }
            Happened::WatcherStopped if !seen.stopping => {
                seen.stopping = true;
                out.notice(
                    "not_held",
                    4,
                    &format!(
                        "the lease on {key} (epoch {epoch}) was not confirmed to the watcher in time; it is stopping the command (SIGTERM, SIGKILL after {})",
                        super::leases::human(grace)
                    ),
                );
            }
            Happened::Lost => seen.loss = true,
            Happened::WatcherStopped => {}
        }
        None
    };
    let status = loop {
        let event = match events.recv_timeout(poll) {
            Ok(Ok(event)) => Some(event),
            Ok(Err(e)) => {
                watcher.finish(timing);
                group.end(grace);
                tracker.stop();
                return Err(CliError::Failed(format!("waiting for the command: {e}")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                unreachable!("the signal thread keeps a sender")
            }
        };
        watcher.update(&tracker, engine);
        if let Some(status) = event.and_then(|e| handle(e, &mut seen)) {
            break status;
        }
    };
    // What was noticed by the time the command ended counts (a `run` that
    // was stopped finds all of it at once).
    while let Ok(Ok(event)) = events.try_recv() {
        if let Happened::Lost = event {
            seen.loss = true;
        }
    }
    // Lost while it ran? Decided now, before the rest of its group is
    // stopped (meanwhile the lease is still renewed). Whatever its status,
    // a command that lost its lease did not finish its job under it.
    let lost = seen.loss
        || match token.check() {
            Ok(()) => false,
            Err(Error::GuardFailed { .. }) => true,
            Err(e) => {
                watcher.finish(timing);
                group.end(grace);
                tracker.stop();
                return Err(e.into());
            }
        };
    // Whatever the command left running in its group must not outlive the
    // lease: the watcher stops it and exits; then, belt and braces, what
    // is still there is stopped here, before the lease is given back.
    // Once it has exited, all it said has been read: whether it stopped the
    // command at a deadline run did not move in time (run was paused or
    // slow), even if the lease was still held when run looked.
    let watcher_stopped = watcher.finish(timing);
    group.end(grace);
    signal_handle.close();
    tracker.stop();
    let how = how_it_ended(status);
    if lost {
        return Err(CliError::NotHeld(format!(
            "lost {key} (epoch {epoch}) while the command ran; {how}{}",
            if watcher_stopped && !seen.run_acted {
                " (the watcher stopped it: the lease was not confirmed in time)"
            } else {
                ""
            }
        )));
    }
    if watcher_stopped {
        return Err(CliError::NotHeld(format!(
            "{key} (epoch {epoch}) was not confirmed to the watcher in time (was run paused or slow?), so it stopped the command before the lease could lapse; {how}"
        )));
    }
    Ok(exit_code(status))
}

/// What `run` saw while its command ran.
#[derive(Default)]
struct Seen {
    /// The command was told to stop (by run or by the watcher).
    stopping: bool,
    /// The tracker lost the lease.
    loss: bool,
    /// Run saw the loss before the watcher stopped the command.
    run_acted: bool,
}

/// Begins a new tenure for the holder ([`Engine::claim_new`]). Refused —
/// or, with `--wait`, waited for — while anyone holds the lease, the same
/// holder included: two runs as one holder must not share a tenure.
fn claim_new<B: Backend>(
    engine: &Engine<B>,
    key: &Key,
    args: &RunArgs,
) -> Result<Tenure<B>, CliError> {
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

/// The watcher process ([`super::watcher`]): the leader of the command's
/// process group, told each new end of the lease's guarantee.
struct Watcher {
    child: Child,
    stdin: Option<ChildStdin>,
    pgid: Pid,
    /// The last `lease_until` sent.
    sent: Option<DateTime<Utc>>,
    /// Reads what the watcher says; ends when it exits, with whether it
    /// stopped the command at a deadline.
    reader: Option<std::thread::JoinHandle<bool>>,
}

impl Watcher {
    fn spawn(
        timing: Timing,
        events: mpsc::Sender<std::io::Result<Happened>>,
    ) -> std::io::Result<Watcher> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("__run-watcher")
            .arg("--grace-ns")
            .arg(timing.grace.as_nanos().to_string())
            .arg("--slack-ns")
            .arg(timing.slack.as_nanos().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // It never writes there: a background process writing to a
            // terminal could be sent SIGTTOU over and over.
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let pgid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        let mut ready = String::new();
        if stdout.read_line(&mut ready).is_err() || ready.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("it did not start"));
        }
        let reader = std::thread::spawn(move || {
            let mut stopped = false;
            for line in stdout.lines().map_while(Result::ok) {
                if line.trim() == "deadline" {
                    stopped = true;
                    let _ = events.send(Ok(Happened::WatcherStopped));
                }
            }
            stopped
        });
        Ok(Watcher {
            child,
            stdin,
            pgid,
            sent: None,
            reader: Some(reader),
        })
    }

    /// Sends the end of the lease's guarantee if it moved (a renewal), as
    /// an absolute time on the watcher's clock.
    fn update<B: Backend>(&mut self, tracker: &LeaseTracker<B>, engine: &Engine<B>) {
        let Some(until) = tracker.lease_until() else {
            return;
        };
        if self.sent == Some(until) {
            return;
        }
        // The clock first, then engine time: a pause in between makes the
        // deadline earlier, never later.
        let now = watcher::clock_ns();
        let left = (until - engine.now()).num_nanoseconds().unwrap_or(i64::MAX);
        let deadline = now.saturating_add(left);
        if let Some(stdin) = &mut self.stdin {
            // A watcher that is gone has stopped the command already (or
            // was killed; `run` then stops the group itself at the end).
            let _ = writeln!(stdin, "{deadline}").and_then(|()| stdin.flush());
        }
        self.sent = Some(until);
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Closes the pipe, so that the watcher stops what is left of the
    /// group and exits, and waits for it, at most the grace and slack and
    /// a second; a watcher still there is killed. Returns whether it had
    /// stopped the command at a deadline.
    fn finish(&mut self, timing: Timing) -> bool {
        drop(self.stdin.take());
        let until = Instant::now() + timing.margin_total() + Duration::from_secs(1);
        while !self.has_exited() {
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Its stdout is closed now: the reader ends.
        self.reader
            .take()
            .is_some_and(|r| r.join().unwrap_or(false))
    }
}

/// The command's process group (its id is the watcher's pid).
#[derive(Clone, Copy)]
struct Group(Pid);

impl Group {
    /// Signals every process of the group, if any is left, then continues
    /// it (as a shell's `kill` does): a member that was stopped (SIGTTIN,
    /// for reading from the terminal) would otherwise keep the signal
    /// pending, and run would keep the lease for it, for ever.
    fn signal(self, sig: Signal) {
        let _ = killpg(self.0, sig);
        if sig != Signal::SIGKILL {
            let _ = killpg(self.0, Signal::SIGCONT);
        }
    }

    /// Stops what is left of the group: SIGTERM, then SIGKILL after
    /// `grace`. Normally the watcher has done it already.
    fn end(self, grace: Duration) {
        if !watcher::any_left(self.0, None) {
            return;
        }
        self.signal(Signal::SIGTERM);
        let grace = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        let until = watcher::clock_ns().saturating_add(grace);
        if !watcher::wait_empty(self.0, None, until) {
            watcher::kill_all(self.0, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor stated is the floor enforced, for the default grace and a
    /// few explicit ones, at every millisecond.
    #[test]
    fn the_stated_floor_is_the_real_one() {
        let ms = Duration::from_millis;
        for grace in [
            None,
            Some(ms(0)),
            Some(ms(50)),
            Some(ms(1000)),
            Some(ms(10_000)),
        ] {
            let floor = Timing::floor(grace);
            for d in (1..=40_000).map(ms) {
                assert_eq!(
                    Timing::of(d, grace).is_ok(),
                    d > floor,
                    "--for {d:?} --grace {grace:?} (floor {floor:?})"
                );
            }
        }
        assert_eq!(Timing::floor(None), ms(600));
        assert_eq!(Timing::floor(Some(ms(0))), ms(200));
    }

    #[test]
    fn the_default_grace_is_a_third_of_the_lease_up_to_ten_seconds() {
        let t = Timing::of(Duration::from_secs(3), None).expect("ok");
        assert_eq!(
            (t.grace, t.slack),
            (Duration::from_secs(1), Duration::from_millis(100))
        );
        let t = Timing::of(Duration::from_secs(60), None).expect("ok");
        assert_eq!(
            (t.grace, t.slack),
            (Duration::from_secs(10), Duration::from_secs(1))
        );
    }
}

//! The hidden `__run-watcher` subcommand: stops `run`'s command before its
//! lease could lapse, whatever happens to `run` itself (killed, stopped,
//! wedged).
//!
//! `run` spawns the watcher first, as the leader of a new process group,
//! and then the command as a member of that group: the group exists
//! before the command does, so there is no moment when a command runs
//! unwatched. The watcher lives outside `run`'s process group and ignores
//! SIGINT, SIGHUP and SIGTERM (which `run` forwards to the group) and the
//! terminal's stop signals.
//!
//! Protocol, on the watcher's stdin: one line per deadline, the end of the
//! lease's guarantee as an absolute time in nanoseconds on [`clock_ns`]'s
//! clock (never a relative duration: a pause between computing and sending
//! it would move it later). The watcher
//!
//! - sends SIGTERM to the group at deadline − (grace + slack) and SIGKILL at
//!   deadline − slack, unless a later deadline came first;
//! - on EOF of its stdin (`run` ended, normally or not) sends SIGTERM at
//!   once, and SIGKILL after the grace, never later than deadline − slack;
//! - then exits, once no other live process is left in its group.
//!
//! On its stdout it tells `run` "ready" when its signal handlers are in
//! place, and "deadline" if it stopped the command because no later
//! deadline came in time.
//!
//! What escapes it: a descendant that leaves the group (`setsid`,
//! `setpgid`), and a SIGSTOP or SIGKILL of the watcher itself.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{Signal, kill, killpg};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::{Pid, getpgrp, getpid};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU};

use super::CliError;

#[derive(Debug, Args)]
pub struct WatcherArgs {
    /// How long the command has between SIGTERM and SIGKILL, in ns.
    #[arg(long)]
    grace_ns: u64,
    /// How long before the deadline SIGKILL is sent, in ns.
    #[arg(long)]
    slack_ns: u64,
}

/// Now, in nanoseconds, on the clock deadlines are given in. On Linux it is
/// CLOCK_BOOTTIME: monotonic like CLOCK_MONOTONIC, but it also counts the
/// time a suspended machine slept, as the wall clock that leases are
/// measured in does (after a resume, a deadline that passed meanwhile is
/// past, not still ahead).
pub fn clock_ns() -> i64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let id = ClockId::CLOCK_BOOTTIME;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let id = ClockId::CLOCK_MONOTONIC;
    let t = clock_gettime(id).expect("the monotonic clock reads");
    t.tv_sec()
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec())
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The live processes of group `pgid` other than `except`, read from
/// `/proc` (zombies are not counted: they run nothing, and an orphan's
/// zombie may never be reaped). `None` where `/proc` cannot be read.
pub fn members(pgid: Pid, except: Option<Pid>) -> Option<Vec<Pid>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if except.is_some_and(|e| e.as_raw() == pid) {
            continue;
        }
        // "pid (comm) state ppid pgrp …"; comm may hold spaces and ')'.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        if pgrp == Some(pgid.as_raw()) && state != "Z" && state != "X" {
            found.push(Pid::from_raw(pid));
        }
    }
    Some(found)
}

/// Whether group `pgid` has a live process other than `except`.
pub fn any_left(pgid: Pid, except: Option<Pid>) -> bool {
    match members(pgid, except) {
        Some(m) => !m.is_empty(),
        // No /proc: the kernel's answer counts zombies too.
        None => killpg(pgid, None).is_ok(),
    }
}

/// Waits until `pgid` has no live member but `except`, or until the
/// clock reads `until`. Returns whether the group is empty.
pub fn wait_empty(pgid: Pid, except: Option<Pid>, until: i64) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if !any_left(pgid, except) {
            return true;
        }
        let now = clock_ns();
        if now >= until {
            return false;
        }
        let left = Duration::from_nanos(u64::try_from(until - now).unwrap_or(0));
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILLs every live member of `pgid` but `me` (`None`: the whole
/// group). Processes found are killed one by one, so that the caller
/// outlives them; if new ones keep appearing (a process forking as fast as
/// they are killed), the whole group is killed at once, the caller
/// included, as the last resort. Gives up a second after every process it
/// found was sent SIGKILL (one in uninterruptible sleep dies when it
/// wakes; it runs nothing more meanwhile).
pub fn kill_all(pgid: Pid, me: Option<Pid>) {
    let mut killed: HashSet<Pid> = HashSet::new();
    let mut rounds = 0;
    let began = clock_ns();
    loop {
        let Some(live) = members(pgid, me) else {
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        };
        if live.is_empty() {
            return;
        }
        let fresh: Vec<Pid> = live.into_iter().filter(|p| !killed.contains(p)).collect();
        if fresh.is_empty() {
            if clock_ns() - began > ns(Duration::from_secs(1)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        rounds += 1;
        if rounds > 3 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        for pid in fresh {
            let _ = kill(pid, Signal::SIGKILL);
            killed.insert(pid);
        }
    }
}

enum Cause {
    /// No later deadline came before deadline − (grace + slack).
    Deadline(i64),
    /// `run` closed the pipe, or died.
    Eof(Option<i64>),
}

/// The watcher process.
pub fn watcher(args: WatcherArgs) -> Result<u8, CliError> {
    // Signals for the group are meant for the command; the terminal's stop
    // signals must not stop the watcher with it. A handler that does
    // nothing, since a safe way to ignore them outright is not at hand.
    let ignored = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGHUP, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU] {
        signal_hook::flag::register(sig, Arc::clone(&ignored))?;
    }
    let me = getpid();
    let group = getpgrp();
    let grace = i64::try_from(args.grace_ns).unwrap_or(i64::MAX);
    let slack = i64::try_from(args.slack_ns).unwrap_or(i64::MAX);
    let mut to_run = std::io::stdout();
    // Errors are ignored: `run` may be gone; the watcher's work goes on.
    let mut tell = |what: &str| {
        let _ = writeln!(to_run, "{what}").and_then(|()| to_run.flush());
    };
    tell("ready");

    let (tx, deadlines) = mpsc::channel::<Option<i64>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Ok(deadline) = line.trim().parse::<i64>()
                && tx.send(Some(deadline)).is_err()
            {
                return;
            }
        }
        let _ = tx.send(None);
    });

    // Wakes at least this often, so that a deadline is met even if the
    // wait's own clock (CLOCK_MONOTONIC) stood still while the machine
    // was suspended.
    let slice = Duration::from_millis(100);
    let mut deadline: Option<i64> = None;
    let cause = loop {
        let now = clock_ns();
        let term_at = deadline.map(|d| d.saturating_sub(grace).saturating_sub(slack));
        if let (Some(d), Some(t)) = (deadline, term_at)
            && now >= t
        {
            break Cause::Deadline(d);
        }
        let wait = term_at.map_or(slice, |t| {
            Duration::from_nanos(u64::try_from(t - now).unwrap_or(0)).min(slice)
        });
        match deadlines.recv_timeout(wait) {
            Ok(Some(d)) => deadline = Some(d),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => break Cause::Eof(deadline),
            Err(RecvTimeoutError::Timeout) => {}
        }
    };
    let now = clock_ns();
    let kill_at = match cause {
        Cause::Deadline(d) => {
            tell("deadline");
            d.saturating_sub(slack)
        }
        Cause::Eof(d) => {
            let after_grace = now.saturating_add(grace);
            d.map_or(after_grace, |d| after_grace.min(d.saturating_sub(slack)))
        }
    };
    if any_left(group, Some(me)) {
        // The watcher's own handler makes this SIGTERM a no-op for it. A
        // stopped member acts on it only once continued.
        let _ = killpg(group, Signal::SIGTERM);
        let _ = killpg(group, Signal::SIGCONT);
        if !wait_empty(group, Some(me), kill_at) {
            kill_all(group, Some(me));
        }
    }
    Ok(0)
}

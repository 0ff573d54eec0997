//! The orchestrator: a [`Workload`] (built by [`WorkloadBuilder`]) starts
//! worker processes on one file, strikes them with nemeses, and reports
//! what it did ([`RunReport`]: workers, strikes) next to the checker's
//! verdict.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use super::WorkerConfig;
use super::database::RunDatabase;
use crate::testing::{CheckOptions, CheckReport, Rng, wall_ms};
use crate::{Error, Key, MAX_DURATION};
use chrono::TimeDelta;
use nix::sys::signal::{Signal, kill};

/// Faults injected by a [`Workload`]. Their timings are set on the
/// [`WorkloadBuilder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Nemesis {
    /// SIGKILL a worker at a random moment, then start a replacement. Half
    /// the time the leader is killed inside a write transaction whose guard
    /// passed; otherwise, after a random 0–3 ms, the leader three times in
    /// four, or any worker.
    Kill,
    /// SIGSTOP the leader in the middle of its work (between its leadership
    /// check and its write) for [`WorkloadBuilder::pause`] (by default
    /// longer than its lease), then SIGCONT.
    Pause,
    /// Step a worker's clock forward or back by up to
    /// [`WorkloadBuilder::clock_step`] (by default two leases).
    ClockStep,
    /// Hold the database's write lock for [`WorkloadBuilder::lock_hold`].
    LockHolder,
    /// Inside every worker, all along: check out every pooled connection
    /// every [`WorkloadBuilder::pool_interval`] for
    /// [`WorkloadBuilder::pool_hold`].
    PoolExhaustion,
    /// Cut the leader's network link (its [`Proxy`](super::Proxy)) for
    /// [`WorkloadBuilder::net_cut`], half the time while it is inside a
    /// guarded write transaction, then heal it. Needs
    /// [`WorkloadBuilder::network`].
    NetCut,
    /// Close every connection of the leader's link at once. Needs
    /// [`WorkloadBuilder::network`].
    NetReset,
    /// Delay the leader's traffic by [`WorkloadBuilder::net_delay`] (by
    /// default longer than the lease) for [`WorkloadBuilder::net_cut`],
    /// then heal. Needs [`WorkloadBuilder::network`].
    NetDelay,
    /// End the leader's server sessions (`pg_terminate_backend`):
    /// PostgreSQL runs only.
    Terminate,
    /// Stop the server at once (`pg_ctl -m immediate`), keep it down for
    /// [`WorkloadBuilder::server_down`], start it again. Needs
    /// [`WorkloadBuilder::server`].
    ServerRestart,
}

/// A length of time drawn afresh each time it is used: from `min` up to,
/// not including, `max`, in whole milliseconds, uniformly (a span whose
/// `min` equals its `max` is always that length). Every draw takes one
/// number from the workload's random source whatever the span, so changing
/// a span does not change the other random choices of a seed.
///
/// ```
/// use std::time::Duration;
/// use leasehold::testing::Span;
///
/// let ms = Duration::from_millis;
/// let fixed = Span::exactly(ms(750));
/// assert_eq!((fixed.min(), fixed.max()), (ms(750), ms(750)));
/// let jittered = Span::between(ms(100), ms(400));
/// assert_eq!((jittered.min(), jittered.max()), (ms(100), ms(400)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    min: Duration,
    max: Duration,
}

impl Span {
    /// Always `length`.
    pub const fn exactly(length: Duration) -> Span {
        Span {
            min: length,
            max: length,
        }
    }

    /// From `min` up to (not including) `max`. [`WorkloadBuilder::build`]
    /// refuses a span whose `min` exceeds its `max`.
    pub const fn between(min: Duration, max: Duration) -> Span {
        Span { min, max }
    }

    /// The shortest length drawn.
    pub const fn min(&self) -> Duration {
        self.min
    }

    /// The bound lengths stay below (or, for [`Span::exactly`], the
    /// length).
    pub const fn max(&self) -> Duration {
        self.max
    }

    pub(super) fn draw(&self, rng: &mut Rng) -> Duration {
        let width = self.max.saturating_sub(self.min).as_millis();
        let width = u64::try_from(width).unwrap_or(u64::MAX);
        self.min + Duration::from_millis(rng.below(width))
    }
}

/// The key workers contend for unless [`WorkloadBuilder::key`] says
/// otherwise: `checker/leader`.
///
/// # Panics
///
/// Never: the key is a constant that passes validation.
pub fn workload_key() -> Key {
    Key::new("checker", "leader").expect("a valid key")
}

/// A multi-process workload on one file: workers claim one lease, renew,
/// release now and then, and write rows only through guarded transactions,
/// recording everything; nemeses strike meanwhile; the history checker
/// ([`check_recorded`](super::check_recorded)) judges.
///
/// Built with [`Workload::builder`] (see [`WorkloadBuilder`] for the
/// settings, their defaults and an example), then [`run`](Workload::run)
/// as often as wanted, each time in a fresh directory.
#[derive(Clone, Debug)]
pub struct Workload {
    database: RunDatabase,
    network: Option<super::Upstream>,
    #[cfg(feature = "postgres")]
    server: Option<ServerHandle>,
    net_cut: Span,
    net_delay: Duration,
    server_down: Span,
    workers: u32,
    duration: Duration,
    lease: Duration,
    guard: bool,
    nemeses: Vec<Nemesis>,
    seed: u64,
    verbose: bool,
    key: Key,
    interval: Span,
    pause: Span,
    lock_hold: Span,
    clock_step: Duration,
    pool_interval: Span,
    pool_hold: Span,
}

/// Builds a [`Workload`]. Every setting has a default, chosen so that a
/// workload that sets only its nemeses is a short, meaningful run:
///
/// | setting | default |
/// |---|---|
/// | [`workers`](Self::workers) | 3 processes at any time |
/// | [`duration`](Self::duration) | 10 s of nemeses |
/// | [`lease`](Self::lease) | 250 ms |
/// | [`guard`](Self::guard) | on |
/// | [`key`](Self::key) | [`workload_key()`] (`checker/leader`) |
/// | [`nemeses`](Self::nemeses) | none |
/// | [`seed`](Self::seed) | `0x1ea5e` |
/// | [`verbose`](Self::verbose) | off |
/// | [`interval`](Self::interval) between strikes | 100–400 ms |
/// | [`pause`](Self::pause) (SIGSTOP) | 2 × lease to 2 × lease + 200 ms |
/// | [`lock_hold`](Self::lock_hold) | ½ lease to 1½ leases |
/// | [`clock_step`](Self::clock_step) | up to ± 2 × lease |
/// | [`pool_interval`](Self::pool_interval) | 100–400 ms |
/// | [`pool_hold`](Self::pool_hold) | 50–250 ms |
///
/// Defaults given in leases follow [`lease`](Self::lease), whatever the
/// order of the calls.
///
/// # Example: pause the leader for three times its lease
///
/// Workers are processes the workload starts with the command it is given,
/// usually this very program run again: so the program's `main` must call
/// [`serve_worker`](super::serve_worker) before anything else, which turns
/// a process started as a worker into one (and never returns in it). In an
/// integration test, the same is done by a test that the command re-runs
/// (the conformance suite, `tests/conformance/`, has one named `worker`).
///
/// ```no_run
/// use std::process::Command;
/// use std::time::Duration;
///
/// use leasehold::Key;
/// use leasehold::testing::{self, Fault, Nemesis, Span, Workload};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     if testing::serve_worker() {
///         return Ok(()); // never reached in a worker: it runs until killed
///     }
///     let lease = Duration::from_millis(200);
///     let workload = Workload::builder()
///         .workers(3)
///         .key(Key::new("billing", "invoice-runner")?)
///         .lease(lease)
///         .nemeses([Nemesis::Pause])
///         .pause(Span::exactly(lease * 3))
///         .duration(Duration::from_secs(5))
///         .build()?;
///
///     let dir = tempfile::tempdir()?;
///     let exe = std::env::current_exe()?;
///     let report = workload.run_observed(dir.path(), &|| Command::new(&exe), &mut |strike| {
///         // Called while the leader is stopped.
///         if let (Fault::Pause { length }, Some(t)) = (&strike.fault, &strike.target) {
///             println!("paused {} (pid {}) for {length:?}", t.holder, t.pid);
///         }
///     })?;
///
///     for w in &report.workers {
///         println!("{} pid {}: {:?}", w.holder, w.pid, w.end);
///     }
///     assert!(report.strikes.iter().all(|s| s.target.as_ref().is_some_and(|t| t.leader)));
///     assert!(report.check.passed(), "{:#?}", report.check.violations);
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until built"]
pub struct WorkloadBuilder {
    database: RunDatabase,
    network: Option<super::Upstream>,
    #[cfg(feature = "postgres")]
    server: Option<ServerHandle>,
    net_cut: Option<Span>,
    net_delay: Option<Duration>,
    server_down: Option<Span>,
    workers: u32,
    duration: Duration,
    lease: Duration,
    guard: bool,
    nemeses: Vec<Nemesis>,
    seed: u64,
    verbose: bool,
    key: Key,
    interval: Span,
    pause: Option<Span>,
    lock_hold: Option<Span>,
    clock_step: Option<Duration>,
    pool_interval: Span,
    pool_hold: Span,
}

impl Default for WorkloadBuilder {
    fn default() -> WorkloadBuilder {
        WorkloadBuilder {
            database: RunDatabase::Sqlite,
            network: None,
            #[cfg(feature = "postgres")]
            server: None,
            net_cut: None,
            net_delay: None,
            server_down: None,
            workers: 3,
            duration: Duration::from_secs(10),
            lease: Duration::from_millis(250),
            guard: true,
            nemeses: Vec::new(),
            seed: 0x1ea5e,
            verbose: false,
            key: workload_key(),
            interval: Span::between(Duration::from_millis(100), Duration::from_millis(400)),
            pause: None,
            lock_hold: None,
            clock_step: None,
            pool_interval: Span::between(Duration::from_millis(100), Duration::from_millis(400)),
            pool_hold: Span::between(Duration::from_millis(50), Duration::from_millis(250)),
        }
    }
}

impl WorkloadBuilder {
    /// The database the run uses: a SQLite file in the run's directory (the
    /// default), or a PostgreSQL schema.
    pub fn database(mut self, database: RunDatabase) -> WorkloadBuilder {
        self.database = database;
        self
    }

    /// Puts each worker behind a [`Proxy`](super::Proxy) of its own to
    /// `server` (the database server's TCP address, or its Unix socket), so
    /// that the network nemeses can cut, reset or delay one worker's link
    /// (PostgreSQL runs only; the run's connection string still serves the
    /// orchestrator).
    pub fn network(mut self, server: impl Into<super::Upstream>) -> WorkloadBuilder {
        self.network = Some(server.into());
        self
    }

    /// The server [`Nemesis::ServerRestart`] stops and starts (durable:
    /// `PgOptions::durable`, or acknowledged writes may vanish).
    #[cfg(feature = "postgres")]
    pub fn server(
        mut self,
        server: std::sync::Arc<std::sync::Mutex<super::PgServer>>,
    ) -> WorkloadBuilder {
        self.server = Some(ServerHandle(server));
        self
    }

    /// How long [`Nemesis::NetCut`] keeps a link cut, and
    /// [`Nemesis::NetDelay`] delays it. Default: one to three leases.
    pub fn net_cut(mut self, length: Span) -> WorkloadBuilder {
        self.net_cut = Some(length);
        self
    }

    /// The delay [`Nemesis::NetDelay`] adds to each chunk. Default: one and
    /// a half leases.
    pub fn net_delay(mut self, delay: Duration) -> WorkloadBuilder {
        self.net_delay = Some(delay);
        self
    }

    /// How long [`Nemesis::ServerRestart`] keeps the server down. Default:
    /// half a lease to one lease.
    pub fn server_down(mut self, down: Span) -> WorkloadBuilder {
        self.server_down = Some(down);
        self
    }

    /// Worker processes running at any time (a killed one is replaced).
    pub fn workers(mut self, workers: u32) -> WorkloadBuilder {
        self.workers = workers;
        self
    }

    /// How long the nemeses run (the workers are then stopped and the
    /// history checked).
    pub fn duration(mut self, duration: Duration) -> WorkloadBuilder {
        self.duration = duration;
        self
    }

    /// The lease duration workers claim and renew (at half of it).
    pub fn lease(mut self, lease: Duration) -> WorkloadBuilder {
        self.lease = lease;
        self
    }

    /// Whether workers' writes are guarded by their tenure's token. Turn it
    /// off to see the checker catch unguarded writes.
    pub fn guard(mut self, guard: bool) -> WorkloadBuilder {
        self.guard = guard;
        self
    }

    /// The key workers contend for (any valid [`Key`]).
    pub fn key(mut self, key: Key) -> WorkloadBuilder {
        self.key = key;
        self
    }

    /// The faults to inject, replacing any set before. At each strike one
    /// of them is chosen uniformly, so one listed twice strikes twice as
    /// often; [`Nemesis::PoolExhaustion`] is not chosen but runs all along.
    pub fn nemeses(mut self, nemeses: impl IntoIterator<Item = Nemesis>) -> WorkloadBuilder {
        self.nemeses = nemeses.into_iter().collect();
        self
    }

    /// Adds one fault to inject.
    pub fn nemesis(mut self, nemesis: Nemesis) -> WorkloadBuilder {
        self.nemeses.push(nemesis);
        self
    }

    /// The seed of every random choice (the orchestrator's, and mixed with
    /// each worker's process number, the workers').
    pub fn seed(mut self, seed: u64) -> WorkloadBuilder {
        self.seed = seed;
        self
    }

    /// Print a progress line every 10 s.
    pub fn verbose(mut self, verbose: bool) -> WorkloadBuilder {
        self.verbose = verbose;
        self
    }

    /// The time between one strike and the next (after the previous one
    /// ended).
    pub fn interval(mut self, interval: Span) -> WorkloadBuilder {
        self.interval = interval;
        self
    }

    /// How long [`Nemesis::Pause`] keeps the leader stopped.
    pub fn pause(mut self, pause: Span) -> WorkloadBuilder {
        self.pause = Some(pause);
        self
    }

    /// How long [`Nemesis::LockHolder`] holds the write lock once it has
    /// it (it waits for it at most one lease).
    pub fn lock_hold(mut self, hold: Span) -> WorkloadBuilder {
        self.lock_hold = Some(hold);
        self
    }

    /// The largest step of [`Nemesis::ClockStep`], forward or back: each
    /// step sets the worker's clock offset to a whole number of
    /// milliseconds drawn uniformly from `-max..=max`.
    pub fn clock_step(mut self, max: Duration) -> WorkloadBuilder {
        self.clock_step = Some(max);
        self
    }

    /// How often each worker tries to check out its whole pool under
    /// [`Nemesis::PoolExhaustion`].
    pub fn pool_interval(mut self, interval: Span) -> WorkloadBuilder {
        self.pool_interval = interval;
        self
    }

    /// How long it keeps the pool checked out.
    pub fn pool_hold(mut self, hold: Span) -> WorkloadBuilder {
        self.pool_hold = hold;
        self
    }

    /// The workload, with lease-relative defaults worked out.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for no workers, a lease that is zero or
    /// longer than [`MAX_DURATION`], a clock step longer than
    /// [`MAX_DURATION`], or a [`Span`] whose minimum exceeds its maximum.
    pub fn build(self) -> crate::Result<Workload> {
        if self.workers == 0 {
            return Err(Error::invalid(
                "workers",
                "0",
                "a workload needs at least one worker",
            ));
        }
        crate::core::key::duration_ms("lease", self.lease)?;
        let lease = self.lease;
        let pause = self.pause.unwrap_or(Span::between(
            lease * 2,
            lease * 2 + Duration::from_millis(200),
        ));
        let lock_hold = self
            .lock_hold
            .unwrap_or(Span::between(lease / 2, lease / 2 + lease));
        let clock_step = self.clock_step.unwrap_or(lease * 2);
        let net_cut = self.net_cut.unwrap_or(Span::between(lease, lease * 3));
        let net_delay = self.net_delay.unwrap_or(lease + lease / 2);
        let server_down = self.server_down.unwrap_or(Span::between(lease / 2, lease));
        let postgres = !matches!(self.database, RunDatabase::Sqlite);
        for nemesis in &self.nemeses {
            let missing = match nemesis {
                Nemesis::NetCut | Nemesis::NetReset | Nemesis::NetDelay
                    if self.network.is_none() =>
                {
                    Some("a network (WorkloadBuilder::network)")
                }
                Nemesis::Terminate if !postgres => Some("a PostgreSQL database"),
                #[cfg(feature = "postgres")]
                Nemesis::ServerRestart if self.server.is_none() => {
                    Some("a server (WorkloadBuilder::server)")
                }
                #[cfg(not(feature = "postgres"))]
                Nemesis::ServerRestart => Some("a server (feature postgres)"),
                _ => None,
            };
            if let Some(missing) = missing {
                return Err(Error::invalid(
                    "nemesis",
                    &format!("{nemesis:?}"),
                    format!("needs {missing}"),
                ));
            }
        }
        if self.network.is_some() && !postgres {
            return Err(Error::invalid(
                "network",
                "sqlite",
                "a network sits between workers and a server: PostgreSQL runs only",
            ));
        }
        if clock_step > MAX_DURATION {
            return Err(Error::invalid(
                "clock step",
                &format!("{clock_step:?}"),
                format!(
                    "exceeds the maximum of {} days",
                    MAX_DURATION.as_secs() / 86_400
                ),
            ));
        }
        for (what, span) in [
            ("interval", self.interval),
            ("pause", pause),
            ("lock hold", lock_hold),
            ("pool interval", self.pool_interval),
            ("pool hold", self.pool_hold),
            ("net cut", net_cut),
            ("server down", server_down),
        ] {
            if span.min > span.max {
                return Err(Error::invalid(
                    what,
                    &format!("{:?}..{:?}", span.min, span.max),
                    "its minimum exceeds its maximum",
                ));
            }
        }
        Ok(Workload {
            database: self.database,
            network: self.network,
            #[cfg(feature = "postgres")]
            server: self.server,
            net_cut,
            net_delay,
            server_down,
            workers: self.workers,
            duration: self.duration,
            lease,
            guard: self.guard,
            nemeses: self.nemeses,
            seed: self.seed,
            verbose: self.verbose,
            key: self.key,
            interval: self.interval,
            pause,
            lock_hold,
            clock_step,
            pool_interval: self.pool_interval,
            pool_hold: self.pool_hold,
        })
    }
}

/// The server of a run, shared with the caller (for Debug and Clone).
#[cfg(feature = "postgres")]
#[derive(Clone)]
struct ServerHandle(std::sync::Arc<std::sync::Mutex<super::PgServer>>);

#[cfg(feature = "postgres")]
impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgServer")
    }
}

/// What a [`Workload`] run did and found.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RunReport {
    /// The checker's verdict and counts. A worker that ended by itself
    /// (rather than by a nemesis or at the end) adds a violation.
    pub check: CheckReport,
    /// Faults injected, by kind: the [`Nemesis`] names, with kills inside
    /// a write transaction counted apart as `KillInTxn`, and
    /// `PoolExhaustion` counting the episodes workers reported.
    pub faults: BTreeMap<String, u64>,
    /// Worker processes started in all.
    pub processes: u32,
    /// Every worker process started, by process number.
    pub workers: Vec<WorkerRecord>,
    /// Every strike, in order (pool exhaustion, which runs inside the
    /// workers, is counted in [`faults`](Self::faults) only).
    pub strikes: Vec<Strike>,
}

impl RunReport {
    /// The worker with process number `proc`.
    pub fn worker(&self, proc: u32) -> Option<&WorkerRecord> {
        self.workers.iter().find(|w| w.proc == proc)
    }
}

/// One worker process of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerRecord {
    /// Its process number in the run (from 1; histories and rows name it).
    pub proc: u32,
    /// The holder it claims as: `w{proc}`.
    pub holder: String,
    /// Its operating system process id.
    pub pid: u32,
    /// When it was started, since the run began.
    pub started: Duration,
    /// When it was found ended, or ended, since the run began.
    pub ended: Duration,
    /// How it ended.
    pub end: WorkerEnd,
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEnd {
    /// SIGKILLed by [`Nemesis::Kill`].
    Killed,
    /// It exited by itself, with this status: a crash (its standard error
    /// is kept in `worker-{proc}.stderr` in the run's directory).
    Died(ExitStatus),
    /// Still running at the end of the run, then stopped.
    Stopped,
}

/// One fault injected by a nemesis.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Strike {
    /// What was done.
    pub fault: Fault,
    /// The worker struck; `None` for [`Fault::LockHeld`], which strikes
    /// the database.
    pub target: Option<Target>,
    /// When it struck (the signal was sent, the offset written, the lock
    /// taken), since the run began.
    pub at: Duration,
    /// The same moment on the wall clock, in milliseconds, as histories
    /// ([`Entry`](crate::testing::Entry)) record them.
    pub wall_ms: i64,
}

impl Strike {
    /// The nemesis that struck.
    pub fn nemesis(&self) -> Nemesis {
        match self.fault {
            Fault::Kill { .. } => Nemesis::Kill,
            Fault::Pause { .. } => Nemesis::Pause,
            Fault::ClockStep { .. } => Nemesis::ClockStep,
            Fault::LockHeld { .. } => Nemesis::LockHolder,
            Fault::NetCut { .. } => Nemesis::NetCut,
            Fault::NetReset => Nemesis::NetReset,
            Fault::NetDelay { .. } => Nemesis::NetDelay,
            Fault::Terminate { .. } => Nemesis::Terminate,
            Fault::ServerRestart { .. } => Nemesis::ServerRestart,
        }
    }
}

/// What a [`Strike`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// SIGKILL, then a replacement was started.
    Kill {
        /// Whether the worker had just said it was inside a write
        /// transaction whose guard passed.
        in_txn: bool,
    },
    /// SIGSTOP, then SIGCONT after `length` (or after the observer
    /// returned, if later).
    Pause {
        /// How long the worker was to stay stopped.
        length: Duration,
    },
    /// The worker's clock offset was set.
    ClockStep {
        /// The new offset from the system clock (positive: ahead).
        offset: TimeDelta,
    },
    /// The database's write lock was held by the orchestrator.
    LockHeld {
        /// How long it was to be held (or until the observer returned, if
        /// later).
        length: Duration,
    },
    /// The worker's link was cut, then healed after `length` (or after the
    /// observer returned, if later).
    NetCut {
        /// How long it was to stay cut.
        length: Duration,
        /// Whether the worker had just said it was inside a write
        /// transaction whose guard passed.
        in_txn: bool,
    },
    /// The worker's connections were closed.
    NetReset,
    /// The worker's traffic was delayed by `delay` for `length`.
    NetDelay {
        /// Each chunk's delay.
        delay: Duration,
        /// How long the delay lasted.
        length: Duration,
    },
    /// The worker's server sessions were ended.
    Terminate {
        /// How many.
        sessions: u32,
    },
    /// The server was stopped at once and started again.
    ServerRestart {
        /// How long it was to stay down.
        down: Duration,
    },
}

/// The worker a [`Strike`] hit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// Its process number.
    pub proc: u32,
    /// Its operating system process id.
    pub pid: u32,
    /// The holder it claims as: `w{proc}`.
    pub holder: String,
    /// Whether the lease row named it as holder when the nemesis chose its
    /// target (the lease may have run out a moment before).
    pub leader: bool,
}

impl Workload {
    /// A builder with every setting at its default (see [`WorkloadBuilder`]).
    pub fn builder() -> WorkloadBuilder {
        WorkloadBuilder::default()
    }

    /// The database the run uses.
    pub fn database(&self) -> &RunDatabase {
        &self.database
    }

    /// The same workload on another database.
    pub fn with_database(mut self, database: RunDatabase) -> Workload {
        self.database = database;
        self
    }

    /// Worker processes at any time.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// How long the nemeses run.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The lease duration workers claim.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether writes are guarded.
    pub fn guard(&self) -> bool {
        self.guard
    }

    /// The key workers contend for.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The faults injected.
    pub fn nemeses(&self) -> &[Nemesis] {
        &self.nemeses
    }

    /// The seed of the random choices.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether progress lines are printed.
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// The time between strikes.
    pub fn interval(&self) -> Span {
        self.interval
    }

    /// How long [`Nemesis::Pause`] stops the leader.
    pub fn pause(&self) -> Span {
        self.pause
    }

    /// How long [`Nemesis::LockHolder`] holds the write lock.
    pub fn lock_hold(&self) -> Span {
        self.lock_hold
    }

    /// The largest step of [`Nemesis::ClockStep`], either way.
    pub fn clock_step(&self) -> Duration {
        self.clock_step
    }

    /// How often workers exhaust their pools under
    /// [`Nemesis::PoolExhaustion`].
    pub fn pool_interval(&self) -> Span {
        self.pool_interval
    }

    /// How long they keep their pools checked out.
    pub fn pool_hold(&self) -> Span {
        self.pool_hold
    }

    /// The configuration [`run`](Workload::run) gives worker `proc` running
    /// in `dir`, for a test that starts (and kills) workers itself: put it
    /// in the worker's environment with [`WorkerConfig::set_env`]. The
    /// directory must hold a database with the writes table
    /// ([`create_writes_table`](super::create_writes_table)). Unlike `run`'s workers, such a worker
    /// does not watch its standard input: it runs until killed.
    pub fn worker_config(&self, dir: &Path, proc: u32) -> WorkerConfig {
        WorkerConfig {
            dir: dir.to_owned(),
            proc,
            key: self.key.clone(),
            lease: self.lease,
            guard: self.guard,
            seed: self.seed,
            database: self.database.for_worker(&format!("w{proc}"), None),
            pool_exhaustion: self
                .nemeses
                .contains(&Nemesis::PoolExhaustion)
                .then_some((self.pool_interval, self.pool_hold)),
            lifeline: false,
        }
    }

    /// Runs the workload in `dir`, which must not hold a database yet and
    /// receives the database (`db.sqlite`), the histories, each worker's
    /// standard error and, on failure, the merged history. Workers are
    /// started with `worker_command()`: a command that calls
    /// [`serve_worker`](super::serve_worker) first. The workload adds the
    /// worker's configuration to its environment and takes its standard
    /// streams: a worker prints its state on standard output for the
    /// nemeses to aim by, writes to `worker-{proc}.stderr`, and exits when
    /// its standard input closes, that is, if the orchestrator dies. It
    /// also puts each worker in a process group of its own, so that one
    /// paused when the orchestrator dies is sent SIGHUP and SIGCONT.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::AlreadyExists`] if `dir` holds a database; a
    /// process cannot be started; a file cannot be written or read. Workers
    /// still running are stopped whatever happens.
    pub fn run(
        &self,
        dir: &Path,
        worker_command: &dyn Fn() -> Command,
    ) -> std::io::Result<RunReport> {
        self.run_observed(dir, worker_command, &mut |_| {})
    }

    /// [`run`](Workload::run), calling `on_strike` at every strike as it
    /// happens, on the orchestrating thread: after a kill, while a paused
    /// worker is stopped (on Linux, once it has stopped: signals arrive
    /// asynchronously), after a clock step, while the write lock is held.
    /// The time `on_strike` takes counts toward a pause's or a lock's
    /// length; if it takes longer, the fault lasts until it returns.
    ///
    /// # Errors
    ///
    /// As [`run`](Workload::run).
    pub fn run_observed(
        &self,
        dir: &Path,
        worker_command: &dyn Fn() -> Command,
        on_strike: &mut dyn FnMut(&Strike),
    ) -> std::io::Result<RunReport> {
        self.database.prepare(dir)?;
        let mut rng = Rng::new(self.seed);
        let mut report = RunReport::default();
        let mut fleet = Fleet {
            workload: self,
            dir,
            command: worker_command,
            began: Instant::now(),
            running: Vec::new(),
            proxies: Vec::new(),
            records: Vec::new(),
            next_proc: 1,
            hogs: 0,
            died: Vec::new(),
        };
        for _ in 0..self.workers {
            fleet.spawn()?;
        }
        // Pool exhaustion runs all along inside every worker; the loop below
        // chooses among the other faults.
        let strikes: Vec<Nemesis> = self
            .nemeses
            .iter()
            .copied()
            .filter(|n| *n != Nemesis::PoolExhaustion)
            .collect();
        let mut last_print = Instant::now();
        while fleet.began.elapsed() < self.duration {
            std::thread::sleep(self.interval.draw(&mut rng));
            fleet.drain();
            fleet.replace_the_dead()?;
            if strikes.is_empty() {
                continue;
            }
            let nemesis = strikes[rng.below(strikes.len() as u64) as usize];
            let strike = match nemesis {
                Nemesis::Kill => {
                    let leader = fleet.leader();
                    let (i, in_txn) = match leader {
                        // Half the time, inside the leader's write
                        // transaction (it says when it is in one).
                        Some(i)
                            if rng.below(2) == 0 && fleet.await_line(i, "in txn", self.lease) =>
                        {
                            (i, true)
                        }
                        // Otherwise at a random moment, mostly the leader.
                        _ => {
                            std::thread::sleep(Duration::from_micros(rng.below(3000)));
                            let n = fleet.running.len() as u64;
                            let i = leader
                                .filter(|_| rng.below(4) != 0)
                                .unwrap_or_else(|| rng.below(n) as usize);
                            (i, false)
                        }
                    };
                    let strike = fleet.strike(Fault::Kill { in_txn }, Some(i), leader);
                    fleet.retire(i, WorkerEnd::Killed);
                    on_strike(&strike);
                    fleet.spawn()?;
                    strike
                }
                Nemesis::Pause => {
                    let Some(i) = fleet.leader() else {
                        continue;
                    };
                    // Wait until the leader is between its check and its
                    // write, then freeze it.
                    if !fleet.await_line(i, "working", self.lease) {
                        continue;
                    }
                    let length = self.pause.draw(&mut rng);
                    let pid = fleet.running[i].pid();
                    let stopped = Instant::now();
                    let strike = fleet.strike(Fault::Pause { length }, Some(i), Some(i));
                    let _ = kill(pid, Signal::SIGSTOP);
                    await_stop(pid);
                    on_strike(&strike);
                    std::thread::sleep(length.saturating_sub(stopped.elapsed()));
                    let _ = kill(pid, Signal::SIGCONT);
                    strike
                }
                Nemesis::ClockStep => {
                    let leader = fleet.leader();
                    let i = rng.below(fleet.running.len() as u64) as usize;
                    let span = self.clock_step.as_millis() as i64;
                    let offset = rng.below(2 * span as u64 + 1) as i64 - span;
                    let proc = fleet.running[i].proc;
                    let fault = Fault::ClockStep {
                        offset: TimeDelta::milliseconds(offset),
                    };
                    let strike = fleet.strike(fault, Some(i), leader);
                    std::fs::write(dir.join(format!("clock-{proc}")), offset.to_string())?;
                    on_strike(&strike);
                    strike
                }
                Nemesis::LockHolder => {
                    let length = self.lock_hold.draw(&mut rng);
                    let mut struck = None;
                    // Counted only when it got the lock.
                    let held =
                        self.database
                            .hold_lock(dir, &self.key, self.lease, length, &mut || {
                                let strike = fleet.strike(Fault::LockHeld { length }, None, None);
                                on_strike(&strike);
                                struck = Some(strike);
                            });
                    match struck {
                        Some(strike) if held => strike,
                        _ => continue,
                    }
                }
                Nemesis::NetCut | Nemesis::NetDelay => {
                    let Some(i) = fleet.leader() else {
                        continue;
                    };
                    // Half the cuts inside the leader's guarded write
                    // transaction; the rest between its check and its write.
                    let in_txn = nemesis == Nemesis::NetCut
                        && rng.below(2) == 0
                        && fleet.await_line(i, "in txn", self.lease);
                    if !in_txn && !fleet.await_line(i, "working", self.lease) {
                        continue;
                    }
                    let length = self.net_cut.draw(&mut rng);
                    let Some(proxy) = fleet.proxy(i) else {
                        continue;
                    };
                    let began = Instant::now();
                    let fault = if nemesis == Nemesis::NetCut {
                        proxy.cut();
                        Fault::NetCut { length, in_txn }
                    } else {
                        proxy.delay(self.net_delay);
                        Fault::NetDelay {
                            delay: self.net_delay,
                            length,
                        }
                    };
                    let strike = fleet.strike(fault, Some(i), Some(i));
                    on_strike(&strike);
                    std::thread::sleep(length.saturating_sub(began.elapsed()));
                    if let Some(proxy) = fleet.proxy(i) {
                        proxy.heal();
                    }
                    strike
                }
                Nemesis::NetReset => {
                    let Some(i) = fleet.leader() else {
                        continue;
                    };
                    let Some(proxy) = fleet.proxy(i) else {
                        continue;
                    };
                    proxy.reset();
                    let strike = fleet.strike(Fault::NetReset, Some(i), Some(i));
                    on_strike(&strike);
                    strike
                }
                Nemesis::Terminate => {
                    let Some(i) = fleet.leader() else {
                        continue;
                    };
                    let holder = format!("w{}", fleet.running[i].proc);
                    let sessions = self.database.terminate(&holder);
                    let strike = fleet.strike(Fault::Terminate { sessions }, Some(i), Some(i));
                    on_strike(&strike);
                    strike
                }
                Nemesis::ServerRestart => {
                    let down = self.server_down.draw(&mut rng);
                    let leader = fleet.leader();
                    let Some(strike) = self.restart_server(down, &mut || {
                        let strike = fleet.strike(Fault::ServerRestart { down }, None, leader);
                        on_strike(&strike);
                        strike
                    })?
                    else {
                        continue;
                    };
                    strike
                }
                Nemesis::PoolExhaustion => unreachable!("filtered out above"),
            };
            let name = match strike.fault {
                Fault::Kill { in_txn: true } => "KillInTxn".to_owned(),
                _ => format!("{:?}", strike.nemesis()),
            };
            *report.faults.entry(name).or_default() += 1;
            report.strikes.push(strike);
            if self.verbose && last_print.elapsed() > Duration::from_secs(10) {
                last_print = Instant::now();
                println!(
                    "  {:>4}s: faults {:?}, {} processes started",
                    fleet.began.elapsed().as_secs(),
                    report.faults,
                    fleet.next_proc - 1
                );
            }
        }
        fleet.drain();
        fleet.stop_all();
        report.processes = fleet.next_proc - 1;
        if self.nemeses.contains(&Nemesis::PoolExhaustion) {
            report
                .faults
                .insert(format!("{:?}", Nemesis::PoolExhaustion), fleet.hogs);
        }
        report.workers = std::mem::take(&mut fleet.records);
        report.workers.sort_by_key(|w| w.proc);
        let died = std::mem::take(&mut fleet.died);
        drop(fleet);
        report.check = self.database.check(
            dir,
            &self.key,
            CheckOptions {
                clock_steps: self.nemeses.contains(&Nemesis::ClockStep),
            },
        )?;
        // Workers that ended without being killed: a crash the checker
        // would not see otherwise.
        report.check.violations.extend(died);
        Ok(report)
    }
}

impl Workload {
    /// Stops the run's server at once, calls `struck` while it is down,
    /// keeps it down for `down`, and starts it again; `None` without a
    /// server.
    fn restart_server(
        &self,
        down: Duration,
        struck: &mut dyn FnMut() -> Strike,
    ) -> std::io::Result<Option<Strike>> {
        #[cfg(feature = "postgres")]
        if let Some(ServerHandle(server)) = &self.server {
            let mut server = server.lock().unwrap_or_else(|e| e.into_inner());
            server.crash()?;
            let stopped = Instant::now();
            let strike = struck();
            std::thread::sleep(down.saturating_sub(stopped.elapsed()));
            server.restart()?;
            return Ok(Some(strike));
        }
        let _ = (down, struck);
        Ok(None)
    }
}

/// Returns once process `pid`, a child, has stopped (or ended): a signal
/// is delivered asynchronously, and a pause's observer must run while the
/// worker is stopped. The child's status is left for [`Child::wait`].
/// Where `waitid` is missing, returns at once.
fn await_stop(pid: nix::unistd::Pid) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        let flags = WaitPidFlag::WSTOPPED | WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(pid), flags) {}
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = pid;
}

/// A worker process running.
struct Running {
    proc: u32,
    child: Child,
    /// Its standard output, line by line.
    lines: Receiver<String>,
    started: Duration,
}

impl Running {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }
}

/// The workers of one run: starts, watches and stops them, and records
/// each one's life. Dropping it stops whatever still runs, so an error or
/// a panicking observer leaves no worker behind.
struct Fleet<'a> {
    workload: &'a Workload,
    dir: &'a Path,
    command: &'a dyn Fn() -> Command,
    began: Instant,
    running: Vec<Running>,
    /// Each worker's link to the server, by process number, when the run
    /// has a network.
    proxies: Vec<(u32, super::Proxy)>,
    records: Vec<WorkerRecord>,
    next_proc: u32,
    /// Episodes of pool exhaustion, as the workers reported them.
    hogs: u64,
    /// Workers that ended by themselves, described.
    died: Vec<String>,
}

impl Fleet<'_> {
    fn spawn(&mut self) -> std::io::Result<()> {
        let proc = self.next_proc;
        let mut config = self.workload.worker_config(self.dir, proc);
        if let Some(server) = &self.workload.network {
            let proxy = super::Proxy::start(server.clone())?;
            config.database = self
                .workload
                .database
                .for_worker(&format!("w{proc}"), Some(proxy.addr()));
            self.proxies.push((proc, proxy));
        }
        // We keep the write end of its standard input: if this process
        // dies, the worker reads end of file and exits. One paused then
        // cannot read, but alone in its process group it is orphaned by
        // our death, and the kernel sends it SIGHUP and SIGCONT.
        config.lifeline = true;
        let stderr = File::create(self.stderr_path(proc))?;
        let mut cmd = (self.command)();
        config.set_env(&mut cmd)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        let mut child = cmd.spawn()?;
        self.next_proc += 1;
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.running.push(Running {
            proc,
            child,
            lines,
            started: self.began.elapsed(),
        });
        Ok(())
    }

    fn stderr_path(&self, proc: u32) -> PathBuf {
        self.dir.join(format!("worker-{proc}.stderr"))
    }

    /// Reads every worker's pending lines.
    fn drain(&mut self) {
        let mut hogs = 0;
        for w in &self.running {
            while let Ok(line) = w.lines.try_recv() {
                hogs += u64::from(line == "hogging");
            }
        }
        self.hogs += hogs;
    }

    /// Waits up to `within` for worker `i` to print a line ending in
    /// `what`.
    fn await_line(&mut self, i: usize, what: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.running[i].lines.recv_timeout(left) {
                Ok(line) => {
                    self.hogs += u64::from(line == "hogging");
                    if line.ends_with(what) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// The index of the worker the lease row names as holder.
    fn leader(&self) -> Option<usize> {
        let holder = self
            .workload
            .database
            .holder(self.dir, self.workload.key())?;
        self.running
            .iter()
            .position(|w| format!("w{}", w.proc) == holder)
    }

    /// The link of worker `i`, if the run has a network.
    fn proxy(&self, i: usize) -> Option<&super::Proxy> {
        let proc = self.running[i].proc;
        self.proxies
            .iter()
            .find(|(p, _)| *p == proc)
            .map(|(_, proxy)| proxy)
    }

    /// A strike at worker `i` (if any), happening now.
    fn strike(&self, fault: Fault, i: Option<usize>, leader: Option<usize>) -> Strike {
        Strike {
            fault,
            target: i.map(|i| {
                let w = &self.running[i];
                Target {
                    proc: w.proc,
                    pid: w.child.id(),
                    holder: format!("w{}", w.proc),
                    leader: leader == Some(i),
                }
            }),
            at: self.began.elapsed(),
            wall_ms: wall_ms(),
        }
    }

    /// Ends worker `i` (`how`: [`WorkerEnd::Killed`] or
    /// [`WorkerEnd::Stopped`]) unless it ended by itself already, and
    /// records its life.
    fn retire(&mut self, i: usize, how: WorkerEnd) {
        let mut w = self.running.remove(i);
        self.proxies.retain(|(p, _)| *p != w.proc);
        let end = match w.child.try_wait() {
            Ok(Some(status)) => WorkerEnd::Died(status),
            _ => {
                // SIGKILL ends a stopped process too; SIGCONT is for a
                // process group's other members, should it have any.
                let _ = kill(w.pid(), Signal::SIGCONT);
                let _ = w.child.kill();
                let _ = w.child.wait();
                how
            }
        };
        if let WorkerEnd::Died(status) = end {
            let said = std::fs::read_to_string(self.stderr_path(w.proc)).unwrap_or_default();
            let last = said.lines().rev().find(|l| !l.trim().is_empty());
            self.died.push(format!(
                "worker process {} (pid {}) ended by itself ({status}){}",
                w.proc,
                w.child.id(),
                last.map_or(String::new(), |l| format!(
                    "; its last words: {}",
                    l.chars().take(300).collect::<String>()
                ))
            ));
        }
        self.records.push(WorkerRecord {
            proc: w.proc,
            holder: format!("w{}", w.proc),
            pid: w.child.id(),
            started: w.started,
            ended: self.began.elapsed(),
            end,
        });
    }

    /// Replaces every worker that ended by itself.
    fn replace_the_dead(&mut self) -> std::io::Result<()> {
        for i in (0..self.running.len()).rev() {
            if let Ok(Some(_)) = self.running[i].child.try_wait() {
                // Recorded as died, with its status, whatever `how` says.
                self.retire(i, WorkerEnd::Stopped);
                self.spawn()?;
            }
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        while !self.running.is_empty() {
            self.retire(0, WorkerEnd::Stopped);
        }
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for w in &mut self.running {
            let _ = kill(w.pid(), Signal::SIGCONT);
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans draw what the hand-written formulas they replaced drew, from
    /// the same random stream: a seed replays as before.
    #[test]
    fn spans_draw_what_the_old_formulas_drew() {
        let lease = Duration::from_millis(250);
        let w = Workload::builder().lease(lease).build().expect("workload");
        let (mut a, mut b) = (Rng::new(99), Rng::new(99));
        for _ in 0..1000 {
            assert_eq!(
                w.interval().draw(&mut a),
                Duration::from_millis(100 + b.below(300))
            );
            assert_eq!(
                w.pause().draw(&mut a),
                lease * 2 + Duration::from_millis(b.below(200))
            );
            assert_eq!(
                w.lock_hold().draw(&mut a),
                lease / 2 + Duration::from_millis(b.below(250))
            );
        }
        let exactly = Span::exactly(Duration::from_micros(1500));
        let between = Span::between(Duration::from_millis(3), Duration::from_millis(5));
        for _ in 0..1000 {
            assert_eq!(exactly.draw(&mut a), Duration::from_micros(1500));
            let d = between.draw(&mut a);
            assert!(d >= between.min() && d < between.max(), "{d:?}");
        }
    }
}

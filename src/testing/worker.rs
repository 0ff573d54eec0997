//! The worker process's side of a [`Workload`](super::Workload): its
//! configuration, how it travels from the orchestrator (one environment
//! variable holding JSON), and the worker loop itself.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use super::database::{Recorded, RunDatabase, WorkerSide};
use super::workload::Span;
use crate::engine::{Engine, Tenure};
use crate::testing::{OffsetClock, Recorder, Rng};
use crate::{Error, Key};

/// The environment variable that tells a process it is a worker, and how.
/// Its format (JSON) is internal: orchestrator and worker are one build.
const ENV_WORKER: &str = "LEASEHOLD_CHECKER_WORKER";

/// What one worker process of a [`Workload`](super::Workload) is told: where
/// the database and histories are, its process number (its holder is
/// `w{proc}`), the key and lease it contends for, whether its writes are
/// guarded, its random seed and its share of the nemeses (pool exhaustion
/// runs inside each worker).
///
/// [`Workload::run`](super::Workload::run) makes one for every worker it
/// starts and passes it in the worker's environment ([`set_env`]);
/// [`Workload::worker_config`](super::Workload::worker_config) makes one for
/// a test that starts and kills workers itself. On the worker's side,
/// [`serve_worker`] (or [`from_env`] then [`serve`]) reads it back.
///
/// [`set_env`]: WorkerConfig::set_env
/// [`from_env`]: WorkerConfig::from_env
/// [`serve`]: WorkerConfig::serve
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub(super) database: RunDatabase,
    pub(super) dir: PathBuf,
    pub(super) proc: u32,
    pub(super) key: Key,
    pub(super) lease: Duration,
    pub(super) guard: bool,
    pub(super) seed: u64,
    /// Pool exhaustion: how often, and for how long, the worker checks out
    /// its whole pool.
    pub(super) pool_exhaustion: Option<(Span, Span)>,
    /// Whether the worker exits when its standard input reaches end of
    /// file, that is, when the orchestrator that holds the other end is
    /// gone (so a killed test run leaves no worker behind).
    pub(super) lifeline: bool,
}

/// The wire form of a [`WorkerConfig`]. The key travels as its two strings
/// (validated again on arrival), durations exactly (seconds and nanos).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    /// A PostgreSQL run's connection string and schema; SQLite without.
    #[serde(default)]
    postgres: Option<(String, String)>,
    dir: PathBuf,
    proc: u32,
    namespace: String,
    name: String,
    lease: Duration,
    guard: bool,
    seed: u64,
    pool_exhaustion: Option<WirePool>,
    lifeline: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePool {
    every: (Duration, Duration),
    hold: (Duration, Duration),
}

impl WorkerConfig {
    /// The directory holding the database (`db.sqlite`) and the histories.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The worker's process number (from 1, never reused within a run).
    pub fn proc(&self) -> u32 {
        self.proc
    }

    /// The holder name the worker claims as: `w{proc}`.
    pub fn holder(&self) -> String {
        format!("w{}", self.proc)
    }

    /// The key the worker contends for.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The lease duration it claims and renews.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether its writes are guarded by its tenure's token.
    pub fn guard(&self) -> bool {
        self.guard
    }

    /// The seed of its random choices (mixed with its process number).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Puts this configuration into `cmd`'s environment, so that the
    /// process it starts becomes this worker once it calls
    /// [`serve_worker`].
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::InvalidInput`] if the directory's path is not
    /// UTF-8 (the configuration travels as JSON).
    pub fn set_env(&self, cmd: &mut Command) -> std::io::Result<()> {
        cmd.env(ENV_WORKER, self.encode()?);
        Ok(())
    }

    /// The configuration this process was started with as a worker, or
    /// `None` if it was not started as one.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::InvalidData`] if the variable is present but
    /// unreadable (not UTF-8, not this build's format, an invalid key or
    /// lease).
    pub fn from_env() -> std::io::Result<Option<WorkerConfig>> {
        let Some(value) = std::env::var_os(ENV_WORKER) else {
            return Ok(None);
        };
        let value = value.into_string().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{ENV_WORKER} is not UTF-8"),
            )
        })?;
        WorkerConfig::decode(&value).map(Some)
    }

    fn encode(&self) -> std::io::Result<String> {
        let wire = Wire {
            postgres: match &self.database {
                RunDatabase::Sqlite => None,
                #[cfg(feature = "postgres")]
                RunDatabase::Postgres { url, schema } => Some((url.clone(), schema.clone())),
            },
            dir: self.dir.clone(),
            proc: self.proc,
            namespace: self.key.namespace().to_owned(),
            name: self.key.name().to_owned(),
            lease: self.lease,
            guard: self.guard,
            seed: self.seed,
            pool_exhaustion: self.pool_exhaustion.map(|(every, hold)| WirePool {
                every: (every.min(), every.max()),
                hold: (hold.min(), hold.max()),
            }),
            lifeline: self.lifeline,
        };
        serde_json::to_string(&wire).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("worker configuration for {}: {e}", self.dir.display()),
            )
        })
    }

    fn decode(value: &str) -> std::io::Result<WorkerConfig> {
        let invalid = |e: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{ENV_WORKER}: {e}"),
            )
        };
        let wire: Wire = serde_json::from_str(value).map_err(|e| invalid(e.to_string()))?;
        let key = Key::new(wire.namespace, wire.name).map_err(|e| invalid(e.to_string()))?;
        crate::core::key::duration_ms("lease", wire.lease).map_err(|e| invalid(e.to_string()))?;
        let database = match wire.postgres {
            None => RunDatabase::Sqlite,
            #[cfg(feature = "postgres")]
            Some((url, schema)) => RunDatabase::Postgres { url, schema },
            #[cfg(not(feature = "postgres"))]
            Some(_) => {
                return Err(invalid(
                    "a PostgreSQL run, in a build without PostgreSQL".into(),
                ));
            }
        };
        Ok(WorkerConfig {
            database,
            dir: wire.dir,
            proc: wire.proc,
            key,
            lease: wire.lease,
            guard: wire.guard,
            seed: wire.seed,
            pool_exhaustion: wire.pool_exhaustion.map(|p| {
                (
                    Span::between(p.every.0, p.every.1),
                    Span::between(p.hold.0, p.hold.1),
                )
            }),
            lifeline: wire.lifeline,
        })
    }

    /// Runs this worker until the process is killed: it claims the key as
    /// `w{proc}`, renews at half the lease, releases now and then, and
    /// writes rows of [`WRITES_TABLE`](super::WRITES_TABLE) through guarded
    /// transactions, recording everything in `history-{proc}.jsonl`. It
    /// prints `leader {epoch}`, `working` (between its leadership check and
    /// its write), `in txn` (inside a write transaction whose guard passed)
    /// and `hogging` (its whole pool checked out) on standard output, for
    /// the orchestrator's nemeses to aim by.
    ///
    /// # Panics
    ///
    /// If the database cannot be opened (other than busy) or the history
    /// file cannot be created: a worker that cannot record must not run.
    pub fn serve(&self) -> ! {
        if self.lifeline {
            // The orchestrator holds the other end of our standard input:
            // end of file means it is gone, and so should we be.
            std::thread::spawn(|| {
                let mut stdin = std::io::stdin();
                let mut buf = [0u8; 64];
                while let Ok(1..) = stdin.read(&mut buf) {}
                std::process::exit(0);
            });
        }
        match &self.database {
            RunDatabase::Sqlite => self.work::<crate::Sqlite>(),
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { .. } => self.work::<crate::postgres::Postgres>(),
        }
    }

    fn work<B: WorkerSide>(&self) -> ! {
        let WorkerConfig {
            database,
            dir,
            proc,
            key,
            lease,
            guard,
            seed,
            pool_exhaustion,
            lifeline: _,
        } = self;
        let (proc, lease, guard, seed) = (*proc, *lease, *guard, *seed);
        let clock = OffsetClock::new();
        // Opening may meet a held write lock (the lock-holder fault): retry.
        let engine: Engine<B> = loop {
            match B::open(database, dir, clock.clone(), lease / 2, POOL_SIZE) {
                Ok(engine) => break engine,
                Err(e) if e.is_transient() => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("worker engine: {e}"),
            }
        };
        let holder = self.holder();
        let mut rec = Recorder::create(dir, proc).expect("history file");
        let mut rng = Rng::new(seed ^ u64::from(proc) << 32);
        let offset_file = dir.join(format!("clock-{proc}"));
        let mut offset_checked = Instant::now() - Duration::from_secs(1);
        if let Some((every, hold)) = *pool_exhaustion {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ 0x5eed);
                loop {
                    std::thread::sleep(every.draw(&mut rng));
                    let held: Vec<_> = (0..POOL_SIZE)
                        .filter_map(|_| B::checkout(&engine))
                        .collect();
                    if held.len() == POOL_SIZE as usize {
                        // The whole pool is taken: an episode of exhaustion.
                        say("hogging");
                    }
                    std::thread::sleep(hold.draw(&mut rng));
                    drop(held);
                }
            });
        }
        let mut seq = 0u64;
        let mut tenure: Option<(Tenure<B>, Instant)> = None;
        loop {
            if offset_checked.elapsed() > Duration::from_millis(20) {
                offset_checked = Instant::now();
                if let Ok(text) = std::fs::read_to_string(&offset_file)
                    && let Ok(ms) = text.trim().parse::<i64>()
                {
                    clock.set_offset(TimeDelta::milliseconds(ms));
                }
            }
            let Some((t, since)) = tenure.take() else {
                let n = rec.invoke("claim", &holder, None, None, Some(lease));
                let started = Instant::now();
                match engine.claim(key, &holder, lease) {
                    Ok(t) => {
                        rec.ok(n, Some(t.epoch()));
                        say(&format!("leader {}", t.epoch()));
                        tenure = Some((t, started));
                    }
                    Err(e) => {
                        rec.fail(n, &e);
                        std::thread::sleep(Duration::from_millis(2 + rng.below(10)));
                    }
                }
                continue;
            };
            let elapsed = since.elapsed();
            // Believe in the tenure only while its guarantee (measured on
            // this process's monotonic clock from before the claim) lasts.
            if elapsed >= lease - lease / 10 {
                continue;
            }
            if elapsed >= lease / 2 {
                let n = rec.invoke("extend", &holder, Some(t.epoch()), None, Some(lease));
                let started = Instant::now();
                match engine.extend(&t, lease) {
                    Ok(t) => {
                        rec.ok(n, Some(t.epoch()));
                        tenure = Some((t, started));
                    }
                    Err(e) => {
                        rec.fail(n, &e);
                        if !matches!(e, Error::NotHeld { .. }) {
                            tenure = Some((t, since));
                        }
                    }
                }
                continue;
            }
            if rng.below(100) == 0 {
                let n = rec.invoke("release", &holder, Some(t.epoch()), None, None);
                match engine.release(key, &holder) {
                    Ok(()) => rec.ok(n, None),
                    Err(e) => rec.fail(n, &e),
                }
                std::thread::sleep(Duration::from_millis(rng.below(20)));
                continue;
            }
            // The work between checking leadership and writing: a pause
            // here is what a guard must catch.
            say("working");
            std::thread::sleep(Duration::from_millis(
                2 + rng.below(lease.as_millis() as u64 / 10 + 1),
            ));
            seq += 1;
            let n = rec.invoke("write", &holder, Some(t.epoch()), Some(seq), None);
            let token = t.token();
            // Every other write goes through a transaction of the worker's
            // own (`check_in`), which says when it is inside it, so that
            // kills can land there; the others through a `Txn`.
            let write = Recorded {
                proc,
                holder: &holder,
                epoch: t.epoch(),
                seq,
            };
            let written = if seq.is_multiple_of(2) {
                B::own_txn_write(&engine, key, guard.then_some(&token), write, &|| {
                    say("in txn");
                })
            } else {
                B::commit_write(&engine, key, guard.then_some(&token), write)
            };
            match written {
                Ok(()) => rec.ok(n, None),
                Err(e) => rec.fail(n, &e),
            }
            tenure = Some((t, since));
        }
    }
}

/// Connections in a worker's pool (all of them are taken by the pool
/// exhaustion nemesis).
const POOL_SIZE: u32 = 3;

/// One line to the orchestrator, flushed at once.
fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// If this process was started as a workload worker (by
/// [`Workload::run`](super::Workload::run), or with
/// [`WorkerConfig::set_env`]), becomes that worker and never returns: the
/// orchestrator ends it with a signal. Otherwise returns `false` at once.
/// Call it first thing in `main` (or, in an integration test, in a test the
/// workload's command re-runs), before anything that would be wrong to do
/// twice:
///
/// ```no_run
/// use leasehold::testing::{Workload, serve_worker};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     if serve_worker() {
///         return Ok(());
///     }
///     // The program proper, whose workload starts this same program.
///     let exe = std::env::current_exe()?;
///     let dir = tempfile::tempdir()?;
///     let report = Workload::builder()
///         .build()?
///         .run(dir.path(), &|| std::process::Command::new(&exe))?;
///     assert!(report.check.passed());
///     Ok(())
/// }
/// ```
///
/// # Panics
///
/// If the worker environment variable is present but unreadable (see
/// [`WorkerConfig::from_env`]), or as [`WorkerConfig::serve`] does.
pub fn serve_worker() -> bool {
    match WorkerConfig::from_env() {
        Ok(None) => false,
        Ok(Some(config)) => config.serve(),
        Err(e) => panic!("leasehold worker: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key with every character a comma-separated format would trip on,
    /// and a directory with commas and spaces, survive the trip whole.
    #[test]
    fn the_environment_encoding_round_trips_a_hostile_key() {
        let key = Key::new(
            r#"a,b;c "quoted" \back\ {json}: [1,2] $HOME %s 'é' 😀"#,
            r#",,leading commas, "},{"proc":9}, \u0000 \n = ✓/slash/"#,
        )
        .expect("a valid key");
        let config = WorkerConfig {
            database: RunDatabase::Sqlite,
            dir: PathBuf::from("/tmp/with, commas/and \"quotes\"/ünï"),
            proc: 4_000_000_000,
            key,
            lease: Duration::new(1, 234_567_891),
            guard: false,
            seed: u64::MAX,
            pool_exhaustion: Some((
                Span::between(Duration::from_millis(100), Duration::from_millis(400)),
                Span::exactly(Duration::from_micros(1500)),
            )),
            lifeline: true,
        };
        let value = config.encode().expect("encodes");
        assert!(
            !value.contains('\0') && !value.contains('\n'),
            "an environment value: {value}"
        );
        let mut cmd = Command::new("true");
        config.set_env(&mut cmd).expect("set_env");
        let (name, set) = cmd.get_envs().next().expect("one variable");
        assert_eq!(name, ENV_WORKER);
        assert_eq!(set.and_then(|v| v.to_str()), Some(value.as_str()));
        assert_eq!(WorkerConfig::decode(&value).expect("decodes"), config);
    }

    #[test]
    fn an_unreadable_environment_is_an_error_naming_the_variable() {
        let old_format = "/tmp/x,1,30,1,0,5";
        let bad_key = r#"{"dir":"/tmp","proc":1,"namespace":"a/b","name":"n","lease":{"secs":1,"nanos":0},"guard":true,"seed":1,"pool_exhaustion":null,"lifeline":false}"#;
        let zero_lease = bad_key
            .replace("a/b", "a")
            .replace(r#""secs":1"#, r#""secs":0"#);
        let unknown = bad_key.replace("a/b", "a").replace("\"proc\"", "\"proc2\"");
        for value in [old_format, bad_key, &zero_lease, &unknown] {
            let e = WorkerConfig::decode(value).expect_err(value);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{value}");
            assert!(e.to_string().starts_with(ENV_WORKER), "{e}");
        }
        let good = bad_key.replace("a/b", "a");
        assert_eq!(
            WorkerConfig::decode(&good).expect("decodes").key(),
            &Key::new("a", "n").expect("key")
        );
    }
}

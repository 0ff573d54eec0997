//! The SQLite engine: opening the database, the connection pool, engine time,
//! and running lease operations in write transactions.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::core::clock::{Clock, SystemClock, from_ms, to_ms};
use crate::core::error::{Context, Error, Result};
use crate::core::key::{Key, duration_ms};
use crate::core::snapshot::Lease;
use crate::driver::{BackgroundStats, Driver, HandleError, LogErrors};
use crate::ops::InTxn;
use crate::sqlite::busy::LockWait;
use crate::sqlite::schema;
use crate::store::{Known, SqliteStore, Store};
use crate::token::LeaseToken;
use crate::token::Tenure;
use crate::txn::Txn;

/// How often (in engine time) a write transaction also persists the engine's
/// clock high-water mark.
const HIGH_WATER_PERSIST_MS: i64 = 1000;

/// A clock reading this far (ms) behind the engine's high-water mark counts
/// as the clock stepping back (less is two threads reading it in turn).
const STEP_BACK_MS: i64 = 100;

/// How often an operation checks that the file at the engine's path is
/// still the one it opened.
const IDENTITY_CHECK: Duration = Duration::from_secs(1);

/// SQLite's `synchronous` setting for the engine's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// No syncs: a power loss can corrupt the database. Tests only.
    Off,
    /// Sync the WAL at checkpoints only (the default). A power loss can lose
    /// the latest commits but never corrupts the file; a process crash loses
    /// nothing.
    Normal,
    /// Sync the WAL at every commit: commits survive a power loss.
    Full,
    /// Like `Full`, and also sync the directory after deleting a journal.
    Extra,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// Configures and opens an [`Engine`]; see [`Engine::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct EngineBuilder {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    busy_timeout: Duration,
    pool_size: u32,
    synchronous: Synchronous,
    event_retention: u64,
    watch_interval: Duration,
    file_events: bool,
    lock_wait: LockWait,
    wal_limit: u64,
    read_only: bool,
    errors: Box<dyn HandleError>,
}

impl fmt::Debug for dyn HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandleError")
    }
}

impl EngineBuilder {
    /// The clock the engine reads. Default: [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> EngineBuilder {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an operation waits for the database's write lock before
    /// failing with [`Error::Busy`], and for a free pooled connection before
    /// failing with [`Error::PoolTimeout`]. Default: 5 seconds.
    pub fn busy_timeout(mut self, timeout: Duration) -> EngineBuilder {
        self.busy_timeout = timeout;
        self
    }

    /// The most connections the pool opens. Default: 8.
    pub fn pool_size(mut self, size: u32) -> EngineBuilder {
        self.pool_size = size;
        self
    }

    /// SQLite's `synchronous` for every connection. Default:
    /// [`Synchronous::Normal`], which with WAL never corrupts the file but may
    /// lose the latest commits on power loss (a lost claim is then lost
    /// together with every write it guarded).
    pub fn synchronous(mut self, synchronous: Synchronous) -> EngineBuilder {
        self.synchronous = synchronous;
        self
    }

    /// How many history events the database keeps (at least the newest this
    /// many; older ones are trimmed 64 at a time), at least 1. Default:
    /// 10,000. The background thread learns which keys
    /// changed from these events; if more than this many happen between two
    /// of its looks, it re-checks every key it watches.
    pub fn event_retention(mut self, events: u64) -> EngineBuilder {
        self.event_retention = events;
        self
    }

    /// How often, at most, the background thread looks for commits by other
    /// processes (`PRAGMA data_version` and new history events) while
    /// anything in this process waits or tracks. On Linux it looks when
    /// inotify reports a write to the database's WAL — at once when idle, at
    /// most once per interval under a stream of commits — and otherwise only
    /// every 250 ms as a backstop; elsewhere it polls at this interval.
    /// Default: 1 ms. Changes made through this engine are noticed at once.
    pub fn watch_interval(mut self, interval: Duration) -> EngineBuilder {
        self.watch_interval = interval;
        self
    }

    /// Whether to learn of other processes' commits from file-system events
    /// (inotify, on Linux) rather than by polling every
    /// [`watch_interval`](EngineBuilder::watch_interval). Default: `true`;
    /// ignored where unavailable.
    pub fn file_events(mut self, enabled: bool) -> EngineBuilder {
        self.file_events = enabled;
        self
    }

    /// How connections wait for SQLite's write lock. Default:
    /// [`LockWait::Fair`]: short, jittered pauses bounded by the busy
    /// timeout, so that under contention every process gets its turn within
    /// milliseconds (see the `contention` bench).
    pub fn lock_wait(mut self, policy: LockWait) -> EngineBuilder {
        self.lock_wait = policy;
        self
    }

    /// The WAL size, in bytes, above which the engine checkpoints with
    /// `RESTART` (holding back new writers for at most 10 ms while readers
    /// move past the old WAL; with [`LockWait::SqliteDefault`] only
    /// `PASSIVE` checkpoints run), and to which it truncates the file. The engine runs the
    /// checkpoints of its connections itself (SQLite's automatic ones are
    /// off on them): with several processes committing flat out, SQLite's
    /// checkpoint after every commit fights over the checkpoint lock, cannot
    /// reset the WAL, and the WAL grows by hundreds of MB in seconds (the
    /// `contention` bench). The checkpoints run in a WAL hook, so the
    /// application's own transactions on [`Engine::connection`] count too.
    /// With several engines in one process, the smallest of their limits
    /// applies to all. Default: 16 MiB.
    pub fn wal_size_limit(mut self, bytes: u64) -> EngineBuilder {
        self.wal_limit = bytes;
        self
    }

    /// Opens the database for reading only: nothing is ever written to it
    /// or created beside it by this engine (no migration, no switch to WAL,
    /// no clock mark, no `-lhwait` file), and it never waits for a writer's
    /// lock. The schema must already be this build's, or the build fails
    /// with [`Error::NotMigrated`]. Every operation that would write fails.
    /// What the `leasehold` commands that only look (`list`, `show`,
    /// `history`, `watch`, `export`) use. Default: `false`.
    pub fn read_only(mut self, read_only: bool) -> EngineBuilder {
        self.read_only = read_only;
        self
    }

    /// Where errors of background work go (renewals and releases that
    /// failed). Default: [`LogErrors`], which logs them with the `log` crate.
    pub fn error_handler(mut self, handler: impl HandleError) -> EngineBuilder {
        self.errors = Box::new(handler);
        self
    }

    /// Opens the database, switches it to WAL, applies pending migrations and
    /// builds the pool.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidArgument`] for an empty, in-memory or `file:` URI
    ///   path, a directory, a zero pool size, a zero event retention, a
    ///   watch interval of zero or over 60 s, or a busy timeout over an hour;
    /// - [`Error::NotADatabase`] if the file is not a SQLite database;
    /// - [`Error::SchemaTooNew`] / [`Error::SchemaMismatch`] if another
    ///   leasehold build migrated it;
    /// - [`Error::SchemaConflict`] if the database already holds a table
    ///   (or index, trigger, view) of a name leasehold's schema needs;
    /// - [`Error::NotMigrated`] for a read-only engine on a database without
    ///   this build's schema;
    /// - [`Error::DirectoryNotWritable`] if SQLite cannot create its `-wal`
    ///   and `-shm` files (or a journal) beside the file;
    /// - [`Error::Open`] if it cannot be opened or written otherwise (missing
    ///   directory or file, permissions, full disk), [`Error::Busy`] if it
    ///   stays locked while it must be migrated or switched to WAL.
    ///
    /// A file that fails is left as it was. A database whose schema is
    /// current and already in WAL mode is only read: opening it never
    /// waits for a writer.
    pub fn build(self) -> Result<Engine> {
        let shown = self.path.to_string_lossy();
        if shown.is_empty() || shown == ":memory:" || shown.starts_with("file:") {
            return Err(Error::invalid(
                "path",
                &shown,
                "must name a database file; pooled connections cannot share an in-memory database",
            ));
        }
        if self.path.is_dir() {
            return Err(Error::invalid(
                "path",
                &shown,
                "is a directory; name a database file",
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::invalid("pool size", "0", "must be at least 1"));
        }
        if self.event_retention == 0 {
            return Err(Error::invalid("event retention", "0", "must be at least 1"));
        }
        if self.watch_interval.is_zero() || self.watch_interval > Duration::from_secs(60) {
            return Err(Error::invalid(
                "watch interval",
                &format!("{:?}", self.watch_interval),
                "must be between 1ns and 60s",
            ));
        }
        if self.busy_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "busy timeout",
                &format!("{:?}", self.busy_timeout),
                "must be at most one hour",
            ));
        }
        let (high_water, page_size) = self.prepare_file()?;
        let read_only = self.read_only;
        let busy_timeout = self.busy_timeout;
        let synchronous = self.synchronous;
        let lock_wait = self.lock_wait;
        let wal_limit = self.wal_limit;
        let manager = SqliteConnectionManager::file(&self.path)
            .with_flags(open_flags(read_only) | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(move |c| {
                match lock_wait {
                    LockWait::Fair => c.busy_handler(Some(crate::sqlite::busy::fair_handler))?,
                    LockWait::SqliteDefault => c.busy_timeout(busy_timeout)?,
                }
                c.pragma_update(None, "synchronous", synchronous.pragma())?;
                c.pragma_update(None, "foreign_keys", true)?;
                // Checkpoints are ours (see `wal.rs`).
                crate::sqlite::wal::install(c, wal_limit, lock_wait == LockWait::Fair)?;
                c.set_prepared_statement_cache_capacity(64);
                Ok(())
            });
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(busy_timeout.max(Duration::from_millis(1)))
            .thread_pool(shared_reaper())
            .build_unchecked(manager);
        let canonical = std::fs::canonicalize(&self.path).ok();
        let identity = FileIdentity::of(canonical.as_deref().unwrap_or(&self.path));
        crate::sqlite::wal::limit(self.wal_limit, page_size);
        let lock_signal = match self.lock_wait {
            LockWait::Fair if !read_only => {
                crate::sqlite::busy::Signal::open(canonical.as_deref().unwrap_or(&self.path))
            }
            _ => None,
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                path: self.path,
                canonical,
                pool,
                clock: self.clock,
                high_water: AtomicI64::new(high_water),
                persisted_high_water: AtomicI64::new(high_water),
                unconfirmed_high_water: AtomicI64::new(high_water),
                stepped_back_to: AtomicI64::new(0),
                read_only,
                identity,
                opened: std::time::Instant::now(),
                identity_checked_ms: AtomicU64::new(0),
                replaced: AtomicBool::new(false),
                busy_timeout,
                event_retention: self.event_retention,
                stopped: AtomicBool::new(false),
                lock_signal,
                sqlite_handler: lock_wait == LockWait::SqliteDefault,
                driver: Arc::new(Driver::new(
                    self.watch_interval,
                    self.file_events,
                    self.errors,
                )),
                known_tenures: Mutex::new(HashMap::new()),
            }),
        };
        // Moving a manual clock wakes waiters and trackers at once.
        let weak = Arc::downgrade(&engine.inner);
        engine
            .inner
            .clock
            .on_change(Box::new(move || match weak.upgrade() {
                Some(inner) => {
                    inner.driver.poke();
                    true
                }
                None => false,
            }));
        Ok(engine)
    }

    /// Checks and, unless read-only, migrates the file and switches it to
    /// WAL, on a connection of its own; returns the persisted clock
    /// high-water mark and the page size. The version is read first: the
    /// write lock is taken only to migrate, and the journal mode is changed
    /// only when it is not WAL already, so opening a current database never
    /// writes and never waits for a writer.
    fn prepare_file(&self) -> Result<(i64, u64)> {
        let open_err = |source: rusqlite::Error| self.open_error(source);
        let conn = Connection::open_with_flags(
            &self.path,
            open_flags(self.read_only)
                | if self.read_only {
                    OpenFlags::empty()
                } else {
                    OpenFlags::SQLITE_OPEN_CREATE
                }
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(self.busy_timeout).map_err(open_err)?;
        // Refuse a newer schema, or a conflicting one, before changing
        // anything, journal mode included.
        let found = retry_busy(self.busy_timeout, || match schema::schema_version(&conn) {
            Ok(v) => Ok(Ok(v)),
            Err(Error::Storage { source, .. }) => Err(crate::sqlite::error::into_sqlite(source)),
            Err(other) => Ok(Err(other)),
        })
        .map_err(open_err)??;
        if found > schema::SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if found == schema::SCHEMA_VERSION {
            retry_busy(self.busy_timeout, || match schema::verify(&conn) {
                Ok(()) => Ok(Ok(())),
                Err(Error::Storage { source, .. }) => {
                    Err(crate::sqlite::error::into_sqlite(source))
                }
                Err(other) => Ok(Err(other)),
            })
            .map_err(open_err)??;
        }
        if found < schema::SCHEMA_VERSION {
            if self.read_only {
                return Err(Error::NotMigrated {
                    path: self.path.clone(),
                    found,
                    expected: schema::SCHEMA_VERSION,
                });
            }
            // Migrated in the file's own journal mode, so that a migration
            // refused (a conflicting table of the application's) or failed
            // (a full disk) leaves the file as it was, WAL switch included.
            schema::migrate(&conn).map_err(|e| match e {
                Error::Storage { source, .. } => {
                    open_err(crate::sqlite::error::into_sqlite(source))
                }
                other => other,
            })?;
        }
        if !self.read_only {
            let mode: String = retry_busy(self.busy_timeout, || {
                conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            })
            .map_err(open_err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                // Switching to WAL needs an exclusive lock, and SQLite
                // answers SQLITE_BUSY at once (without its busy handler) when
                // another process holds a lock at that moment: retry within
                // the budget.
                let mode: String = retry_busy(self.busy_timeout, || {
                    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                })
                .map_err(open_err)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(Error::Open {
                        path: self.path.clone(),
                        source: crate::sqlite::error::storage(
                            rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                                Some(format!(
                                    "could not switch to WAL (journal mode stays {mode})"
                                )),
                            ),
                            Duration::ZERO,
                        ),
                    });
                }
            }
        }
        let high_water = SqliteStore::new(&conn).high_water().map_err(open_err)?;
        let clock = to_ms(self.clock.now());
        if high_water > clock + 24 * 3600 * 1000 {
            log::warn!(
                "leasehold: {} records engine time {} ms ahead of this clock; \
                 leases will not expire until the clock catches up",
                self.path.display(),
                high_water - clock
            );
        }
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(open_err)?;
        Ok((high_water, page_size))
    }

    /// Says what went wrong opening or preparing the file, as precisely as
    /// the file and its directory allow.
    fn open_error(&self, source: rusqlite::Error) -> Error {
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => {
                return Error::NotADatabase {
                    path: self.path.clone(),
                };
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                return Error::Busy {
                    context: Context::new("open"),
                    waited: self.busy_timeout,
                };
            }
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen) => {
                // SQLite creates `-wal`, `-shm` and journals beside the
                // file; a writable file in a directory that is not says
                // "attempt to write a readonly database", even for reads.
                if let Some(directory) = unwritable_directory(&self.path) {
                    return Error::DirectoryNotWritable {
                        path: self.path.clone(),
                        directory,
                    };
                }
            }
            _ => {}
        }
        Error::Open {
            path: self.path.clone(),
            source: crate::sqlite::error::storage(source, self.busy_timeout),
        }
    }
}

/// The flags every connection of an engine opens with.
fn open_flags(read_only: bool) -> OpenFlags {
    if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    }
}

/// The directory of `path`, if this process cannot create files in it.
#[cfg(unix)]
fn unwritable_directory(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let writable = nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok();
    (!writable && dir.is_dir()).then_some(dir)
}

#[cfg(not(unix))]
fn unwritable_directory(_path: &Path) -> Option<PathBuf> {
    None
}

/// Which file a path named when the engine opened it (device and inode),
/// to notice it deleted or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    pub(crate) fn of(path: &Path) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            device: m.dev(),
            inode: m.ino(),
        })
    }

    /// Elsewhere, only whether the path still names a file of the same
    /// creation time is known.
    #[cfg(not(unix))]
    pub(crate) fn of(path: &Path) -> Option<FileIdentity> {
        let m = std::fs::metadata(path).ok()?;
        let created = m
            .created()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(FileIdentity {
            device: 0,
            inode: created.as_nanos() as u64,
        })
    }
}

/// Runs `f` until it succeeds, fails with something other than
/// `SQLITE_BUSY`, or `budget` has passed, sleeping with growing jittered
/// pauses between tries.
pub(crate) fn retry_busy<T>(
    budget: Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_micros(500);
    loop {
        match f() {
            Err(e) if crate::sqlite::error::is_busy(&e) && started.elapsed() < budget => {
                // Jitter from the clock's nanoseconds keeps processes that
                // collided from retrying in lockstep.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let jitter = Duration::from_nanos(u64::from(nanos) % (pause.as_nanos() as u64 + 1));
                std::thread::sleep(pause + jitter);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn shared_reaper() -> Arc<scheduled_thread_pool::ScheduledThreadPool> {
    static POOL: OnceLock<Arc<scheduled_thread_pool::ScheduledThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        Arc::new(
            scheduled_thread_pool::ScheduledThreadPool::builder()
                .num_threads(1)
                .thread_name_pattern("leasehold-pool-reaper")
                .build(),
        )
    })
    .clone()
}

/// A lease engine on one SQLite database file.
///
/// Cheap to clone (clones share one pool and one background thread) and
/// `Send + Sync`. Every operation takes a pooled connection and runs in a
/// transaction of its own (`BEGIN IMMEDIATE` for writes, a deferred one for
/// reads), committed before it returns; use
/// [`Engine::in_txn`] to run the same operations inside a transaction of
/// yours instead.
///
/// # Stopping
///
/// [`Engine::shutdown`] stops the engine for every clone: later operations
/// and every blocked waiter fail with [`Error::Stopped`]. Dropping the last
/// clone stops its background thread.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    path: PathBuf,
    canonical: Option<PathBuf>,
    pool: r2d2::Pool<SqliteConnectionManager>,
    clock: Arc<dyn Clock>,
    /// The latest engine time handed out; engine time never goes back.
    high_water: AtomicI64,
    /// The latest engine time known to be persisted in `leasehold_clock`.
    persisted_high_water: AtomicI64,
    /// The latest engine time written to `leasehold_clock` in a caller's
    /// transaction, which may yet roll back.
    unconfirmed_high_water: AtomicI64,
    /// The high-water mark when the clock was last seen stepping back (0:
    /// never): persisted at the next chance, so that an engine opened later
    /// does not start behind it (see [`Engine::now_reading`]).
    stepped_back_to: AtomicI64,
    /// Opened with [`EngineBuilder::read_only`]: never writes.
    read_only: bool,
    /// The file opened, to notice it deleted or replaced; `None` if it
    /// could not be read.
    identity: Option<FileIdentity>,
    /// When the engine was opened, and when (ms after that) the file's
    /// identity was last checked.
    opened: std::time::Instant,
    identity_checked_ms: AtomicU64,
    /// The file at the path is no longer the one opened.
    replaced: AtomicBool,
    busy_timeout: Duration,
    pub(crate) event_retention: u64,
    stopped: AtomicBool,
    /// Commits made through the engine, to pace WAL size checks.
    /// "Someone waits for the write lock" (see `busy.rs`).
    lock_signal: Option<Arc<crate::sqlite::busy::Signal>>,
    /// Whether connections wait with SQLite's own handler, whose timeout
    /// is then set at each checkout.
    sqlite_handler: bool,
    pub(crate) driver: Arc<Driver>,
    /// The latest tenure of each key claimed through [`Engine::claim`] (and
    /// committed), so that claiming it again, an extension, can take the
    /// one-statement path of [`Engine::extend`]. Only a hint: the statement
    /// checks holder, epoch, start and expiry against the row, and a miss
    /// takes the full path. Cleared when it reaches [`KNOWN_TENURES_MAX`]
    /// keys.
    known_tenures: Mutex<HashMap<Key, KnownTenure>>,
}

/// A tenure this engine claimed; see `Inner::known_tenures`.
pub(crate) struct KnownTenure {
    holder: String,
    known: Known,
    /// Released or revoked through this engine since.
    ended: bool,
}

/// The most keys [`Inner::known_tenures`] remembers.
const KNOWN_TENURES_MAX: usize = 4096;

impl Inner {
    /// Persists the engine's high-water mark if it is ahead of the stored one
    /// (best effort: at shutdown and drop, so that a restart with a clock
    /// stepped back does not start behind what this engine saw).
    fn persist_high_water(&self) {
        let now = self.high_water.load(Ordering::Acquire);
        if now <= self.persisted_high_water.load(Ordering::Acquire)
            || self.stopped.load(Ordering::Acquire)
            || self.read_only
            || self.replaced.load(Ordering::Acquire)
        {
            return;
        }
        if let Some(conn) = self.pool.try_get() {
            let stored = SqliteStore::new(&conn).persist_high_water(now);
            if stored.is_ok() {
                self.persisted_high_water.fetch_max(now, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.driver.shutdown(false);
        self.persist_high_water();
    }
}

impl Engine {
    /// Opens (creating if needed) the database at `path` with default
    /// settings; see [`Engine::builder`].
    ///
    /// # Errors
    ///
    /// As [`EngineBuilder::build`].
    pub fn open(path: impl AsRef<Path>) -> Result<Engine> {
        Engine::builder(path).build()
    }

    /// A builder to configure the engine before opening `path`.
    pub fn builder(path: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder {
            path: path.as_ref().to_path_buf(),
            clock: Arc::new(SystemClock),
            busy_timeout: Duration::from_secs(5),
            pool_size: 8,
            synchronous: Synchronous::Normal,
            event_retention: 10_000,
            watch_interval: Duration::from_millis(1),
            file_events: true,
            lock_wait: LockWait::Fair,
            wal_limit: 16 << 20,
            read_only: false,
            errors: Box::new(LogErrors),
        }
    }

    /// The database file's path, as given when opening.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The path to watch for writes: the canonical one if known.
    pub(crate) fn watch_path(&self) -> PathBuf {
        self.inner
            .canonical
            .clone()
            .unwrap_or_else(|| self.inner.path.clone())
    }

    /// The engine's current time: the clock's reading, but never earlier than
    /// any instant this engine has already used or found persisted.
    pub fn now(&self) -> DateTime<Utc> {
        from_ms(self.now_ms())
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.now_reading().0
    }

    /// Engine time in whole milliseconds, and whether the instant it stands
    /// for lies after that millisecond began (the clock read a fraction of a
    /// millisecond more). A claim's guarantee counts from the instant, so
    /// expiries round up.
    pub(crate) fn now_reading(&self) -> (i64, bool) {
        let clock = self.inner.clock.now();
        let read = to_ms(clock);
        let fraction = !clock.timestamp_subsec_nanos().is_multiple_of(1_000_000);
        let before = self.inner.high_water.fetch_max(read, Ordering::AcqRel);
        if before > read {
            if before - read > STEP_BACK_MS {
                // The clock stepped back past what this engine already
                // used: persist that at once (a rare write), so that an
                // engine opened later on a clock as far behind cannot see
                // a lease this engine saw expire as held again.
                self.inner
                    .stepped_back_to
                    .fetch_max(before, Ordering::AcqRel);
            }
            (before, false)
        } else {
            (read, fraction)
        }
    }

    /// Persists the high-water mark now if the clock was seen stepping back
    /// since it was last persisted: in a write transaction of its own,
    /// waiting at most 10 ms for the write lock (a reader must not wait for
    /// writers; the next operation, or the background thread, tries again).
    /// Nothing for a read-only engine.
    pub(crate) fn persist_after_step_back(&self) {
        let inner = &self.inner;
        let due = inner.stepped_back_to.load(Ordering::Acquire);
        if inner.read_only || due <= inner.persisted_high_water.load(Ordering::Acquire) {
            return;
        }
        let _ = self.write_within(
            Duration::from_millis(10),
            || Context::new("persist clock"),
            |tx| tx.persist_high_water(),
        );
    }

    /// Whether the file at the engine's path is still the one it opened,
    /// checked at most once per `every`; once it is not, the engine counts
    /// every tenure as lost and fails every operation with
    /// [`Error::DatabaseReplaced`].
    pub(crate) fn file_replaced(&self, every: Duration) -> bool {
        let inner = &self.inner;
        if inner.replaced.load(Ordering::Acquire) {
            return true;
        }
        let Some(identity) = inner.identity else {
            return false;
        };
        let now = u64::try_from(inner.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = inner.identity_checked_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < every.as_millis() as u64
            || inner
                .identity_checked_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        let path = inner.canonical.as_deref().unwrap_or(&inner.path);
        if FileIdentity::of(path) == Some(identity) {
            return false;
        }
        log::warn!(
            "leasehold: {} was deleted or replaced since it was opened; its tenures count as lost",
            inner.path.display()
        );
        inner.replaced.store(true, Ordering::Release);
        inner.driver.poke();
        true
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    pub(crate) fn busy_timeout(&self) -> Duration {
        self.inner.busy_timeout
    }

    /// Whether a write transaction at engine time `now` should also persist
    /// the high-water mark (at most about once a second). The engine's own
    /// transactions go by what is known to be committed; callers'
    /// transactions also by what other callers' transactions wrote, so that
    /// their commits do not each write the mark (an extra page apiece),
    /// while a caller's rollback cannot stop the engine's writes persisting
    /// it.
    pub(crate) fn high_water_due(&self, now: i64, owned: bool) -> bool {
        let mut last = self.inner.persisted_high_water.load(Ordering::Acquire);
        if !owned {
            last = last.max(self.inner.unconfirmed_high_water.load(Ordering::Acquire));
        }
        now - last >= HIGH_WATER_PERSIST_MS
            || self.inner.stepped_back_to.load(Ordering::Acquire) > last
    }

    /// Records that a caller's transaction wrote `ms` (it may roll back).
    pub(crate) fn high_water_written_unconfirmed(&self, ms: i64) {
        self.inner
            .unconfirmed_high_water
            .fetch_max(ms, Ordering::AcqRel);
    }

    /// Records that `ms` is persisted (after the commit that wrote it).
    pub(crate) fn high_water_persisted(&self, ms: i64) {
        self.inner
            .persisted_high_water
            .fetch_max(ms, Ordering::AcqRel);
    }

    /// Takes a connection from the engine's pool, for your own transactions
    /// on the same database (see [`LeaseToken::check_in`]).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] after [`Engine::shutdown`]; [`Error::PoolTimeout`]
    /// if no connection frees up within the busy timeout.
    pub fn connection(&self) -> Result<PooledConnection> {
        self.conn(|| Context::new("connect"))
    }

    pub(crate) fn conn(&self, ctx: impl Fn() -> Context) -> Result<PooledConnection> {
        self.conn_within(self.inner.busy_timeout, ctx)
    }

    /// A pooled connection, waiting at most `budget` for it and later for
    /// the write lock.
    pub(crate) fn conn_within(
        &self,
        budget: Duration,
        ctx: impl Fn() -> Context,
    ) -> Result<PooledConnection> {
        self.ensure_running(&ctx)?;
        let budget = budget.min(self.inner.busy_timeout);
        crate::sqlite::busy::set_context(budget, self.inner.lock_signal.as_ref());
        match self
            .inner
            .pool
            .get_timeout(budget.max(Duration::from_millis(1)))
        {
            Ok(conn) => {
                if self.inner.sqlite_handler {
                    // The budget bounds lock waits with this handler too.
                    conn.busy_timeout(budget).map_err(|e| {
                        crate::sqlite::error::fail(ctx(), e, self.inner.busy_timeout)
                    })?;
                }
                Ok(PooledConnection(conn))
            }
            Err(e) => Err(Error::PoolTimeout {
                context: ctx(),
                waited: self.inner.busy_timeout,
                size: self.inner.pool.max_size(),
                last_error: e.to_string(),
            }),
        }
    }

    pub(crate) fn ensure_running(&self, ctx: &impl Fn() -> Context) -> Result<()> {
        if self.inner.stopped.load(Ordering::Acquire) {
            Err(Error::Stopped { context: ctx() })
        } else if self.file_replaced(IDENTITY_CHECK) {
            Err(Error::DatabaseReplaced {
                path: self.inner.path.clone(),
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Stops the engine, for every clone: every tracker stops (releasing its
    /// lease unless configured not to) and its pending tickets resolve
    /// `false`; then later operations fail with [`Error::Stopped`], and so
    /// does every thread blocked in a wait. Other committed leases stay as
    /// they are. Blocks until the background thread has finished.
    pub fn shutdown(&self) {
        self.inner.driver.shutdown(true);
        self.inner.persist_high_water();
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.driver.poke();
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on a pooled connection,
    /// committing if it returns `Ok` and rolling back otherwise.
    pub(crate) fn write<T>(
        &self,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&InTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_within(self.inner.busy_timeout, ctx, f)
    }

    /// As [`Engine::write`], waiting at most `budget` for a connection and
    /// for the write lock (with the fair handler; SQLite's own handler keeps
    /// the connection's busy timeout).
    pub(crate) fn write_within<T>(
        &self,
        budget: Duration,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&InTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        let conn = self.conn_within(budget, &ctx)?;
        let tx = Immediate::begin(&conn, self, &ctx)?;
        let store = SqliteStore::holding(&conn);
        let scope = InTxn::owned(self, &conn, &store);
        let value = f(&scope)?;
        tx.commit(&ctx)?;
        if let Some(ms) = scope.persisted_high_water() {
            self.high_water_persisted(ms);
        }
        self.changed();
        Ok(value)
    }

    /// Runs `f` in a deferred (read) transaction on a pooled connection.
    pub(crate) fn read<T>(
        &self,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&InTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        self.read_within(self.inner.busy_timeout, ctx, f)
    }

    /// As [`Engine::read`], waiting at most `budget` for a connection.
    pub(crate) fn read_within<T>(
        &self,
        budget: Duration,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&InTxn<'_>) -> Result<T>,
    ) -> Result<T> {
        let conn = self.conn_within(budget, &ctx)?;
        let storage = |e| crate::sqlite::error::fail(ctx(), e, self.busy_timeout());
        conn.prepare_cached("BEGIN")
            .and_then(|mut s| s.execute([]))
            .map_err(storage)?;
        let store = SqliteStore::holding(&conn);
        let result = f(&InTxn::owned(self, &conn, &store));
        // A read transaction has nothing to lose; end it either way.
        let end = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map_err(storage);
        drop(store);
        drop(conn);
        let value = result?;
        end?;
        self.persist_after_step_back();
        Ok(value)
    }

    /// Housekeeping after every commit on the engine's write path: take
    /// turns for the write lock (see `busy.rs`). The WAL's checkpoints
    /// happen in SQLite's WAL hook (see `wal.rs`).
    pub(crate) fn after_commit(&self) {
        crate::sqlite::busy::after_commit();
    }

    /// Tells waiters and trackers that this engine committed a change.
    pub(crate) fn changed(&self) {
        self.inner.driver.poke();
    }

    pub(crate) fn driver(&self) -> &Arc<Driver> {
        &self.inner.driver
    }

    /// Blocks until the engine's background thread has caught up: it has
    /// completed a pass that began after this call and found nothing left to
    /// do at the current engine time. Meant for tests on a
    /// [`ManualClock`](crate::ManualClock): move the clock, then `settle`,
    /// then assert. Returns at once if no tracker or waiter ever started the
    /// thread.
    pub fn settle(&self) {
        self.inner.driver.settle();
    }

    /// Counters of the background thread's work.
    pub fn background_stats(&self) -> BackgroundStats {
        self.inner.driver.stats()
    }

    /// Whether `conn` is a connection to this engine's database file.
    pub(crate) fn is_same_database(&self, conn: &Connection) -> bool {
        let Some(theirs) = conn.path().filter(|p| !p.is_empty()) else {
            return false;
        };
        let Some(ours) = &self.inner.canonical else {
            return Path::new(theirs) == self.inner.path;
        };
        Path::new(theirs) == ours || std::fs::canonicalize(theirs).is_ok_and(|p| &p == ours)
    }

    /// Runs lease operations inside a transaction you own, so that they
    /// commit or roll back with your other writes.
    ///
    /// `conn` must be a connection to this engine's database, inside a
    /// transaction (`&Transaction` and `&Savepoint` deref to `&Connection`).
    /// Use a `BEGIN IMMEDIATE` transaction (`TransactionBehavior::Immediate`):
    /// in a deferred one, SQLite may refuse the first write with
    /// `SQLITE_BUSY_SNAPSHOT` when another connection wrote after your first
    /// read, and the whole transaction must then be retried.
    ///
    /// Waiters in this process are told of changes made this way only through
    /// the database (within a few milliseconds), since the engine cannot see
    /// your commit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `conn` is not in a transaction or is
    /// connected to another database.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use leasehold::{Engine, Key};
    /// use leasehold::rusqlite::TransactionBehavior;
    ///
    /// let engine = Engine::open(dir.path().join("app.db"))?;
    /// let mut conn = engine.connection()?;
    /// conn.execute_batch("CREATE TABLE applied (version INTEGER)")?;
    ///
    /// // Claim the migration lease, migrate, record the version: one unit.
    /// let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    /// let key = Key::new("ops", "schema-migration")?;
    /// engine.in_txn(&tx)?.claim(&key, "host-1", Duration::from_secs(60))?;
    /// tx.execute("INSERT INTO applied VALUES (7)", [])?;
    /// tx.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_txn<'c>(&'c self, conn: &'c Connection) -> Result<InTxn<'c>> {
        if conn.is_autocommit() {
            return Err(Error::invalid(
                "connection",
                conn.path().unwrap_or(""),
                "is not inside a transaction; begin one first",
            ));
        }
        if !self.is_same_database(conn) {
            return Err(Error::invalid(
                "connection",
                conn.path().unwrap_or(""),
                format!("is not connected to {}", self.inner.path.display()),
            ));
        }
        Ok(InTxn::borrowed(self, conn))
    }

    /// Claims `key` for `holder` for `duration`, or extends `holder`'s
    /// current tenure (see [What a lease is](crate#what-a-lease-is)).
    ///
    /// On success the lease is held until at least the instant just before
    /// this call plus `duration`. A claim by the current holder is an
    /// extension: same epoch, and the expiry never moves earlier. Any other
    /// successful claim starts a new tenure with the next epoch.
    ///
    /// # Errors
    ///
    /// - [`Error::ClaimDenied`] if someone else holds the lease: a definite
    ///   "you do not hold it";
    /// - [`Error::InvalidArgument`] for a bad holder or a zero or over-long
    ///   duration (nothing is read or written);
    /// - [`Error::Busy`], [`Error::PoolTimeout`], [`Error::Storage`],
    ///   [`Error::Stopped`]: after these nothing may be inferred about the
    ///   lease.
    pub fn claim(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure> {
        let known = self.known_tenure(key, holder);
        let tenure = self.write(
            || Context::new("claim").key(key).holder(holder),
            |tx| tx.claim_known(key, holder, duration, known),
        )?;
        self.remember_tenure(&tenure);
        Ok(tenure)
    }

    /// The tenure of `key` this engine last claimed for `holder`, if it
    /// remembers one.
    fn known_tenure(&self, key: &Key, holder: &str) -> Option<Known> {
        let known = self.inner.known_tenures.lock().ok()?;
        known
            .get(key)
            .filter(|t| !t.ended && t.holder == holder)
            .map(|t| t.known)
    }

    /// Forgets the tenure of `key` remembered for [`Engine::claim`], before
    /// a write that ends it: the next claim then starts a new tenure without
    /// first trying to extend this one.
    fn forget_tenure(&self, key: &Key) {
        if let Ok(mut known) = self.inner.known_tenures.lock()
            && let Some(t) = known.get_mut(key)
        {
            // Kept, marked, so that the next claim updates it in place.
            t.ended = true;
        }
    }

    /// Remembers a committed claim (see `Inner::known_tenures`).
    fn remember_tenure(&self, tenure: &Tenure) {
        let Ok(mut known) = self.inner.known_tenures.lock() else {
            return;
        };
        let now_known = Known {
            epoch: tenure.epoch,
            started_ms: to_ms(tenure.started_at),
            expiry_ms: to_ms(tenure.expires_at),
        };
        if let Some(t) = known.get_mut(&tenure.key)
            && t.holder == tenure.holder
        {
            t.known = now_known;
            t.ended = false;
            return;
        }
        if known.len() >= KNOWN_TENURES_MAX {
            known.clear();
        }
        known.insert(
            tenure.key.clone(),
            KnownTenure {
                holder: tenure.holder.clone(),
                known: now_known,
                ended: false,
            },
        );
    }

    /// Claims `key` for `holder` only if it is vacant: a new tenure or
    /// nothing, never an extension, even of `holder`'s own tenure. For work
    /// that must run once per tenure (`leasehold run` uses it, so that two
    /// runs as one holder cannot share a tenure).
    ///
    /// # Errors
    ///
    /// [`Error::ClaimDenied`] naming the holder (perhaps `holder` itself)
    /// while anyone holds the lease; otherwise as [`Engine::claim`].
    pub fn claim_new(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure> {
        self.write(
            || Context::new("claim").key(key).holder(holder),
            |tx| tx.claim_new(key, holder, duration),
        )
    }

    /// Extends `tenure` — that very tenure — so that it is held until at
    /// least the instant of this call plus `duration` (an expiry already
    /// later stays). Cheaper than [`Engine::claim`] (one statement): what a
    /// holder that keeps its [`Tenure`] should call to renew. The returned
    /// tenure's expiry is a lower bound of the stored one.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if the tenure ended (released, revoked, expired,
    /// or replaced by another); [`Error::InvalidArgument`] for a zero or
    /// over-long duration; [`Error::Busy`], [`Error::PoolTimeout`],
    /// [`Error::Storage`], [`Error::Stopped`] as for [`Engine::claim`].
    pub fn extend(&self, tenure: &Tenure, duration: Duration) -> Result<Tenure> {
        self.write(
            || {
                Context::new("extend")
                    .key(&tenure.key)
                    .holder(&tenure.holder)
            },
            |tx| tx.extend_epoch(&tenure.key, &tenure.holder, tenure.epoch, duration),
        )
        .map(|until| {
            self.extended_tenure(tenure, until);
            Tenure {
                expires_at: tenure.expires_at.max(from_ms(until)),
                extended: true,
                ..tenure.clone()
            }
        })
    }

    /// Keeps what [`Engine::claim`] remembers of `tenure` in step with this
    /// engine's extension of it until `until_ms`: the stored expiry is now
    /// `max(before, until_ms)`. (If the row had moved on unseen, the
    /// remembered expiry stays wrong and the next claim's check misses.)
    fn extended_tenure(&self, tenure: &Tenure, until_ms: i64) {
        if let Ok(mut known) = self.inner.known_tenures.lock()
            && let Some(t) = known.get_mut(&tenure.key)
            && !t.ended
            && t.holder == tenure.holder
            && t.known.epoch == tenure.epoch
        {
            t.known.expiry_ms = t.known.expiry_ms.max(until_ms);
        }
    }

    /// Extends many tenures in one transaction, as [`Engine::extend`] does
    /// one: what a holder of many leases (without trackers) calls to renew
    /// them together. Returns each tenure's outcome, in order: a lower bound
    /// of its new expiry, or [`Error::NotHeld`] for one that ended (or
    /// [`Error::InvalidArgument`], for every tenure, if `duration` is zero or
    /// too long).
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::claim`], in which case nothing was
    /// extended.
    pub fn extend_all(
        &self,
        tenures: &[Tenure],
        duration: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>>>> {
        let ms = match duration_ms("duration", duration) {
            Ok(ms) => ms,
            // The same refusal for every tenure (errors are not Clone), and
            // nothing read or written.
            Err(_) => {
                let refusal = || duration_ms("duration", duration).map(from_ms);
                return Ok(tenures.iter().map(|_| refusal()).collect());
            }
        };
        let untils = self.write(
            || Context::new("extend"),
            |tx| {
                // One clock reading for the batch, taken under the write
                // lock: as if every renewal ran at that instant.
                let reading = self.now_reading();
                let mut out = Vec::with_capacity(tenures.len());
                for t in tenures {
                    match tx.extend_epoch_at(&t.key, &t.holder, t.epoch, ms, reading) {
                        Ok(until) => out.push(Ok(until)),
                        Err(e @ (Error::NotHeld { .. } | Error::InvalidArgument { .. })) => {
                            out.push(Err(e));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            },
        )?;
        Ok(tenures
            .iter()
            .zip(untils)
            .map(|(t, until)| {
                until.map(|until| {
                    self.extended_tenure(t, until);
                    t.expires_at.max(from_ms(until))
                })
            })
            .collect())
    }

    /// Ends `holder`'s tenure of `key` now, so another may claim at once.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if `holder` does not hold the lease (nothing is
    /// changed); [`Error::InvalidArgument`] for a holder that is not a valid
    /// name; storage errors as for [`Engine::claim`].
    pub fn release(&self, key: &Key, holder: &str) -> Result<()> {
        self.forget_tenure(key);
        self.write(
            || Context::new("release").key(key).holder(holder),
            |tx| tx.release(key, holder),
        )
    }

    /// Ends whoever's tenure of `key` it is (an administrative override).
    /// Returns the lease as it was if a tenure was ended, `None` if the key
    /// was vacant. Pins stay and apply to the next tenure.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::claim`].
    pub fn revoke(&self, key: &Key) -> Result<Option<Lease>> {
        self.forget_tenure(key);
        self.write(|| Context::new("revoke").key(key), |tx| tx.revoke(key))
    }

    /// Pins `key` on behalf of `entity`: while any pin is live the lease does
    /// not expire (the holder still extends it; others are still denied).
    /// Pinning a vacant key pins its next tenure. Pinning again as the same
    /// entity replaces that entity's reason and expiry. With `expires_after`,
    /// the pin lapses by itself after that long, so a forgotten pin cannot hold
    /// a lease forever.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad entity, reason or duration;
    /// storage errors as for [`Engine::claim`].
    pub fn pin(
        &self,
        key: &Key,
        entity: &str,
        reason: &str,
        expires_after: Option<Duration>,
    ) -> Result<()> {
        self.write(
            || Context::new("pin").key(key).holder(entity),
            |tx| tx.pin(key, entity, reason, expires_after),
        )
    }

    /// Removes `entity`'s pin from `key`; other entities' pins stay. Returns
    /// whether there was such a pin. Normal expiry resumes when no live pin
    /// remains.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad entity; storage errors as for
    /// [`Engine::claim`].
    pub fn unpin(&self, key: &Key, entity: &str) -> Result<bool> {
        self.write(
            || Context::new("unpin").key(key).holder(entity),
            |tx| tx.unpin(key, entity),
        )
    }

    /// Reads one lease, or `None` if the key was never claimed or pinned.
    ///
    /// # Errors
    ///
    /// Storage errors ([`Error::Storage`], [`Error::PoolTimeout`],
    /// [`Error::Stopped`]).
    pub fn lease(&self, key: &Key) -> Result<Option<Lease>> {
        self.read(|| Context::new("read").key(key), |tx| tx.lease(key))
    }

    /// The leases of `namespace` that someone holds now, ordered by name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad namespace; storage errors as for
    /// [`Engine::lease`].
    pub fn leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        self.read(
            || Context::new("list").namespace(namespace),
            |tx| tx.leases(namespace),
        )
    }

    /// Every key of `namespace` ever claimed or pinned, held or vacant,
    /// ordered by name.
    ///
    /// # Errors
    ///
    /// As [`Engine::leases`].
    pub fn all_leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        self.read(
            || Context::new("list").namespace(namespace),
            |tx| tx.all_leases(namespace),
        )
    }

    /// The newest `limit` events of `key` (claims, releases, revokes, lapses,
    /// pins, unpins), oldest first. The database keeps the newest
    /// [`EngineBuilder::event_retention`] events across all keys.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::lease`].
    pub fn history(&self, key: &Key, limit: usize) -> Result<Vec<crate::Event>> {
        self.read(
            || Context::new("history").key(key),
            |tx| tx.history(key, limit),
        )
    }

    /// A token asserting "`holder` holds `key` now" (any tenure). For a token
    /// fixed to one tenure, use [`Tenure::token`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad holder.
    pub fn token(&self, key: &Key, holder: &str) -> Result<LeaseToken> {
        crate::core::key::validate_name("holder", holder)?;
        Ok(LeaseToken::new(
            self.clone(),
            key.clone(),
            holder.to_owned(),
            None,
        ))
    }

    /// Runs `txn` in one `BEGIN IMMEDIATE` transaction: every assertion
    /// first, in order, then every mutation, in order; all or nothing.
    /// Returns the number of rows each op's mutation changed (0 for ops
    /// without one).
    ///
    /// # Errors
    ///
    /// - [`Error::GuardFailed`] or [`Error::AssertionFailed`] naming the first
    ///   op whose assertion failed; nothing was written.
    /// - [`Error::StatementFailed`] naming the op whose statement SQLite
    ///   refused; nothing was written.
    /// - [`Error::InvalidArgument`] if a parameter could not be converted,
    ///   an assertion is not a read-only query, a mutation does not write
    ///   (or is transaction control), or a token is for another database;
    ///   nothing was run.
    /// - [`Error::Storage`] if the transaction itself fails,
    ///   [`Error::Busy`], [`Error::PoolTimeout`], [`Error::Stopped`].
    pub fn commit(&self, txn: &Txn) -> Result<Vec<usize>> {
        let ctx = || Context::new("commit");
        let conn = self.conn(ctx)?;
        let tx = Immediate::begin(&conn, self, &ctx)?;
        let changes = txn.run_ops(&conn)?;
        tx.commit(&ctx)?;
        Ok(changes)
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.inner.path)
            .field("clock", &self.inner.clock)
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

/// An open `BEGIN IMMEDIATE` on an engine connection; rolls back on drop
/// unless committed, so a panic or an error never returns a connection to the
/// pool with a transaction open.
pub(crate) struct Immediate<'c> {
    conn: &'c Connection,
    engine: &'c Engine,
    done: bool,
}

impl<'c> Immediate<'c> {
    pub fn begin(
        conn: &'c Connection,
        engine: &'c Engine,
        ctx: &impl Fn() -> Context,
    ) -> Result<Immediate<'c>> {
        let started = std::time::Instant::now();
        conn.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(|e| crate::sqlite::error::fail(ctx(), e, started.elapsed()))?;
        Ok(Immediate {
            conn,
            engine,
            done: false,
        })
    }

    pub fn commit(mut self, ctx: &impl Fn() -> Context) -> Result<()> {
        self.done = true;
        let result = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        if let Err(e) = result {
            self.done = false; // still open: roll back on drop
            return Err(crate::sqlite::error::fail(
                ctx(),
                e,
                self.engine.busy_timeout(),
            ));
        }
        self.engine.after_commit();
        Ok(())
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        if !self.done && !self.conn.is_autocommit() {
            // Nothing useful can be done if the rollback fails; SQLite rolls
            // back when the connection closes.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A connection from an [`Engine`]'s pool; returns to the pool when dropped.
/// Derefs to [`rusqlite::Connection`].
pub struct PooledConnection(r2d2::PooledConnection<SqliteConnectionManager>);

impl Deref for PooledConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl Drop for PooledConnection {
    /// Rolls back a transaction left open, so that the connection returns to
    /// the pool clean.
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("path", &self.0.path())
            .finish()
    }
}

//! Opening a SQLite database: the builder, the checks and migration on
//! open, the connection pool and its pragmas.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::core::clock::{Clock, LocalTime, SystemClock, to_ms};
use crate::core::error::{Context, Error, Result};
use crate::driver::{HandleError, LogErrors};
use crate::engine::Engine;
use crate::sqlite::Sqlite;
use crate::sqlite::busy::LockWait;
use crate::sqlite::schema;

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
    /// A builder for the database at `path`, with the defaults each
    /// setting names.
    pub(crate) fn new(path: &Path) -> EngineBuilder {
        EngineBuilder {
            path: path.to_path_buf(),
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
    /// lock. The schema must already be this build's, or one whose tables
    /// it reads are the same (version 4: version 5 only added the guard
    /// statement for other SQL clients), or the build fails with
    /// [`Error::NotMigrated`]. Every operation that would write fails.
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
    ///   path, a directory, a FIFO, a device or a socket (refused before
    ///   SQLite opens it: nothing is created beside it), a zero pool size, a zero event retention, a
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
    ///
    /// The path is resolved once, symbolic links included, and every
    /// connection of the engine opens that file. Should the path later
    /// name another file (a link pointed at another database, a file moved
    /// over it, the file deleted), operations fail with
    /// [`Error::DatabaseReplaced`] and trackers step down; errors name the
    /// path as given.
    pub fn build(self) -> Result<Engine<Sqlite>> {
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
        if let Some(what) = special_file(&self.path) {
            // SQLite's read-only open of a FIFO blocks until a writer comes;
            // on a device it fails after creating `<path>-journal` beside it.
            return Err(Error::invalid(
                "path",
                &shown,
                format!("is {what}, not a database file; name a database file"),
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
        // The file the path names now, every link resolved, is the file this
        // engine opens, for good: every pooled connection opens it by that
        // name, so that a link pointed elsewhere later (a deployment's `ln
        // -sfn`) cannot put some of the engine's connections on another
        // database. What the given path names is checked against it (see
        // `Sqlite::ensure_usable`).
        let resolved = resolve(&self.path);
        if self.read_only {
            self.refuse_orphan_wal(&resolved)?;
        }
        let Prepared {
            anchor,
            high_water,
            offset,
            page_size,
            wal_mode,
        } = self.prepare_file(&resolved)?;
        // Now that the file exists (a dangling link created it), resolved
        // again; where that fails, by the name already resolved.
        let canonical = std::fs::canonicalize(&resolved).unwrap_or(resolved);
        // The `-wal` and `-shm` the anchor holds open. While it is open,
        // SQLite deletes neither (a connection in WAL mode holds a shared
        // lock on the database file as long as it is open, and only a last
        // connection, taking the exclusive lock, deletes them), so from now
        // on another file of their names means they were deleted by hand.
        let side_files = if wal_mode {
            SideFiles::of(&canonical)
        } else {
            SideFiles::default()
        };
        let read_only = self.read_only;
        let busy_timeout = self.busy_timeout;
        let synchronous = self.synchronous;
        let lock_wait = self.lock_wait;
        let wal_limit = self.wal_limit;
        let manager = SqliteConnectionManager::file(&canonical)
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
        let identity = FileIdentity::of(&canonical);
        crate::sqlite::wal::limit(self.wal_limit, page_size);
        let lock_signal = match self.lock_wait {
            LockWait::Fair if !read_only => crate::sqlite::busy::Signal::open(&canonical),
            _ => None,
        };
        let given = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        let backend = Sqlite {
            path: self.path,
            given,
            canonical: canonical.clone(),
            side_files,
            pool,
            time: LocalTime::resume(self.clock, high_water, offset),
            busy_timeout,
            event_retention: self.event_retention,
            read_only,
            identity,
            opened: std::time::Instant::now(),
            identity_checked_ms: AtomicU64::new(0),
            replaced: AtomicBool::new(false),
            lock_signal,
            sqlite_handler: lock_wait == LockWait::SqliteDefault,
            file_events: self.file_events,
            anchor: Arc::new(Anchor::new(anchor, read_only, canonical)),
        };
        Ok(Engine::from_backend(
            backend,
            self.watch_interval,
            self.errors,
        ))
    }

    /// Checks and, unless read-only, migrates the file and switches it to
    /// WAL, on a connection of its own, which it returns to be the
    /// engine's anchor; and the persisted clock high-water mark and the
    /// page size. The version is read first: the write lock is taken only
    /// to migrate, and the journal mode is changed only when it is not WAL
    /// already, so opening a current database never writes and never waits
    /// for a writer.
    fn prepare_file(&self, file: &Path) -> Result<Prepared> {
        let open_err = |source: rusqlite::Error| self.open_error(file, source);
        // A read-only engine's anchor is opened for writing where it can be
        // (see `Anchor`), and only queries: `query_only` refuses any write.
        let tidy = self.read_only && may_tidy(file);
        let conn = Connection::open_with_flags(
            file,
            open_flags(self.read_only && !tidy)
                | if self.read_only {
                    OpenFlags::empty()
                } else {
                    OpenFlags::SQLITE_OPEN_CREATE
                }
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        if tidy {
            conn.pragma_update(None, "query_only", true)
                .map_err(open_err)?;
        }
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
        // A read-only engine reads a schema old enough to lack only what
        // its reads never use (the guard's views of version 5).
        let readable = self.read_only && found >= schema::READABLE_SINCE_VERSION;
        if found == schema::SCHEMA_VERSION || readable {
            retry_busy(self.busy_timeout, || match schema::verify(&conn) {
                Ok(()) => Ok(Ok(())),
                Err(Error::Storage { source, .. }) => {
                    Err(crate::sqlite::error::into_sqlite(source))
                }
                Err(other) => Ok(Err(other)),
            })
            .map_err(open_err)??;
        }
        if found < schema::SCHEMA_VERSION && !readable {
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
        let (high_water, offset) = crate::sqlite::store::high_water(&conn).map_err(open_err)?;
        let clock = to_ms(self.clock.now());
        let ahead = high_water.saturating_sub(clock).max(offset);
        if ahead > 24 * 3600 * 1000 {
            log::warn!(
                "leasehold: {} records engine time {ahead} ms ahead of this clock; \
                 engine time goes on from there at this clock's rate, that far ahead of it",
                self.path.display(),
            );
        }
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(open_err)?;
        // Read after a read of the file (the clock mark above), so that in
        // WAL mode this connection now holds the `-wal` and `-shm` open.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(open_err)?;
        Ok(Prepared {
            anchor: conn,
            high_water,
            offset,
            page_size,
            wal_mode: mode.eq_ignore_ascii_case("wal"),
        })
    }

    /// Refuses, for a read-only engine, a database whose `-wal` holds
    /// frames but has no `-shm` beside it: a copy made without it, or a
    /// `-shm` deleted by hand (no live connection is without one). SQLite
    /// can read such a `-wal` only by rebuilding its index into a new
    /// `-shm` beside the file, and leaves it there: a read-only connection
    /// cannot remove it, nor could any connection without first writing
    /// the `-wal`'s frames into the database (the checkpoint SQLite runs
    /// before removing its side files). A first connection creates the
    /// `-wal` a moment before the `-shm`, and a last one removes the `-shm`
    /// a moment before the `-wal`: the state is looked at a few times.
    fn refuse_orphan_wal(&self, file: &Path) -> Result<()> {
        let (wal, shm) = (side_path(file, "-wal"), side_path(file, "-shm"));
        let orphan = || {
            std::fs::metadata(&wal).is_ok_and(|m| m.is_file() && m.len() > 0)
                && std::fs::symlink_metadata(&shm).is_err()
        };
        for _ in 0..20 {
            if !orphan() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(Error::Open {
            path: self.path.clone(),
            source: crate::sqlite::error::storage(
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!(
                        "its -wal ({}) has no -shm beside it (copied without it, or the -shm \
                         was deleted): SQLite would have to create one to read it, and a \
                         read-only engine creates nothing; open it once not read-only (which \
                         recovers the -wal and, closing last, checkpoints it into the file), \
                         or copy the database with its -shm",
                        wal.display()
                    )),
                ),
                Duration::ZERO,
            ),
        })
    }

    /// Says what went wrong opening or preparing `file` (the path given,
    /// resolved), as precisely as the file and its directory allow; the
    /// error names the path as given.
    fn open_error(&self, file: &Path, source: rusqlite::Error) -> Error {
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
                if let Some(directory) = unwritable_directory(file) {
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

/// What `EngineBuilder::prepare_file` found.
struct Prepared {
    /// Its connection, kept open for the engine's life (see `Sqlite::anchor`).
    anchor: Connection,
    /// The persisted clock mark and offset.
    high_water: i64,
    offset: i64,
    page_size: u64,
    /// Whether the file is in WAL mode.
    wal_mode: bool,
}

/// Whether a read-only engine's anchor may open `file` for writing (it
/// never writes; see `Anchor`): the file is writable by this process, and
/// no rollback journal lies beside it (a connection able to write rolls a
/// hot journal back into the file when it first reads).
#[cfg(unix)]
fn may_tidy(file: &Path) -> bool {
    nix::unistd::access(file, nix::unistd::AccessFlags::W_OK).is_ok()
        && std::fs::symlink_metadata(side_path(file, "-journal")).is_err()
}

#[cfg(not(unix))]
fn may_tidy(_file: &Path) -> bool {
    false
}

/// The connection that prepared the file, kept open for the engine's life,
/// outside the pool (which keeps no connection idle), so that SQLite never
/// deletes the `-wal` and `-shm` under a live engine (see `SideFiles`). It
/// runs nothing after opening; it closes after every other connection of
/// the engine (the pool's, and the change feed's, which holds it too).
///
/// A read-only engine's anchor is opened for writing where it can be
/// (`may_tidy`), with `query_only` set, so that it can do what SQLite does
/// for a last connection and read-only connections cannot: to read a
/// database in WAL mode, SQLite creates its `-wal` and `-shm` if missing
/// (the `-shm` holds the index of the `-wal`, in shared memory), and the
/// last connection to close removes them, having taken the exclusive lock
/// no read-only connection can take. On closing, if the `-wal` holds no
/// frames, it lets SQLite do that (its checkpoint has nothing to copy, so
/// nothing is written to the file); if it does (another process wrote
/// since), it closes without a checkpoint and leaves them. Either way only
/// a last connection, in any process, removes anything.
///
/// The pool opens its connections on its reaper thread, and such a task
/// holds the pool until it ends: the pool's connections may close there,
/// a moment after the engine dropped it. So a read-only anchor closes on
/// that thread too, after every task queued before it (the drop waits
/// for it, at most a second).
pub(crate) struct Anchor {
    conn: std::sync::Mutex<Option<Connection>>,
    /// For a read-only engine whose anchor can write: the database file.
    tidy: Option<PathBuf>,
}

impl Anchor {
    fn new(conn: Connection, read_only: bool, file: PathBuf) -> Anchor {
        let tidy =
            (read_only && conn.is_readonly(rusqlite::MAIN_DB).is_ok_and(|ro| !ro)).then_some(file);
        Anchor {
            conn: std::sync::Mutex::new(Some(conn)),
            tidy,
        }
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let Some(file) = &self.tidy else {
            return;
        };
        let Some(conn) = self
            .conn
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let file = file.clone();
        let (closed, wait) = std::sync::mpsc::channel();
        shared_reaper().execute(move || {
            if std::fs::metadata(side_path(&file, "-wal")).is_ok_and(|m| m.len() > 0) {
                // Never write the file: its -wal and -shm stay.
                let _ = conn.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                );
            }
            drop(conn);
            let _ = closed.send(());
        });
        let _ = wait.recv_timeout(Duration::from_secs(1));
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

/// The file `path` names now, with every symbolic link resolved: the file
/// itself if it exists; for a file yet to be created, its directory,
/// resolved, joined with its name; the path as given where neither can be
/// resolved (a link to nothing: SQLite creates its target; a missing
/// directory: the open fails and says so).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return path.to_path_buf();
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir).map_or_else(|_| path.to_path_buf(), |dir| dir.join(name))
}

/// What `path` names (following links) if it is neither a regular file,
/// nor a directory, nor missing: a FIFO, a device or a socket, which
/// SQLite must not be handed (it would wait for ever for a FIFO's writer,
/// and leave a journal beside a device).
#[cfg(unix)]
fn special_file(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).ok()?.file_type();
    if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

#[cfg(not(unix))]
fn special_file(_path: &Path) -> Option<&'static str> {
    None
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

/// SQLite's `-wal` and `-shm` beside a database in WAL mode, as the
/// engine's anchor connection holds them open: which files they were
/// when the engine opened (`None`: there was none).
///
/// SQLite deletes them only when the last connection to the database
/// closes, having taken the exclusive lock that every open connection in
/// WAL mode keeps from it (each holds a shared lock on the database file
/// for as long as it is open); the anchor is open for the engine's life,
/// so they are never deleted by SQLite under a live engine, however its
/// pool opens and closes connections (it keeps none idle) and whatever
/// other processes do. A checkpoint, `TRUNCATE` or `journal_size_limit`
/// included, rewrites or truncates the `-wal` in place: same inode. So a
/// `-wal` or `-shm` that vanished or is another file was deleted by hand
/// (`rm app.db-*`): the engine's connections still write to the `-wal`
/// they hold, which no process opening the file now reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SideFiles {
    wal: Option<FileIdentity>,
    shm: Option<FileIdentity>,
}

impl SideFiles {
    /// The side files beside `db` now.
    pub(crate) fn of(db: &Path) -> SideFiles {
        SideFiles {
            wal: FileIdentity::of(&side_path(db, "-wal")),
            shm: FileIdentity::of(&side_path(db, "-shm")),
        }
    }

    /// The first of the side files found at open that is no longer the
    /// file at its name beside `db` (deleted, or another file), if any.
    pub(crate) fn changed(&self, db: &Path) -> Option<&'static str> {
        [("-wal", self.wal), ("-shm", self.shm)]
            .into_iter()
            .find(|(suffix, found)| {
                found.is_some_and(|id| FileIdentity::of(&side_path(db, suffix)) != Some(id))
            })
            .map(|(suffix, _)| suffix)
    }
}

/// `db` with `suffix` appended to its file name (`app.db` → `app.db-wal`).
fn side_path(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    name.into()
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

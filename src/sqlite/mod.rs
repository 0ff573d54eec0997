//! Everything SQLite: opening a file, its pragmas and pool, migrations, the
//! store and its guard SQL, the change feed, the busy handler, the WAL bound
//! and file-system events — and the SQLite face of the engine (`api.rs`,
//! `txn.rs`): connections, guards in a caller's transaction, the `Txn`
//! builder.

pub(crate) mod api;
pub(crate) mod busy;
pub(crate) mod error;
pub(crate) mod feed;
pub(crate) mod fswatch;
pub(crate) mod history;
pub(crate) mod leadership;
pub(crate) mod open;
pub(crate) mod schema;
pub(crate) mod store;
#[cfg(feature = "testing")]
pub(crate) mod testing;
pub(crate) mod txn;
pub(crate) mod wal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

use crate::core::backend::{Backend, ChangeFeed, Nudge, sealed};
use crate::core::clock::{Clock, LocalTime};
use crate::core::error::{Context, Error, Result};
use crate::core::store::Store;
use crate::sqlite::api::{Immediate, PooledConnection};
use crate::sqlite::busy::Signal;
use crate::sqlite::open::{Anchor, FileIdentity, SideFiles};
use crate::sqlite::store::SqliteStore;

/// The SQLite backend: one database file, shared by any number of
/// processes. [`leasehold::Engine`](crate::Engine) is the engine on it.
///
/// Its promises (see [`Backend`]): operations and guarded writes serialize
/// on SQLite's one write lock (`BEGIN IMMEDIATE`; a deferred transaction's
/// stale snapshot fails its first write with `SQLITE_BUSY_SNAPSHOT`);
/// engine time is this process's clock plus an offset that only grows,
/// never behind the instants it has used and the mark persisted in the file
/// (see `LocalTime`); other processes' commits are
/// noticed through `PRAGMA data_version`, inotify on the `-wal` file, and
/// the event table read from the last event seen.
pub struct Sqlite {
    /// The path as given when opening (what messages name).
    pub(crate) path: PathBuf,
    /// The path as given, made absolute (links left as they are): what it
    /// names must stay the file opened.
    pub(crate) given: PathBuf,
    /// The file opened, every link resolved when the engine opened: every
    /// connection of the engine opens it by this name.
    pub(crate) canonical: PathBuf,
    /// The `-wal` and `-shm` the anchor holds, to notice them deleted or
    /// replaced.
    pub(crate) side_files: SideFiles,
    pub(crate) pool: r2d2::Pool<SqliteConnectionManager>,
    pub(crate) time: LocalTime,
    pub(crate) busy_timeout: Duration,
    pub(crate) event_retention: u64,
    /// Opened with `EngineBuilder::read_only`: never writes.
    pub(crate) read_only: bool,
    /// The file opened, to notice it deleted or replaced; `None` if it
    /// could not be read.
    pub(crate) identity: Option<FileIdentity>,
    /// When the engine was opened, and when (ms after that) the file's
    /// identity was last checked.
    pub(crate) opened: std::time::Instant,
    pub(crate) identity_checked_ms: AtomicU64,
    /// The file at the path is no longer the one opened.
    pub(crate) replaced: AtomicBool,
    /// "Someone waits for the write lock" (see `busy.rs`).
    pub(crate) lock_signal: Option<Arc<Signal>>,
    /// Whether connections wait with SQLite's own handler, whose timeout
    /// is then set at each checkout.
    pub(crate) sqlite_handler: bool,
    /// Whether file-system events tell of other processes' commits.
    pub(crate) file_events: bool,
    /// A connection open for the engine's life, outside the pool (see
    /// `Anchor`); shared with the change feed. Declared after the pool, so
    /// that it closes after the pool's connections.
    pub(crate) anchor: Arc<Anchor>,
}

impl sealed::Sealed for Sqlite {}

impl fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sqlite")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Sqlite {
    /// The database file's path, as given when opening.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file opened, every link resolved: what connections open, what
    /// is watched for writes and what connections are compared with.
    pub(crate) fn watch_path(&self) -> &Path {
        &self.canonical
    }

    /// A pooled connection, waiting at most `budget` for it and later for
    /// the write lock.
    pub(crate) fn conn_within(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
    ) -> Result<PooledConnection> {
        let budget = budget.min(self.busy_timeout);
        crate::sqlite::busy::set_context(budget, self.lock_signal.as_ref());
        match self.pool.get_timeout(budget.max(Duration::from_millis(1))) {
            Ok(conn) => {
                if self.sqlite_handler {
                    // The budget bounds lock waits with this handler too.
                    conn.busy_timeout(budget)
                        .map_err(|e| crate::sqlite::error::fail(ctx(), e, self.busy_timeout))?;
                }
                Ok(PooledConnection(conn))
            }
            Err(e) => Err(Error::PoolTimeout {
                context: ctx(),
                waited: self.busy_timeout,
                size: self.pool.max_size(),
                last_error: e.to_string(),
            }),
        }
    }

    /// Whether `conn` is a connection to this database file.
    pub(crate) fn is_same_database(&self, conn: &Connection) -> bool {
        let Some(theirs) = conn.path().filter(|p| !p.is_empty()) else {
            return false;
        };
        let ours = &self.canonical;
        Path::new(theirs) == ours || std::fs::canonicalize(theirs).is_ok_and(|p| &p == ours)
    }

    /// Persists the high-water mark now if the clock was seen stepping back
    /// since it was last persisted: in a write transaction of its own,
    /// waiting at most 10 ms for the write lock (a reader must not wait for
    /// writers; the next operation, or the background thread, tries again).
    /// Nothing for a read-only engine.
    fn persist_after_step_back(&self) {
        if self.read_only || !self.time.step_back_pending() {
            return;
        }
        let ctx = || Context::new("persist clock");
        let _ = self.write(Duration::from_millis(10), &ctx, |st| {
            let now = st.now().map_err(|e| Error::storage(ctx(), e))?;
            st.finish_write(now.ms)
                .map_err(|e| Error::storage(ctx(), e))
        });
    }
}

impl Backend for Sqlite {
    fn write<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        let conn = self.conn_within(budget, ctx)?;
        let tx = Immediate::begin(&conn, self, ctx)?;
        let mut store = SqliteStore::owned(self, &conn);
        let value = f(&mut store)?;
        let persisted = store.persisted_high_water();
        drop(store);
        tx.commit(ctx)?;
        if let Some((ms, offset)) = persisted {
            self.time.persisted(ms, offset);
        }
        Ok(value)
    }

    fn read<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        let conn = self.conn_within(budget, ctx)?;
        let storage = |e| crate::sqlite::error::fail(ctx(), e, self.busy_timeout);
        conn.prepare_cached("BEGIN")
            .and_then(|mut s| s.execute([]))
            .map_err(storage)?;
        let mut store = SqliteStore::owned(self, &conn);
        let result = f(&mut store);
        drop(store);
        // A read transaction has nothing to lose; end it either way.
        let end = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map_err(storage);
        drop(conn);
        let value = result?;
        end?;
        self.persist_after_step_back();
        Ok(value)
    }

    /// Without `BEGIN`/`COMMIT`: each statement is its own (autocommit)
    /// transaction, which a standalone check needs no more than.
    fn read_unbound<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        let conn = self.conn_within(budget, ctx)?;
        let value = f(&mut SqliteStore::owned(self, &conn))?;
        drop(conn);
        self.persist_after_step_back();
        Ok(value)
    }

    fn now_ms(&self) -> i64 {
        self.time.now_ms()
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.time.clock()
    }

    fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// Whether the file at the engine's path is still the one it opened,
    /// checked at most once per `every`; once it is not, every operation
    /// fails with [`Error::DatabaseReplaced`].
    ///
    /// Both names must still name the file opened (same device and inode):
    /// the path as given, following links as they are now (a link pointed
    /// at another database, or a file moved over the path, is a
    /// replacement: processes opening the path now use that other file),
    /// and the file opened, every link resolved at open (the name the
    /// engine's connections open). And in WAL mode its `-wal` and `-shm`
    /// must still be the files found at open, which SQLite never deletes
    /// under a live engine (see `SideFiles`): deleted or replaced by hand,
    /// the engine's commits go to a `-wal` no other process reads, and a
    /// process opening the file now sees none of them.
    fn ensure_usable(&self, every: Duration) -> Result<()> {
        let replaced = || Error::DatabaseReplaced {
            path: self.path.clone(),
        };
        if self.replaced.load(Ordering::Acquire) {
            return Err(replaced());
        }
        let Some(identity) = self.identity else {
            return Ok(());
        };
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.identity_checked_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < every.as_millis() as u64
            || self
                .identity_checked_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(());
        }
        let main_kept = FileIdentity::of(&self.given) == Some(identity)
            && FileIdentity::of(&self.canonical) == Some(identity);
        let side_changed = if main_kept {
            self.side_files.changed(&self.canonical)
        } else {
            None
        };
        match side_changed {
            None if main_kept => return Ok(()),
            None => log::warn!(
                "leasehold: {} was deleted or replaced since it was opened; its tenures count as lost",
                self.path.display()
            ),
            Some(suffix) => log::warn!(
                "leasehold: {}{suffix} was deleted or replaced since {} was opened: this engine's \
                 commits are no longer seen by processes opening it; its tenures count as lost",
                self.canonical.display(),
                self.path.display()
            ),
        }
        self.replaced.store(true, Ordering::Release);
        Err(replaced())
    }

    fn feed(&self) -> Result<Box<dyn ChangeFeed>> {
        Ok(Box::new(crate::sqlite::feed::SqliteFeed::new(
            self.canonical.clone(),
            self.read_only,
            self.busy_timeout,
            Arc::clone(&self.anchor),
        )))
    }

    fn subscribe(&self, nudge: Weak<dyn Nudge>) -> bool {
        self.file_events && crate::sqlite::fswatch::subscribe(self.watch_path(), nudge)
    }

    fn maintain(&self) {
        self.persist_after_step_back();
    }

    /// Persists the engine's high-water mark and clock offset if either is
    /// ahead of the stored one (best effort: at shutdown and drop, so that
    /// a restart with a clock stepped back does not start behind what this
    /// engine saw, and goes on at the clock's rate from there).
    fn close(&self) {
        if self.read_only || self.replaced.load(Ordering::Acquire) {
            return;
        }
        let Some((now, offset)) = self.time.unpersisted() else {
            return;
        };
        if let Some(conn) = self.pool.try_get()
            && crate::sqlite::store::persist_high_water(&conn, now, offset).is_ok()
        {
            self.time.persisted(now, offset);
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

//! Where a workload runs, and what the orchestrator and its workers do that
//! depends on it: preparing the database, asking who leads, holding the
//! lock a nemesis holds, opening a worker's engine and writing its rows,
//! reading the run back for the checker.

use std::path::Path;
use std::time::Duration;

use crate::core::backend::Backend;
use crate::engine::{Engine, LeaseToken};
use crate::testing::{CheckOptions, CheckReport, OffsetClock};
use crate::{Key, Result};

/// The database a [`Workload`](super::Workload) runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunDatabase {
    /// A SQLite file, `db.sqlite`, in the run's directory (the default).
    Sqlite,
    /// Schema `schema` of the PostgreSQL database at `url`, which must not
    /// hold leasehold's tables yet; the run's histories still go to its
    /// directory.
    #[cfg(feature = "postgres")]
    Postgres {
        /// The connection string.
        url: String,
        /// The schema of leasehold's tables and the writes table.
        schema: String,
    },
}

impl RunDatabase {
    /// Creates the database of a run (refusing one that exists), with the
    /// writes table, keeping every event.
    pub(crate) fn prepare(&self, dir: &Path) -> std::io::Result<()> {
        match self {
            RunDatabase::Sqlite => crate::sqlite::testing::prepare(dir),
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { url, schema } => crate::postgres::testing::prepare(url, schema),
        }
    }

    /// The database as worker `application` (its holder's name) connects
    /// to it: named in the server's sessions, and through `via` (a proxy's
    /// address) if given.
    pub(crate) fn for_worker(
        &self,
        application: &str,
        via: Option<std::net::SocketAddr>,
    ) -> RunDatabase {
        match self {
            RunDatabase::Sqlite => {
                let _ = (application, via);
                RunDatabase::Sqlite
            }
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { url, schema } => RunDatabase::Postgres {
                url: crate::postgres::testing::worker_url(url, via, application),
                schema: schema.clone(),
            },
        }
    }

    /// Ends the server sessions of worker `application`; how many.
    pub(crate) fn terminate(&self, application: &str) -> u32 {
        match self {
            RunDatabase::Sqlite => {
                let _ = application;
                0
            }
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { url, .. } => {
                crate::postgres::testing::terminate(url, application)
            }
        }
    }

    /// The holder the lease row of `key` names, if any.
    pub(crate) fn holder(&self, dir: &Path, key: &Key) -> Option<String> {
        match self {
            RunDatabase::Sqlite => crate::sqlite::testing::holder(dir, key),
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { url, schema } => {
                crate::postgres::testing::holder(url, schema, key)
            }
        }
    }

    /// Takes the lock that stops every claim and guard on `key` (SQLite:
    /// the write lock; PostgreSQL: the lease row's), calls `held`, keeps
    /// it until `length` has passed since it was taken, and lets go.
    /// Whether it was taken (within a lease).
    pub(crate) fn hold_lock(
        &self,
        dir: &Path,
        key: &Key,
        wait: Duration,
        length: Duration,
        held: &mut dyn FnMut(),
    ) -> bool {
        match self {
            RunDatabase::Sqlite => {
                let _ = key;
                crate::sqlite::testing::hold_lock(dir, wait, length, held)
            }
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { url, schema } => {
                crate::postgres::testing::hold_lock(url, schema, key, wait, length, held)
            }
        }
    }

    /// Checks the run recorded in `dir` against the database.
    pub(crate) fn check(
        &self,
        dir: &Path,
        key: &Key,
        opts: CheckOptions,
    ) -> std::io::Result<CheckReport> {
        match self {
            RunDatabase::Sqlite => {
                crate::sqlite::testing::check(&dir.join("db.sqlite"), dir, key, opts)
            }
            #[cfg(feature = "postgres")]
            RunDatabase::Postgres { url, schema } => {
                crate::postgres::testing::pg_check(url, schema, dir, key, opts)
            }
        }
    }
}

/// What a worker needs of its backend: an engine, a pooled connection to
/// hog, and the two styles of guarded write.
pub(crate) trait WorkerSide: Backend {
    /// A pooled connection, held to exhaust the pool.
    type Held;

    /// Opens the worker's engine: `busy` bounds its waits, `pool` is its
    /// pool's size; `clock` is used where the backend's time is the host's.
    fn open(
        database: &RunDatabase,
        dir: &Path,
        clock: OffsetClock,
        busy: Duration,
        pool: u32,
    ) -> Result<Engine<Self>>;

    /// A connection from the engine's pool, if one frees up.
    fn checkout(engine: &Engine<Self>) -> Option<Self::Held>;

    /// A recorded write through the backend's transaction builder.
    fn commit_write(
        engine: &Engine<Self>,
        key: &Key,
        token: Option<&LeaseToken<Self>>,
        write: Recorded<'_>,
    ) -> Result<()>;

    /// A recorded write in a transaction of the worker's own, guarded with
    /// `check_in`; `inside` runs once the guard has passed.
    fn own_txn_write(
        engine: &Engine<Self>,
        key: &Key,
        token: Option<&LeaseToken<Self>>,
        write: Recorded<'_>,
        inside: &dyn Fn(),
    ) -> Result<()>;
}

/// One recorded write: who wrote it, for which tenure, and its number.
/// (Each write also records the wall clock just before its transaction
/// began, and the lease as its transaction saw it.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recorded<'a> {
    pub proc: u32,
    pub holder: &'a str,
    pub epoch: u64,
    pub seq: u64,
}

//! The seam between the lease engine and a database.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::core::clock::Clock;
use crate::core::error::{Context, Result};
use crate::core::key::Key;
use crate::core::store::Store;

/// A database that keeps leases: what [`Engine`](crate::engine::Engine)
/// runs on. Implemented by this crate's backends only (SQLite, the
/// in-memory test backend); the engine is generic over it.
///
/// # The contract
///
/// The engine's safety argument rests on five promises every backend
/// keeps:
///
/// 1. **Operations serialize per key.** An operation's transaction
///    (load → decide → save) serializes with every other operation and
///    every guarded write on the same key: no other transaction changes
///    the row between the load and the commit. SQLite: one writer at a
///    time (`BEGIN IMMEDIATE`). A backend with row locks: the row locked
///    for update before it is read (the store's `lock`), first claims
///    inserting the row if absent and then locking it; a batch locks its
///    keys in one fixed order, and one key that cannot be locked does not
///    fail the others.
/// 2. **A passed guard holds until its transaction ends.** Once a guard
///    passes inside a caller's transaction, until that transaction ends no
///    other tenure of the key can begin and the tenure cannot be released
///    or revoked — or the transaction fails. SQLite: the write lock, or
///    `SQLITE_BUSY_SNAPSHOT` for a deferred transaction whose snapshot a
///    rival's commit made stale. Row locks: a share lock on the lease row
///    held to commit. The lease may still reach its expiry meanwhile; that
///    is liveness, not safety.
/// 3. **Engine time never goes backwards, and comes from the backend.**
///    Time is read through the store inside the operation's transaction,
///    after the row is locked (the store's `now`), never passed in from
///    outside; decisions about a row use `max(now, row's last write)`.
///    SQLite: the process's clock, never behind the instants it has used
///    and the mark persisted in the file. A server: the server's clock.
///    No row shared by all keys is written inside callers' transactions
///    (on a server it would serialize every writer).
/// 4. **Changes by others are noticed, late at worst, never lost.** The
///    change feed reports which keys changed (or that anything may have);
///    a missed notice delays a waiter at most until its next poll, never
///    forever. SQLite: `data_version`, file-system events on the WAL, and
///    the event table read from the last event seen (ids reused after rows
///    were deleted by hand count as "everything changed"). A server:
///    notifications, and "everything changed" after a reconnect.
/// 5. **Transient failures are classified.** A lock that could not be had
///    in time is [`StorageKind::Busy`](crate::StorageKind::Busy); a
///    transaction that must be retried whole (a stale snapshot, a
///    serialization failure, a deadlock) is
///    [`StorageKind::Retry`](crate::StorageKind::Retry); callers retry the
///    whole transaction on [`Error::is_transient`](crate::Error::is_transient).
///
/// # Joining the conformance suite
///
/// A new backend runs the suite in `tests/conformance/`: implement its
/// `Harness` in `tests/conformance/harness.rs` (a fresh database per test,
/// opening engines on it, the backend's own caller transaction, and — if it
/// can — worker processes), then add one line to the `backends:` list of the
/// `conformance!` invocation in `tests/conformance/main.rs`. Every semantic
/// test, guard case, the model-based property test and the history
/// checker's nemesis runs then run on it.
pub trait Backend: Send + Sync + Sized + 'static + sealed::Sealed {
    #[doc(hidden)]
    /// Runs `f` in a write transaction of the backend's own, committing if
    /// it returns `Ok`; waits at most `budget` for a connection and locks.
    fn write<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T>;

    #[doc(hidden)]
    /// Runs `f` in a read transaction of the backend's own.
    fn read<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T>;

    #[doc(hidden)]
    /// Runs `f`, whose reads each stand alone (a token's check: one query,
    /// and a second only to say why it failed), without a transaction of
    /// its own where the backend can; by default in one ([`Backend::read`]).
    fn read_unbound<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        self.read(budget, ctx, f)
    }

    #[doc(hidden)]
    /// Engine time as this process knows it, without a transaction: for
    /// timers and snapshots of trackers (exact for a backend whose time is
    /// the process's own).
    fn now_ms(&self) -> i64;

    #[doc(hidden)]
    /// The clock the backend reads (a manual clock in tests calls back
    /// when moved).
    fn clock(&self) -> &Arc<dyn Clock>;

    #[doc(hidden)]
    /// How long operations wait for locks and connections.
    fn busy_timeout(&self) -> Duration;

    #[doc(hidden)]
    /// Fails if the database can no longer serve the engine (its file was
    /// deleted or replaced); checked at most once per `every`.
    fn ensure_usable(&self, every: Duration) -> Result<()>;

    #[doc(hidden)]
    /// A change feed for the background thread.
    fn feed(&self) -> Result<Box<dyn ChangeFeed>>;

    #[doc(hidden)]
    /// Asks for `nudge` to be called when others may have changed the
    /// database; whether that will happen (else the thread polls).
    fn subscribe(&self, nudge: Weak<dyn Nudge>) -> bool;

    #[doc(hidden)]
    /// Chores of the background thread, each pass.
    fn maintain(&self) {}

    #[doc(hidden)]
    /// Last words when the engine stops or its last handle drops.
    fn close(&self) {}

    #[doc(hidden)]
    /// What the database is, for `Debug`.
    fn describe(&self) -> String;

    #[doc(hidden)]
    /// Whether a call may block past its budget whatever the backend does
    /// (a server behind a cut network: a socket read waits for the TCP
    /// timeouts). The background thread then runs its I/O on a helper
    /// thread and stops waiting at the budget, so that leaders step down on
    /// time.
    const IO_MAY_HANG: bool = false;

    #[doc(hidden)]
    /// Whether a wait for a lock is a wait for one key's row (a server's
    /// row lock), so that a transient error naming a key says that key was
    /// waited for. Else (SQLite's lock is the whole file's) an error names
    /// the key of a batch that holds only one, whatever it waited for.
    const LOCKS_ROWS: bool = false;
}

/// What changed in the database since the last look.
#[derive(Debug)]
pub enum Changes {
    /// Nothing.
    None,
    /// These keys changed hands.
    Keys(HashSet<Key>),
    /// Too much to tell: assume every key changed.
    All,
}

/// A backend's feed of other connections' changes, read by the engine's
/// background thread.
pub trait ChangeFeed: Send {
    /// What changed since the last call (the first call says [`Changes::All`]).
    ///
    /// # Errors
    ///
    /// The database could not be read; the next call must still report
    /// what this one missed.
    fn changes(&mut self) -> Result<Changes>;
}

/// Something to wake when the database may have changed.
pub trait Nudge: Send + Sync {
    /// Wakes it; cheap, and safe to call from any thread.
    fn nudge(&self);
}

impl fmt::Debug for dyn ChangeFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChangeFeed")
    }
}

pub(crate) mod sealed {
    /// Only this crate's backends implement [`Backend`](super::Backend).
    pub trait Sealed {}
}

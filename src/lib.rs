//! Leadership leases stored in your application's own database — SQLite on
//! one host, PostgreSQL across many — whose tokens gate writes inside your
//! own transaction: a write commits only while its writer still leads.
//!
//! ```
//! # let dir = tempfile::tempdir()?;
//! use std::time::Duration;
//! use leasehold::{Engine, Key};
//! use leasehold::rusqlite::TransactionBehavior;
//!
//! // The lease tables live in your application's database file.
//! let engine = Engine::open(dir.path().join("app.db"))?;
//! let key = Key::new("app", "scheduler")?;
//!
//! // Claim the lease; the tenure's token is fixed to its epoch.
//! let tenure = engine.claim(&key, "replica-a", Duration::from_secs(30))?;
//! assert_eq!(tenure.epoch(), 1);
//! let token = tenure.token();
//!
//! // A rival is told who leads.
//! let denied = engine.claim(&key, "replica-b", Duration::from_secs(30));
//! assert!(matches!(denied, Err(leasehold::Error::ClaimDenied { .. })));
//!
//! // Gate a write: it commits only while replica-a still holds this tenure.
//! let mut conn = engine.connection()?;
//! conn.execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY, owner_epoch INTEGER)")?;
//! let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
//! token.check_in(&tx)?;
//! tx.execute("INSERT INTO jobs (owner_epoch) VALUES (?1)", [tenure.epoch()])?;
//! tx.commit()?;
//!
//! // After a release (or expiry, or revoke) the old token fails.
//! engine.release(&key, "replica-a")?;
//! assert!(token.check().is_err());
//! assert_eq!(engine.claim(&key, "replica-b", Duration::from_secs(30))?.epoch(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What a lease is
//!
//! - A **key** is a namespace and a name; a **holder** holds it for a
//!   **tenure**, numbered by an **epoch** that grows by one per tenure and is
//!   never reused.
//! - [`Engine::claim`] succeeds when the key is vacant or already the
//!   claimant's (then it *extends*: same epoch, expiry never moves earlier),
//!   and guarantees the lease until at least the call's start plus the
//!   duration. Otherwise it fails with [`Error::ClaimDenied`] naming the
//!   holder.
//! - [`Engine::release`] ends a tenure; [`Engine::revoke`] ends anyone's.
//! - [`Engine::pin`] keeps a lease from expiring (per entity, optionally
//!   until a deadline), for maintenance while agents are down.
//! - A [`LeaseToken`] vouches for a holder (or one tenure of it) and is
//!   checked in a [`Txn`], in your transaction, or as an SQL [`Guard`].
//! - A [`LeaseTracker`] keeps claiming a lease in the background and answers
//!   with [`LeaseTicket`]s; [`Engine::block_until_released`] waits for a
//!   vacancy.
//! - The [`leadership`] module mirrors Juju's leadership interfaces on top.
//!
//! # Backends and modules
//!
//! The engine is generic over a [`Backend`]: [`engine::Engine`]`<B>` and the
//! tenures, tokens and trackers it hands out work the same on each, because
//! every backend keeps the same promises (written on [`Backend`]).
//!
//! - [`Sqlite`] — one database file, any number of processes. The names at
//!   the crate root are its instances ([`Engine`], [`Tenure`],
//!   [`LeaseToken`], [`LeaseTracker`]…), with its own face: opening
//!   ([`Engine::open`], [`EngineBuilder`]), [`Engine::connection`],
//!   guards in your `rusqlite` transaction ([`LeaseToken::check_in`]), as
//!   SQL ([`Guard`]) or in a [`Txn`], and operations in your transaction
//!   ([`Engine::in_txn`]).
//! - `postgres` (feature `postgres`, on with the default `cli`) — a schema
//!   of a PostgreSQL database, for services on several hosts: time from the
//!   server, the lease row locked `FOR UPDATE` by each operation and `FOR
//!   SHARE` by each guard, hand-over pushed with `LISTEN`/`NOTIFY` (see the
//!   module's docs for isolation levels, timeouts, poolers and replicas).
//! - [`memory`] — the whole contract in one process, for unit tests.
//! - [`engine`] — the generic types, for code written over any backend.
//! - [`leadership`] — Juju's leadership traits on top.
//! - `testing` (feature `testing`) — the history recorder and checker and a
//!   multi-process workload with nemeses.
//!
//! # Concurrency guarantees
//!
//! - **Safety.** A write guarded by a token of holder H commits only if, at
//!   its commit, no other tenure of the key has begun and H's tenure was not
//!   released or revoked; a token from a claim commits only inside that exact
//!   tenure. This holds whatever the clocks do and however long a process
//!   pauses, because the guard is evaluated inside the same SQLite write
//!   transaction as the write, and SQLite commits one writer at a time. (On
//!   PostgreSQL the guard's `FOR SHARE` on the lease row, held to commit,
//!   keeps every tenure change waiting instead.)
//! - **Liveness depends on time.** When a lapsed lease may be taken over is
//!   decided by the engine's clock ([`Clock`]). Within an engine, time never
//!   runs backwards: engine time is the clock's reading plus an offset that
//!   only grows. Each engine keeps a high-water mark of the instants it has
//!   used; when its clock reads behind it (a step back), the offset grows by
//!   as much, so time goes on from the mark at the clock's rate. Each lease
//!   row records the time of its last write, so a clock stepped back cannot
//!   revive an expired lease or lengthen a tenure for that engine, or for
//!   any engine judging that row. The offset is never taken back: after a
//!   step back of X, engine time stays X ahead of the clock.
//! - **Clock steps across processes.** An engine opened later starts no
//!   earlier than the mark persisted in the database, with at least the
//!   offset persisted there, and goes on at its clock's rate: a mark left
//!   by a clock far ahead does not freeze time for the engines after it.
//!   An engine persists the time it has used and its offset with its write
//!   transactions (at most a second behind) and, once its offset grew by
//!   more than 100 ms (a step back), at once — after a read too, in a
//!   write of its own that waits at most 10 ms for the lock (else its next
//!   operation or its background thread tries again). Not covered: a step
//!   back that no engine able to write saw before the next engine opened —
//!   a read-only engine's time, or time a process used only in reads in
//!   the second before it was killed. A lease that expired in that window
//!   may then look held to the newcomer for as long as the step: later,
//!   never unsafe.
//! - **Processes.** Any number of processes may open the same file. Engines
//!   are `Clone + Send + Sync`; clones share a connection pool.
//! - **Blocking.** Operations block for at most the busy timeout waiting for
//!   SQLite's write lock or a pooled connection, then fail with
//!   [`Error::Busy`] or [`Error::PoolTimeout`] having changed nothing.
//!   [`Engine::block_until_released`] blocks until the lease is vacant, and
//!   is woken within about a millisecond when another process releases it.
//! - **Background work.** Each engine runs at most one background thread
//!   (trackers, waiters), started on first use; dropping the last handle
//!   ends it. Its errors go to the [`HandleError`] set on the builder.
//!
//! # Storage
//!
//! Tables and indexes are named `leasehold_*`; `PRAGMA user_version` is left
//! to your application. The database is switched to WAL. Migrations are
//! embedded ([`migrations`]) and applied on open, or by your own migration
//! tool through [`migrate`]; a table of yours with a name leasehold needs is
//! refused ([`Error::SchemaConflict`]) before anything is written.
//!
//! - **Opening reads first.** The schema version is read, and the write
//!   lock taken only to migrate; a current database in WAL mode is opened
//!   without writing or waiting for a writer.
//!   [`EngineBuilder::read_only`] never writes at all (nor creates files
//!   beside the database): what tools that only look should use.
//! - **The file must stay the file.** An engine notices, within about a
//!   second, that the file at its path was deleted or replaced: every
//!   operation then fails with [`Error::DatabaseReplaced`] and trackers
//!   step down, since its connections would keep writing to a file nobody
//!   else sees (where a fresh file would start epochs at 1 again).
//! - **History is bounded.** The newest [`EngineBuilder::event_retention`]
//!   events are kept; [`Engine::wait_for_events`] tells a reader that fell
//!   further behind (or whose position was cut by hand) through
//!   [`Events::gap`].
//!
//! What each operation writes: an extension (a renewal, or a claim by the
//! current holder) updates the key's one row, the single page a raw upsert
//! would write; a claim that starts a tenure, a release, a revoke and a pin
//! change also append a row to the key's history (`leasehold_events`,
//! trimmed to the newest [`EngineBuilder::event_retention`] rows), a second
//! page. A guard only reads. `cargo bench --bench report` measures each
//! next to raw SQLite doing the same write.

mod core;
mod driver;
pub mod engine;
pub mod leadership;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::core::backend::Backend;
pub use crate::core::clock::{Clock, ManualClock, SystemClock};
pub use crate::core::error::{Context, Error, Found, Result, StorageError, StorageKind};
pub use crate::core::event::{Event, EventKind, Events, Gap};
pub use crate::core::guard_sql::GuardSql;
pub use crate::core::key::{Key, MAX_DURATION, MAX_NAME_LEN, MAX_REASON_LEN};
pub use crate::core::snapshot::{Lease, Pin};
pub use crate::core::ticket::LeaseTicket;
pub use crate::core::transfer::{
    ExportedLease, ExportedPin, ImportSummary, MAX_IMPORTED_EPOCH, Snapshot,
};
pub use crate::driver::{BackgroundStats, HandleError, LogErrors};
pub use crate::sqlite::Sqlite;
pub use crate::sqlite::api::{Guard, InTxn, PooledConnection};
pub use crate::sqlite::busy::LockWait;
pub use crate::sqlite::open::{EngineBuilder, Synchronous};
pub use crate::sqlite::schema::{Migration, SCHEMA_VERSION, migrate, migrations, schema_version};
pub use crate::sqlite::txn::{IntoParams, Op, Txn};

/// The lease engine on a SQLite file: [`engine::Engine`] on [`Sqlite`].
pub type Engine = engine::Engine<Sqlite>;
/// One tenure of one holder, on SQLite; see [`engine::Tenure`].
pub type Tenure = engine::Tenure<Sqlite>;
/// A token vouching for a holder, on SQLite; see [`engine::LeaseToken`].
pub type LeaseToken = engine::LeaseToken<Sqlite>;
/// A tracker on SQLite; see [`engine::LeaseTracker`].
pub type LeaseTracker = engine::LeaseTracker<Sqlite>;
/// Configures a tracker on SQLite; see [`engine::TrackerBuilder`].
pub type TrackerBuilder = engine::TrackerBuilder<Sqlite>;
/// Leadership in hand, on SQLite; see [`engine::Leading`].
pub type Leading = engine::Leading<Sqlite>;

pub use chrono;
pub use rusqlite;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync_for_every_backend() {
        fn each<B: crate::Backend>() {
            assert_send_sync::<crate::engine::Engine<B>>();
            assert_send_sync::<crate::engine::LeaseToken<B>>();
            assert_send_sync::<crate::engine::Tenure<B>>();
            assert_send_sync::<crate::engine::LeaseTracker<B>>();
        }
        each::<crate::Sqlite>();
        each::<crate::memory::Memory>();
        assert_send_sync::<crate::Txn>();
        assert_send_sync::<crate::Error>();
        assert_send_sync::<crate::Events>();
    }
}

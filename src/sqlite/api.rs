//! The SQLite face of the engine: opening, connections of its pool, lease
//! operations and guards inside a caller's `rusqlite` transaction, and the
//! guard as an SQL predicate.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, ToSql};

use crate::core::error::{Context, Error, Result};
use crate::core::event::Event;
use crate::core::key::{Key, duration_ms};
use crate::core::ops;
use crate::core::snapshot::Lease;
use crate::core::store::Store;
use crate::engine::{Engine, LeaseToken, Tenure};
use crate::sqlite::Sqlite;
use crate::sqlite::open::EngineBuilder;
use crate::sqlite::store::{FENCED_GUARD_SQL, GUARD_SQL, SqliteStore};
use crate::sqlite::txn::{Op, Txn};

impl Engine<Sqlite> {
    /// Opens (creating if needed) the database at `path` with default
    /// settings; see [`Engine::builder`].
    ///
    /// # Errors
    ///
    /// As [`EngineBuilder::build`].
    pub fn open(path: impl AsRef<Path>) -> Result<Engine<Sqlite>> {
        Self::builder(path).build()
    }

    /// A builder to configure the engine before opening `path`.
    pub fn builder(path: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder::new(path.as_ref())
    }

    /// The database file's path, as given when opening.
    pub fn path(&self) -> &Path {
        self.backend().path()
    }

    /// Takes a connection from the engine's pool, for your own transactions
    /// on the same database (see [`LeaseToken::check_in`]).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] after [`Engine::shutdown`]; [`Error::PoolTimeout`]
    /// if no connection frees up within the busy timeout.
    pub fn connection(&self) -> Result<PooledConnection> {
        let ctx = || Context::new("connect");
        self.ensure_running(&ctx)?;
        self.backend().conn_within(self.busy_timeout(), &ctx)
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
        if !self.backend().is_same_database(conn) {
            return Err(Error::invalid(
                "connection",
                conn.path().unwrap_or(""),
                format!("is not connected to {}", self.path().display()),
            ));
        }
        Ok(InTxn { engine: self, conn })
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
        self.ensure_running(&ctx)?;
        // A Txn writes the application's rows and only reads leases: no
        // waiter or tracker needs telling.
        let conn = self.backend().conn_within(self.busy_timeout(), &ctx)?;
        let tx = Immediate::begin(&conn, self.backend(), &ctx)?;
        let changes = txn.run_ops(&conn)?;
        tx.commit(&ctx)?;
        Ok(changes)
    }
}

/// An open `BEGIN IMMEDIATE` on an engine connection; rolls back on drop
/// unless committed, so a panic or an error never returns a connection to the
/// pool with a transaction open.
pub(crate) struct Immediate<'c> {
    conn: &'c Connection,
    db: &'c Sqlite,
    done: bool,
}

impl<'c> Immediate<'c> {
    pub(crate) fn begin(
        conn: &'c Connection,
        db: &'c Sqlite,
        ctx: &dyn Fn() -> Context,
    ) -> Result<Immediate<'c>> {
        let started = std::time::Instant::now();
        conn.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(|e| crate::sqlite::error::fail(ctx(), e, started.elapsed()))?;
        Ok(Immediate {
            conn,
            db,
            done: false,
        })
    }

    pub(crate) fn commit(mut self, ctx: &dyn Fn() -> Context) -> Result<()> {
        self.done = true;
        let result = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        if let Err(e) = result {
            self.done = false; // still open: roll back on drop
            return Err(crate::sqlite::error::fail(ctx(), e, self.db.busy_timeout));
        }
        // Take turns for the write lock (see `busy.rs`). The WAL's
        // checkpoints happen in SQLite's WAL hook (see `wal.rs`).
        crate::sqlite::busy::after_commit();
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
pub struct PooledConnection(pub(crate) r2d2::PooledConnection<SqliteConnectionManager>);

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

/// Evaluates `token`'s guard on `conn`, inside whatever transaction it is
/// in: the one check behind `check_in` and a `Txn`'s lease assertions.
pub(crate) fn check_on(
    token: &LeaseToken<Sqlite>,
    conn: &Connection,
    op: Option<(usize, Option<&str>)>,
) -> Result<()> {
    let db = token.engine().backend();
    if !db.is_same_database(conn) {
        return Err(Error::invalid(
            "connection",
            conn.path().unwrap_or(""),
            format!(
                "is not connected to {}, where the lease is kept",
                db.path().display()
            ),
        ));
    }
    let mut store = SqliteStore::borrowed(db, conn);
    ops::check_guard(&mut store, token.spec(), op)
}

impl LeaseToken<Sqlite> {
    /// Checks the token inside your open transaction on `conn` (a
    /// `&Transaction` or `&Savepoint` derefs to one). If it passes, your
    /// transaction's writes commit only while the holder holds the lease.
    ///
    /// Either transaction flavour is correct:
    ///
    /// - **Immediate** (`TransactionBehavior::Immediate`): the write lock is
    ///   held from `BEGIN`, so the check and your writes see one state.
    /// - **Deferred** (the default): the check reads the snapshot your
    ///   transaction started with. If another connection commits before your
    ///   first write, that write fails with `SQLITE_BUSY_SNAPSHOT` — visible as
    ///   [`rusqlite::Error`] with extended code 517, or as
    ///   [`Error::is_transient`] from this crate — and you must roll back and
    ///   retry the whole transaction, check included. An immediate
    ///   transaction never needs that retry.
    ///
    /// The guarantee covers writes to the database that holds the lease.
    /// Writes to an `ATTACH`ed database in the same transaction are fenced
    /// only if the transaction is immediate (a stale snapshot of the main
    /// database does not stop them).
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`] if the holder does not hold the lease (roll back);
    /// [`Error::InvalidArgument`] if `conn` is not in a transaction or is
    /// connected to another database; [`Error::Storage`].
    ///
    /// # Retrying a deferred transaction
    ///
    /// A stale snapshot surfaces at your first write or at `COMMIT`, as a
    /// [`rusqlite::Error`]; `?` turns it into this crate's [`Error`] (see
    /// `From<rusqlite::Error>`), whose [`Error::is_transient`] says to retry.
    /// Retry the *whole* transaction, guard included: the guard's answer
    /// belonged to the old snapshot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use leasehold::{Engine, Key, LeaseToken};
    ///
    /// /// Records a run, in a deferred transaction, retried whole when a
    /// /// commit by another connection made its snapshot stale.
    /// fn record_run(engine: &Engine, token: &LeaseToken, day: &str) -> leasehold::Result<()> {
    ///     let mut attempt = 0;
    ///     loop {
    ///         let mut conn = engine.connection()?;
    ///         let mut once = || -> leasehold::Result<()> {
    ///             let tx = conn.transaction()?; // deferred: reads first
    ///             token.check_in(&tx)?;
    ///             tx.execute("INSERT INTO runs (day) VALUES (?1)", [day])?;
    ///             tx.commit()?;
    ///             Ok(())
    ///         };
    ///         match once() {
    ///             Err(e) if e.is_transient() && attempt < 8 => {
    ///                 attempt += 1;
    ///                 std::thread::sleep(Duration::from_millis(1 << attempt));
    ///             }
    ///             done => return done,
    ///         }
    ///     }
    /// }
    ///
    /// let engine = Engine::open(dir.path().join("app.db"))?;
    /// engine.connection()?.execute_batch("CREATE TABLE runs (day TEXT)")?;
    /// let key = Key::new("jobs", "nightly")?;
    /// let token = engine.claim(&key, "worker-1", Duration::from_secs(30))?.token();
    /// record_run(&engine, &token, "2026-11-30")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use leasehold::{Engine, Key};
    /// use leasehold::rusqlite::TransactionBehavior;
    ///
    /// let engine = Engine::open(dir.path().join("app.db"))?;
    /// let key = Key::new("jobs", "nightly-report")?;
    /// let token = engine.claim(&key, "worker-1", Duration::from_secs(30))?.token();
    ///
    /// let mut conn = engine.connection()?;
    /// conn.execute_batch("CREATE TABLE reports (day TEXT)")?;
    /// let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    /// token.check_in(&tx)?;
    /// tx.execute("INSERT INTO reports VALUES ('2026-11-25')", [])?;
    /// tx.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_in(&self, conn: &Connection) -> Result<()> {
        if conn.is_autocommit() {
            return Err(Error::invalid(
                "connection",
                conn.path().unwrap_or(""),
                "is not inside a transaction; a check outside one guards nothing",
            ));
        }
        check_on(self, conn, None)
    }

    /// The token as an SQL predicate with its parameters, for your own
    /// statements: `UPDATE t SET … WHERE id = ? AND <guard>`. If the guard
    /// fails the statement changes no rows, so check the row count (and call
    /// [`LeaseToken::check_in`] to learn why).
    ///
    /// The guard reads the engine's time whenever its parameters are taken
    /// ([`Guard::params`], [`Guard::bind`]), so take them just before the
    /// statement runs; a guard kept for later stays correct. Its SQL text is
    /// constant, so `prepare_cached` works.
    ///
    /// Run the statement in an immediate transaction (or alone, in
    /// autocommit mode, on the database that holds the lease). In a
    /// deferred transaction, or when the statement writes to an ATTACHed
    /// database, the guard reads `main` without its write lock, and another
    /// process may claim the lease before your write commits.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use leasehold::{Engine, Key};
    /// use leasehold::rusqlite::params_from_iter;
    ///
    /// let engine = Engine::open(dir.path().join("app.db"))?;
    /// let key = Key::new("app", "billing")?;
    /// let token = engine.claim(&key, "node-a", Duration::from_secs(30))?.token();
    ///
    /// let conn = engine.connection()?;
    /// conn.execute_batch("CREATE TABLE config (k TEXT PRIMARY KEY, v TEXT);
    ///                     INSERT INTO config VALUES ('mode', 'old')")?;
    /// let guard = token.guard();
    /// let sql = format!("UPDATE config SET v = ? WHERE k = ? AND {}", guard.sql());
    /// let changed = conn.execute(&sql, params_from_iter(guard.bind(&[&"new", &"mode"])))?;
    /// assert_eq!(changed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn guard(&self) -> Guard {
        let spec = self.spec();
        let mut params: Vec<Value> = vec![
            spec.key.namespace().to_owned().into(),
            spec.key.name().to_owned().into(),
            spec.holder.clone().into(),
        ];
        let sql = match spec.epoch {
            Some(epoch) => {
                params.push(Value::Integer(epoch as i64));
                FENCED_GUARD_SQL
            }
            None => GUARD_SQL,
        };
        Guard {
            sql,
            fixed: params,
            engine: self.engine().clone(),
        }
    }

    /// Adds this token's guard to `txn` as an assertion op.
    pub fn add_to(&self, txn: &mut Txn) {
        txn.op(Op::new().assert_lease(self));
    }
}

/// A token's guard as an SQL predicate and its parameters; from
/// [`LeaseToken::guard`].
///
/// The predicate uses anonymous `?` placeholders, bound after any that come
/// before it in your statement's text: put your own parameters first with
/// [`Guard::bind`], or number yours and append [`Guard::params`].
#[derive(Clone, Debug)]
pub struct Guard {
    sql: &'static str,
    /// Namespace, name, holder (and epoch); the time comes last, read when
    /// the parameters are taken.
    fixed: Vec<Value>,
    engine: Engine<Sqlite>,
}

impl Guard {
    /// The predicate: an `EXISTS (…)` expression, true while the token holds.
    pub fn sql(&self) -> &'static str {
        self.sql
    }

    /// The predicate with numbered placeholders, `?first`, `?first+1`, …,
    /// for a statement whose own parameters are numbered `?1` to
    /// `?first-1` (or come after, numbered past the guard's): bind
    /// [`Guard::params`] at those positions.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use leasehold::{Engine, Key};
    /// use leasehold::rusqlite::params_from_iter;
    ///
    /// let engine = Engine::open(dir.path().join("app.db"))?;
    /// let token = engine.claim(&Key::new("app", "cfg")?, "n1", Duration::from_secs(30))?.token();
    /// let conn = engine.connection()?;
    /// conn.execute_batch("CREATE TABLE config (k TEXT, v TEXT); INSERT INTO config VALUES ('a', 'x')")?;
    /// let guard = token.guard();
    /// let sql = format!("UPDATE config SET v = ?1 WHERE k = ?2 AND {}", guard.sql_numbered(3));
    /// let mut params: Vec<Box<dyn leasehold::rusqlite::ToSql>> = vec![Box::new("y"), Box::new("a")];
    /// params.extend(guard.params().into_iter().map(|p| Box::new(p) as Box<dyn leasehold::rusqlite::ToSql>));
    /// assert_eq!(conn.execute(&sql, params_from_iter(params))?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sql_numbered(&self, first: usize) -> String {
        let mut out = String::with_capacity(self.sql.len() + 16);
        let mut n = first;
        for c in self.sql.chars() {
            if c == '?' {
                out.push('?');
                out.push_str(&n.to_string());
                n += 1;
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The predicate's parameters, in placeholder order, with the engine's
    /// time as of this call.
    pub fn params(&self) -> Vec<ToSqlOutput<'_>> {
        let mut all: Vec<ToSqlOutput<'_>> = self
            .fixed
            .iter()
            .map(|v| ToSqlOutput::Borrowed(v.into()))
            .collect();
        all.push(ToSqlOutput::Owned(Value::Integer(self.engine.now_ms())));
        all
    }

    /// `before` followed by the guard's parameters (the time as of this
    /// call): the full parameter list of a statement whose guard comes after
    /// all its own placeholders.
    pub fn bind<'a>(&'a self, before: &[&'a dyn ToSql]) -> Vec<Box<dyn ToSql + 'a>> {
        let mut all: Vec<Box<dyn ToSql + 'a>> = Vec::with_capacity(before.len() + 5);
        all.extend(before.iter().map(|p| Box::new(*p) as Box<dyn ToSql + 'a>));
        all.extend(
            self.params()
                .into_iter()
                .map(|p| Box::new(p) as Box<dyn ToSql + 'a>),
        );
        all
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql)
    }
}

/// Lease operations on a transaction you own; from [`Engine::in_txn`].
///
/// Each method changes only what its [`Engine`] counterpart changes, inside
/// your transaction: nothing is visible to others, and nothing is final,
/// until you commit. The guarantees of a claim start when your transaction
/// commits, but are measured from the instant of the call, so commit
/// promptly. A [`Tenure`] (and its token) from a claim you then roll back
/// describes a tenure that never existed: drop it, since its epoch may be
/// given to the next real tenure.
pub struct InTxn<'c> {
    engine: &'c Engine<Sqlite>,
    conn: &'c Connection,
}

impl<'c> InTxn<'c> {
    /// Runs `f` on a store over your transaction (made for the call, so
    /// that nothing outlives your borrow of the connection).
    fn with<T>(&self, f: impl FnOnce(&mut dyn Store) -> Result<T>) -> Result<T> {
        f(&mut SqliteStore::borrowed(self.engine.backend(), self.conn))
    }

    /// As [`Engine::claim`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim`]. After an error, roll your transaction back: a
    /// failed statement may have left part of its work.
    pub fn claim(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure<Sqlite>> {
        let row = self.with(|st| ops::claim(st, key, holder, duration, false, None))?;
        Ok(self.engine.tenure(key, holder, row))
    }

    /// As [`Engine::claim_new`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim_new`]; after an error, roll your transaction back.
    pub fn claim_new(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure<Sqlite>> {
        let row = self.with(|st| ops::claim(st, key, holder, duration, true, None))?;
        Ok(self.engine.tenure(key, holder, row))
    }

    /// As [`Engine::extend`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::extend`].
    pub fn extend(&self, tenure: &Tenure<Sqlite>, duration: Duration) -> Result<Tenure<Sqlite>> {
        let ms = duration_ms("duration", duration)?;
        let ctx = || {
            Context::new("extend")
                .key(tenure.key())
                .holder(tenure.holder())
        };
        let until = self.with(|st| {
            let now = st.now().map_err(|e| Error::storage(ctx(), e))?;
            ops::extend_epoch(st, tenure.key(), tenure.holder(), tenure.epoch(), ms, now)
        })?;
        Ok(Tenure {
            expires_at: tenure.expires_at().max(crate::core::clock::from_ms(until)),
            extended: true,
            ..tenure.clone()
        })
    }

    /// As [`Engine::release`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::release`].
    pub fn release(&self, key: &Key, holder: &str) -> Result<()> {
        self.with(|st| ops::release(st, key, holder))
    }

    /// As [`Engine::revoke`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::revoke`].
    pub fn revoke(&self, key: &Key) -> Result<Option<Lease>> {
        self.with(|st| ops::revoke(st, key))
    }

    /// As [`Engine::pin`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::pin`].
    pub fn pin(
        &self,
        key: &Key,
        entity: &str,
        reason: &str,
        expires_after: Option<Duration>,
    ) -> Result<()> {
        self.with(|st| ops::pin(st, key, entity, reason, expires_after))
    }

    /// As [`Engine::unpin`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::unpin`].
    pub fn unpin(&self, key: &Key, entity: &str) -> Result<bool> {
        self.with(|st| ops::unpin(st, key, entity))
    }

    /// As [`Engine::lease`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::lease`].
    pub fn lease(&self, key: &Key) -> Result<Option<Lease>> {
        self.with(|st| ops::lease(st, key))
    }

    /// As [`Engine::leases`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::leases`].
    pub fn leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        self.with(|st| ops::leases(st, namespace))
    }

    /// As [`Engine::all_leases`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::all_leases`].
    pub fn all_leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        self.with(|st| ops::all_leases(st, namespace))
    }

    /// As [`Engine::history`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::history`].
    pub fn history(&self, key: &Key, limit: usize) -> Result<Vec<Event>> {
        self.with(|st| ops::history(st, key, limit))
    }
}

impl fmt::Debug for InTxn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InTxn")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

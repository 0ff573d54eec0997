//! Tokens and the guards they emit.

use std::fmt;

use chrono::{DateTime, Utc};

use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, ToSql, params};

use crate::core::error::{Context, Error, Found, Result};
use crate::core::key::Key;
use crate::engine::Engine;
use crate::store::{
    FENCED_GUARD_QUERY, FENCED_GUARD_SQL, GUARD_QUERY, GUARD_SQL, SqliteStore, Store,
};
use crate::txn::{Op, Txn};

/// A claim that a holder holds a lease, which can be checked — best inside
/// the transaction whose writes it should gate.
///
/// From [`Engine::token`] (asserts "holder holds the key now", in any tenure)
/// or [`Tenure::token`](crate::Tenure::token) (also fixes the tenure's epoch:
/// fails once that tenure ends, even if the same holder claims again).
/// Holding a token proves nothing by itself; check it. Three ways, one rule:
///
/// - [`LeaseToken::add_to`]: an assertion op in a [`Txn`] the engine commits;
/// - [`LeaseToken::check_in`]: inside your own open transaction;
/// - [`LeaseToken::guard`]: an SQL predicate for your own `UPDATE … WHERE`.
///
/// # Concurrency
///
/// A guard evaluated inside a write transaction stays true until that
/// transaction ends: SQLite lets one writer at a time commit, so no rival
/// tenure can begin between the check and the commit. The write therefore
/// commits only while the holder leads — however the clocks behave and
/// however long the process paused before it. In a deferred transaction the
/// check reads a snapshot; if another connection commits before your first
/// write, SQLite refuses that write with `SQLITE_BUSY_SNAPSHOT` (see
/// [`LeaseToken::check_in`]), so the rule still holds.
#[derive(Clone)]
pub struct LeaseToken {
    engine: Engine,
    key: Key,
    holder: String,
    epoch: Option<u64>,
}

impl LeaseToken {
    pub(crate) fn new(engine: Engine, key: Key, holder: String, epoch: Option<u64>) -> LeaseToken {
        LeaseToken {
            engine,
            key,
            holder,
            epoch,
        }
    }

    /// The lease this token speaks for.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The holder it vouches for.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The tenure it is fixed to, for tokens from a claim.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Checks the token now, outside any transaction of yours. The answer may
    /// be stale by the time you act on it; to gate a write, check inside the
    /// write's transaction instead.
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`] saying what the database holds instead;
    /// [`Error::Storage`], [`Error::PoolTimeout`], [`Error::Stopped`].
    pub fn check(&self) -> Result<()> {
        let conn = self.engine.conn(|| self.context())?;
        self.verify(&conn, None)
    }

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
        self.verify(conn, None)
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
        let mut params: Vec<Value> = vec![
            self.key.namespace().to_owned().into(),
            self.key.name().to_owned().into(),
            self.holder.clone().into(),
        ];
        let sql = match self.epoch {
            Some(epoch) => {
                params.push(Value::Integer(epoch as i64));
                FENCED_GUARD_SQL
            }
            None => GUARD_SQL,
        };
        Guard {
            sql,
            fixed: params,
            engine: self.engine.clone(),
        }
    }

    /// Adds this token's guard to `txn` as an assertion op.
    pub fn add_to(&self, txn: &mut Txn) {
        txn.op(Op::new().assert_lease(self));
    }

    fn context(&self) -> Context {
        Context::new("check").key(&self.key).holder(&self.holder)
    }

    /// Evaluates the guard on `conn`, which must be on this engine's database.
    pub(crate) fn verify(
        &self,
        conn: &Connection,
        op: Option<(usize, Option<&str>)>,
    ) -> Result<()> {
        if !self.engine.is_same_database(conn) {
            return Err(Error::invalid(
                "connection",
                conn.path().unwrap_or(""),
                format!(
                    "is not connected to {}, where the lease is kept",
                    self.engine.path().display()
                ),
            ));
        }
        let now = self.engine.now_ms();
        let storage = |e| crate::sqlite::error::fail(self.context(), e, self.engine.busy_timeout());
        // The guard itself first (what a guard in your SQL evaluates); the
        // whole row only to say why it failed.
        let (ns, name, holder) = (self.key.namespace(), self.key.name(), &self.holder);
        let held = match self.epoch {
            Some(epoch) => conn
                .prepare_cached(FENCED_GUARD_QUERY)
                .and_then(|mut s| s.exists(params![ns, name, holder, epoch as i64, now])),
            None => conn
                .prepare_cached(GUARD_QUERY)
                .and_then(|mut s| s.exists(params![ns, name, holder, now])),
        }
        .map_err(storage)?;
        if held {
            return Ok(());
        }
        let rec = SqliteStore::new(conn).load(&self.key).map_err(storage)?;
        // Outside a transaction the two reads may see different commits
        // (a claim may land in between), so only a transaction's view is
        // held to agreement.
        debug_assert!(
            conn.is_autocommit()
                || !rec
                    .as_ref()
                    .is_some_and(|r| r.is_held_by(&self.holder, self.epoch, now)),
            "the guard SQL and Record::is_held_by disagree"
        );
        Err(Error::GuardFailed {
            op: op.map(|(i, _)| i),
            label: op.and_then(|(_, l)| l.map(str::to_owned)),
            key: self.key.clone(),
            holder: self.holder.clone(),
            expected_epoch: self.epoch,
            found: rec.map_or(Found::Absent, |r| r.found(now)),
        })
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseToken")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("epoch", &self.epoch)
            .finish()
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
    engine: Engine,
}

impl Guard {
    /// The predicate: an `EXISTS (…)` expression, true while the token holds.
    pub fn sql(&self) -> &'static str {
        self.sql
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

/// The result of a successful claim: one tenure of one holder.
///
/// The lease is guaranteed to be held until at least the instant taken just
/// before the claim call plus the claimed duration; measure that instant
/// yourself. [`Tenure::token`] gives a token fixed to this very tenure.
#[derive(Clone)]
pub struct Tenure {
    pub(crate) engine: Engine,
    pub(crate) key: Key,
    pub(crate) holder: String,
    pub(crate) epoch: u64,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) extended: bool,
}

impl Tenure {
    /// The lease's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The holder.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The tenure's fencing epoch: larger than every earlier tenure's of this
    /// key, and never reused.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When this tenure began (for an extension, when it first began).
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// The stored expiry after this claim. Pins may hold the lease beyond it.
    /// (From [`Engine::extend`](crate::Engine::extend) or
    /// [`InTxn::extend`](crate::InTxn::extend): a lower bound.)
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Whether this claim extended a tenure the holder already held, rather
    /// than starting a new one.
    pub fn is_extension(&self) -> bool {
        self.extended
    }

    /// A token that holds only while this holder holds the key *in this
    /// tenure*: it fails after a release, a revoke, an expiry, and also after
    /// the same holder re-claims a lapsed lease (a new epoch).
    pub fn token(&self) -> LeaseToken {
        LeaseToken::new(
            self.engine.clone(),
            self.key.clone(),
            self.holder.clone(),
            Some(self.epoch),
        )
    }
}

impl fmt::Debug for Tenure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenure")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("epoch", &self.epoch)
            .field("started_at", &self.started_at)
            .field("expires_at", &self.expires_at)
            .field("extended", &self.extended)
            .finish()
    }
}

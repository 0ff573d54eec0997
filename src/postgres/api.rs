//! The PostgreSQL face of the engine: pooled clients, lease operations and
//! guards inside a caller's `postgres::Transaction`, the guard as an SQL
//! fragment with numbered placeholders, and the transaction builder.

use std::fmt;
use std::time::Duration;

use postgres::Transaction;
use postgres::types::ToSql;

use crate::core::clock::from_ms;
use crate::core::error::{Context, Error, Result};
use crate::core::event::Event;
use crate::core::key::{Key, duration_ms};
use crate::core::ops;
use crate::core::snapshot::Lease;
use crate::core::store::Store;
use crate::engine::{Engine, LeaseToken, Tenure};
use crate::postgres::error::{fail, storage};
use crate::postgres::store::PgStore;
use crate::postgres::{PgPooledClient, Postgres};

/// A parameter of a [`PgTxn`] statement or of a [`PgGuard`].
type Param = Box<dyn ToSql + Sync + Send>;

impl Engine<Postgres> {
    /// A client from the engine's pool, for your own transactions on the
    /// same database (see [`LeaseToken::check_in`](crate::engine::LeaseToken)).
    /// Set `idle_in_transaction_session_timeout` on connections of your own
    /// (the engine's pool does). A client returned to the pool inside a
    /// transaction (begun by hand and never ended) has it rolled back
    /// before the engine uses the connection again.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] after [`Engine::shutdown`]; [`Error::PoolTimeout`]
    /// if no connection frees up within the busy timeout.
    pub fn client(&self) -> Result<PgPooledClient> {
        let ctx = || Context::new("connect");
        self.ensure_running(&ctx)?;
        let mut client = self.backend().client_within(self.busy_timeout(), &ctx)?;
        client.lent = true;
        Ok(client)
    }

    /// Runs lease operations inside a transaction you own (a savepoint is
    /// one too), so that they commit or roll back with your other writes.
    /// Each operation locks its key's row until your transaction ends.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `tx` is not on the tables this engine
    /// opened (another database, with or without leasehold's tables in a
    /// schema of the same name): its operations would claim and release
    /// there, out of the engine's sight. Storage errors. Roll `tx` back
    /// after an error.
    pub fn in_txn<'t, 'c>(&'t self, tx: &'t mut Transaction<'c>) -> Result<PgInTxn<'t, 'c>> {
        let db = self.backend();
        let same = PgStore::new(&mut *tx, db, false)
            .same_instance()
            .map_err(|e| Error::storage(Context::new("in_txn"), e))?;
        if !same {
            return Err(Error::invalid(
                "transaction",
                "in_txn",
                format!(
                    "is on another database than the leasehold tables this engine opened \
                     (schema {} of {}); its lease operations would happen there",
                    db.schema, db.describe
                ),
            ));
        }
        Ok(PgInTxn { engine: self, tx })
    }

    /// Runs `txn` in one transaction: every assertion first (lease guards
    /// take `FOR SHARE` on their rows), in order, then every mutation, in
    /// order; all or nothing. Returns the rows each op's mutation changed.
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`] or [`Error::AssertionFailed`] naming the first
    /// op whose assertion failed; [`Error::StatementFailed`] naming the op
    /// whose statement failed; [`Error::InvalidArgument`] for a token of
    /// another schema; storage errors ([`Error::is_transient`] for a
    /// serialization failure, a deadlock or a deadline: retry). Nothing was
    /// written in every case.
    pub fn commit(&self, txn: &PgTxn) -> Result<Vec<u64>> {
        let ctx = || Context::new("commit");
        self.ensure_running(&ctx)?;
        let budget = self.busy_timeout();
        let mut client = self.backend().client_within(budget, &ctx)?;
        let mut tx = client.transaction().map_err(|e| fail(ctx(), e, budget))?;
        let ms = budget.as_millis().max(1);
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}"
        ))
        .map_err(|e| fail(ctx(), e, budget))?;
        let changes = txn.run_ops(&mut tx)?;
        tx.commit().map_err(|e| fail(ctx(), e, budget))?;
        Ok(changes)
    }
}

/// Evaluates `token`'s guard inside `tx`: the one check behind `check_in`
/// and a [`PgTxn`]'s lease assertions. It takes `FOR SHARE` on the lease
/// row, held until `tx` ends.
fn check_on(
    token: &LeaseToken<Postgres>,
    tx: &mut Transaction<'_>,
    op: Option<(usize, Option<&str>)>,
) -> Result<()> {
    let db = token.engine().backend();
    let mut store = PgStore::new(tx, db, false);
    let foreign = || {
        Error::invalid(
            "token",
            &token.spec().key.to_string(),
            format!(
                "belongs to the leasehold tables of {}; this transaction is on another database",
                db.describe
            ),
        )
    };
    match ops::check_guard(&mut store, token.spec(), op) {
        // The guard also fails on another database's tables: say so
        // rather than what that database holds.
        Err(Error::GuardFailed { .. }) | Err(Error::Storage { .. })
            if !store.same_instance().unwrap_or(true) =>
        {
            Err(foreign())
        }
        Err(Error::Storage { source, .. })
            if source
                .downcast_ref::<postgres::Error>()
                .is_some_and(crate::postgres::error::is_missing_object) =>
        {
            Err(foreign())
        }
        result => result,
    }
}

impl LeaseToken<Postgres> {
    /// Checks the token inside your open transaction `tx` (a savepoint is
    /// one too). If it passes, the lease row is locked `FOR SHARE` until
    /// `tx` ends: no rival claim, release or revoke commits before it, so
    /// your writes commit only while the holder holds the lease.
    ///
    /// - Put it first in the transaction (the lock order is then always
    ///   lease row → your rows).
    /// - Rolling back a savepoint drops the lock the guard took in it:
    ///   check at the level of the writes it guards.
    /// - At every isolation level a deadlock (`40P01`) is possible, and at
    ///   REPEATABLE READ and SERIALIZABLE a concurrent renewal fails the
    ///   check with `40001`: both are [`Error::is_transient`]; retry the
    ///   whole transaction.
    /// - A paused or cut-off process inside such a transaction holds up its
    ///   successor until the server ends its session: set
    ///   `idle_in_transaction_session_timeout`, `tcp_user_timeout` and
    ///   keepalives on your connections.
    /// - Guards need the primary (`FOR SHARE` is refused on a standby).
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`](crate::Error::GuardFailed) if the holder does
    /// not hold the lease (roll back); storage errors.
    pub fn check_in(&self, tx: &mut Transaction<'_>) -> Result<()> {
        check_on(self, tx, None)
    }

    /// The token as an SQL fragment for your own statements
    /// (`UPDATE … WHERE … AND <guard>`), its placeholders numbered from
    /// `first` (`$first`, `$first+1`, …) so that they follow yours. It
    /// locks the lease row `FOR SHARE` while your statement runs and until
    /// your transaction ends. If it fails, the statement changes no rows:
    /// check the count.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use leasehold::Key;
    /// # use leasehold::postgres::PgEngine;
    /// # let engine = PgEngine::connect("host=/run/postgresql dbname=app")?;
    /// # let token = engine.claim(&Key::new("app", "cfg")?, "n1", Duration::from_secs(30))?.token();
    /// let guard = token.guard(3);
    /// let sql = format!("UPDATE config SET v = $1 WHERE k = $2 AND {}", guard.sql());
    /// let mut params: Vec<&(dyn leasehold::postgres::client::types::ToSql + Sync)> = vec![&"new", &"mode"];
    /// params.extend(guard.params());
    /// let changed = engine.client()?.execute(sql.as_str(), &params)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn guard(&self, first: usize) -> PgGuard {
        let spec = self.spec();
        let db = self.engine().backend();
        let n = |i: usize| format!("${}", first + i);
        let mut params: Vec<Param> = vec![
            Box::new(spec.key.namespace().to_owned()),
            Box::new(spec.key.name().to_owned()),
            Box::new(spec.holder.clone()),
        ];
        let epoch = match spec.epoch {
            Some(e) => {
                params.push(Box::new(i64::try_from(e).unwrap_or(i64::MAX)));
                format!(" AND l.epoch = {}::bigint", n(3))
            }
            None => String::new(),
        };
        let now_at = params.len();
        // The engine's own clock when it has one (tests), else the server's.
        params.push(Box::new(db.time.as_ref().map(|t| t.now_ms())));
        params.push(Box::new(db.instance.clone()));
        let sql = format!(
            "EXISTS (SELECT 1 FROM {s}.leasehold_leases l
                     WHERE l.namespace = {ns}::text AND l.name = {name}::text AND l.holder = {holder}::text{epoch}
                       AND greatest(l.expiry_ms, l.pinned_until_ms)
                           > greatest(coalesce({now}::bigint, {s}.leasehold_now_us() / 1000), l.updated_ms)
                       AND (SELECT uuid::text FROM {s}.leasehold_instance) = {instance}::text
                       AND pg_advisory_xact_lock_shared(hashtextextended({ns}::text || '/' || {name}::text, {turns}))::text = ''
                     FOR SHARE OF l)",
            s = db.quoted,
            ns = n(0),
            name = n(1),
            holder = n(2),
            now = n(now_at),
            instance = n(now_at + 1),
            turns = crate::postgres::store::TURNS,
        );
        PgGuard { sql, params }
    }

    /// Adds this token's guard to `txn` as an assertion op.
    pub fn add_to(&self, txn: &mut PgTxn) {
        txn.op(PgOp::new().assert_lease(self));
    }
}

/// A token's guard as an SQL fragment and its parameters; from
/// [`LeaseToken::guard`](crate::engine::LeaseToken).
pub struct PgGuard {
    sql: String,
    params: Vec<Param>,
}

impl PgGuard {
    /// The fragment: an `EXISTS (…)` expression, true while the token holds.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its parameters, in placeholder order.
    pub fn params(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        self.params.iter().map(|p| &**p as &(dyn ToSql + Sync))
    }
}

impl fmt::Debug for PgGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgGuard").field("sql", &self.sql).finish()
    }
}

/// A list of [`PgOp`]s committed as one transaction by
/// [`Engine::commit`](crate::engine::Engine) on PostgreSQL, in the manner
/// of mgo/txn: every assertion first (lease guards take `FOR SHARE`), then
/// every mutation, all or nothing.
#[derive(Default)]
pub struct PgTxn {
    ops: Vec<PgOp>,
}

impl fmt::Debug for PgTxn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTxn")
            .field("ops", &self.ops.len())
            .finish()
    }
}

/// One op of a [`PgTxn`]: an optional assertion and an optional mutation.
#[derive(Default)]
#[must_use = "an op does nothing until added to a PgTxn"]
pub struct PgOp {
    label: Option<String>,
    assertion: Option<PgAssertion>,
    mutation: Option<(String, Vec<Param>)>,
}

impl fmt::Debug for PgOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOp")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

enum PgAssertion {
    Lease(LeaseToken<Postgres>),
    Exists(String, Vec<Param>),
}

impl PgOp {
    /// An empty op.
    pub fn new() -> PgOp {
        PgOp::default()
    }

    /// A label that errors name alongside the op's index.
    pub fn label(mut self, label: impl Into<String>) -> PgOp {
        self.label = Some(label.into());
        self
    }

    /// Asserts that `token` holds.
    pub fn assert_lease(mut self, token: &LeaseToken<Postgres>) -> PgOp {
        self.assertion = Some(PgAssertion::Lease(token.clone()));
        self
    }

    /// Asserts that `query` returns at least one row.
    pub fn assert_exists(mut self, query: &str, params: Vec<Param>) -> PgOp {
        self.assertion = Some(PgAssertion::Exists(query.to_owned(), params));
        self
    }

    /// The op's mutation.
    pub fn execute(mut self, sql: &str, params: Vec<Param>) -> PgOp {
        self.mutation = Some((sql.to_owned(), params));
        self
    }
}

impl PgTxn {
    /// An empty transaction.
    pub fn new() -> PgTxn {
        PgTxn::default()
    }

    /// Appends an op.
    pub fn op(&mut self, op: PgOp) -> &mut PgTxn {
        self.ops.push(op);
        self
    }

    /// Appends an op that only mutates.
    pub fn execute(&mut self, sql: &str, params: Vec<Param>) -> &mut PgTxn {
        self.op(PgOp::new().execute(sql, params))
    }

    /// The number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies the ops inside your transaction `tx`, in a savepoint: on
    /// error the savepoint is rolled back and `tx` is as it was.
    ///
    /// # Errors
    ///
    /// As [`Engine::commit`](crate::engine::Engine) on PostgreSQL.
    pub fn apply(&self, tx: &mut Transaction<'_>) -> Result<Vec<u64>> {
        let mut sp = tx
            .savepoint("leasehold_txn")
            .map_err(|e| fail(Context::new("apply"), e, Duration::ZERO))?;
        let changes = self.run_ops(&mut sp)?;
        sp.commit()
            .map_err(|e| fail(Context::new("apply"), e, Duration::ZERO))?;
        Ok(changes)
    }

    fn run_ops(&self, tx: &mut Transaction<'_>) -> Result<Vec<u64>> {
        for (i, op) in self.ops.iter().enumerate() {
            match &op.assertion {
                Some(PgAssertion::Lease(token)) => {
                    check_on(token, tx, Some((i, op.label.as_deref())))?;
                }
                Some(PgAssertion::Exists(sql, params)) => {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                    let rows =
                        tx.query(sql.as_str(), &params)
                            .map_err(|e| Error::StatementFailed {
                                op: i,
                                label: op.label.clone(),
                                sql: sql.clone(),
                                source: storage(e, Duration::ZERO),
                            })?;
                    if rows.is_empty() {
                        return Err(Error::AssertionFailed {
                            op: i,
                            label: op.label.clone(),
                            sql: sql.clone(),
                        });
                    }
                }
                None => {}
            }
        }
        let mut changes = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            let n = match &op.mutation {
                Some((sql, params)) => {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                    tx.execute(sql.as_str(), &params)
                        .map_err(|e| Error::StatementFailed {
                            op: i,
                            label: op.label.clone(),
                            sql: sql.clone(),
                            source: storage(e, Duration::ZERO),
                        })?
                }
                None => 0,
            };
            changes.push(n);
        }
        Ok(changes)
    }
}

/// Lease operations on a PostgreSQL transaction you own; from
/// [`Engine::in_txn`](crate::engine::Engine) on PostgreSQL. Each locks its
/// key's row until your transaction ends; nothing is final until you
/// commit.
pub struct PgInTxn<'t, 'c> {
    engine: &'t Engine<Postgres>,
    tx: &'t mut Transaction<'c>,
}

impl fmt::Debug for PgInTxn<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgInTxn").finish_non_exhaustive()
    }
}

impl PgInTxn<'_, '_> {
    fn with<T>(&mut self, f: impl FnOnce(&mut dyn Store) -> Result<T>) -> Result<T> {
        let db = self.engine.backend();
        let (value, changed) = {
            let mut store = PgStore::new(&mut *self.tx, db, false);
            let value = f(&mut store)?;
            (value, std::mem::take(&mut store.changed))
        };
        // Inside your transaction: PostgreSQL delivers the notices when
        // it commits, and drops them if it rolls back.
        db.notify_in(&mut *self.tx, &changed)?;
        Ok(value)
    }

    /// As [`Engine::claim`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim`]; after an error, roll your transaction back.
    pub fn claim(
        &mut self,
        key: &Key,
        holder: &str,
        duration: Duration,
    ) -> Result<Tenure<Postgres>> {
        let row = self.with(|st| ops::claim(st, key, holder, duration, false, None))?;
        Ok(self.engine.tenure(key, holder, row))
    }

    /// As [`Engine::claim_new`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim_new`].
    pub fn claim_new(
        &mut self,
        key: &Key,
        holder: &str,
        duration: Duration,
    ) -> Result<Tenure<Postgres>> {
        let row = self.with(|st| ops::claim(st, key, holder, duration, true, None))?;
        Ok(self.engine.tenure(key, holder, row))
    }

    /// As [`Engine::extend`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::extend`].
    pub fn extend(
        &mut self,
        tenure: &Tenure<Postgres>,
        duration: Duration,
    ) -> Result<Tenure<Postgres>> {
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
        let mut extended = tenure.clone();
        extended.expires_at = tenure.expires_at().max(from_ms(until));
        extended.extended = true;
        Ok(extended)
    }

    /// As [`Engine::release`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::release`].
    pub fn release(&mut self, key: &Key, holder: &str) -> Result<()> {
        self.with(|st| ops::release(st, key, holder))
    }

    /// As [`Engine::revoke`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::revoke`].
    pub fn revoke(&mut self, key: &Key) -> Result<Option<Lease>> {
        self.with(|st| ops::revoke(st, key))
    }

    /// As [`Engine::pin`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::pin`].
    pub fn pin(
        &mut self,
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
    pub fn unpin(&mut self, key: &Key, entity: &str) -> Result<bool> {
        self.with(|st| ops::unpin(st, key, entity))
    }

    /// As [`Engine::lease`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::lease`].
    pub fn lease(&mut self, key: &Key) -> Result<Option<Lease>> {
        self.with(|st| ops::lease(st, key))
    }

    /// As [`Engine::history`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::history`].
    pub fn history(&mut self, key: &Key, limit: usize) -> Result<Vec<Event>> {
        self.with(|st| ops::history(st, key, limit))
    }
}

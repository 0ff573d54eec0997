//! A transaction builder in the manner of mgo/txn: ops that assert and
//! mutate, asserted first, applied all or nothing.

use std::fmt;

use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, ToSql, params_from_iter};

use crate::core::error::{Context, Error, Result};
use crate::engine::LeaseToken;
use crate::sqlite::Sqlite;

/// A list of [`Op`]s committed as one transaction by [`Engine::commit`](crate::Engine::commit) (or
/// applied inside yours by [`Txn::apply`]).
///
/// - Every op's assertion is checked first, in order. The first that fails
///   stops the transaction: nothing is written and the error names the op.
/// - Then every op's mutation runs, in order.
/// - Lease assertions are evaluated inside the write transaction, so the
///   mutations commit only while each asserted holder still holds its lease.
///
/// A `Txn` holds owned copies of its parameters and can be committed again
/// (say, after [`Error::Busy`]).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// use std::time::Duration;
/// use leasehold::{Engine, Key, Op, Txn};
///
/// let engine = Engine::open(dir.path().join("bank.db"))?;
/// let conn = engine.connection()?;
/// conn.execute_batch("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER);
///                     INSERT INTO accounts VALUES ('alice', 100), ('bob', 0);")?;
/// let key = Key::new("app", "ledger-writer")?;
/// let tenure = engine.claim(&key, "replica-1", Duration::from_secs(30))?;
///
/// let mut txn = Txn::new();
/// tenure.token().add_to(&mut txn);
/// txn.op(Op::new()
///     .label("debit alice")
///     .assert_exists("SELECT 1 FROM accounts WHERE id = ? AND balance >= ?", ("alice", 30))
///     .execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (30, "alice")));
/// txn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (30, "bob"));
/// assert_eq!(engine.commit(&txn)?, vec![0, 1, 1]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Txn {
    ops: Vec<Op>,
}

/// One op of a [`Txn`]: an optional assertion and an optional mutation.
#[derive(Clone, Debug, Default)]
#[must_use = "an op does nothing until added to a Txn"]
pub struct Op {
    label: Option<String>,
    assertion: Option<Assertion>,
    mutation: Option<Statement>,
}

#[derive(Clone, Debug)]
enum Assertion {
    /// A lease guard: the token's assertion, evaluated by the SQLite store
    /// on the transaction's connection.
    Lease(LeaseToken<Sqlite>),
    Exists(Statement),
}

#[derive(Clone)]
struct Statement {
    sql: String,
    /// Owned parameters, or why one could not be converted.
    params: std::result::Result<Vec<Value>, String>,
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("sql", &self.sql)
            .field("params", &self.params)
            .finish()
    }
}

/// Parameters for [`Op`] statements: tuples of up to eight values, arrays,
/// slices and vectors of values, and `rusqlite::params![…]`.
pub trait IntoParams {
    /// Converts every parameter to an owned SQLite value.
    ///
    /// # Errors
    ///
    /// A description of the first parameter that cannot be converted.
    fn into_values(self) -> std::result::Result<Vec<Value>, String>;
}

fn owned(p: &dyn ToSql) -> std::result::Result<Value, String> {
    match p.to_sql().map_err(|e| e.to_string())? {
        ToSqlOutput::Owned(v) => Ok(v),
        ToSqlOutput::Borrowed(v) => Value::try_from(v).map_err(|e| e.to_string()),
        _ => Err("parameter kind not supported in a Txn".to_owned()),
    }
}

impl IntoParams for () {
    fn into_values(self) -> std::result::Result<Vec<Value>, String> {
        Ok(Vec::new())
    }
}

impl<T: ToSql> IntoParams for &[T] {
    fn into_values(self) -> std::result::Result<Vec<Value>, String> {
        self.iter().map(|p| owned(p)).collect()
    }
}

impl<T: ToSql, const N: usize> IntoParams for [T; N] {
    fn into_values(self) -> std::result::Result<Vec<Value>, String> {
        self.iter().map(|p| owned(p)).collect()
    }
}

impl<T: ToSql, const N: usize> IntoParams for &[T; N] {
    fn into_values(self) -> std::result::Result<Vec<Value>, String> {
        self.iter().map(|p| owned(p)).collect()
    }
}

impl<T: ToSql> IntoParams for Vec<T> {
    fn into_values(self) -> std::result::Result<Vec<Value>, String> {
        self.iter().map(|p| owned(p)).collect()
    }
}

macro_rules! tuple_params {
    ($($name:ident),+) => {
        impl<$($name: ToSql),+> IntoParams for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_values(self) -> std::result::Result<Vec<Value>, String> {
                let ($($name,)+) = self;
                Ok(vec![$(owned(&$name)?),+])
            }
        }
    };
}
tuple_params!(A);
tuple_params!(A, B);
tuple_params!(A, B, C);
tuple_params!(A, B, C, D);
tuple_params!(A, B, C, D, E);
tuple_params!(A, B, C, D, E, F);
tuple_params!(A, B, C, D, E, F, G);
tuple_params!(A, B, C, D, E, F, G, H);

impl Statement {
    fn new(sql: &str, params: impl IntoParams) -> Statement {
        Statement {
            sql: sql.to_owned(),
            params: params.into_values(),
        }
    }

    /// The parameters; parameters were checked before any statement ran, so
    /// the error case is unreachable after that check.
    fn values(&self, op: usize) -> std::result::Result<&[Value], InvalidParams> {
        self.params.as_deref().map_err(|reason| InvalidParams {
            op,
            sql: self.sql.clone(),
            reason: reason.clone(),
        })
    }
}

/// A parameter that could not be converted to an SQLite value.
#[derive(Debug)]
struct InvalidParams {
    op: usize,
    sql: String,
    reason: String,
}

impl From<InvalidParams> for Error {
    fn from(e: InvalidParams) -> Error {
        Error::invalid("parameter", &format!("op {}: {}", e.op, e.sql), e.reason)
    }
}

impl From<InvalidParams> for rusqlite::Error {
    fn from(e: InvalidParams) -> rusqlite::Error {
        rusqlite::Error::ToSqlConversionFailure(e.reason.into())
    }
}

impl Op {
    /// An empty op; add an assertion, a mutation, or both.
    pub fn new() -> Op {
        Op::default()
    }

    /// A label that errors name alongside the op's index.
    pub fn label(mut self, label: impl Into<String>) -> Op {
        self.label = Some(label.into());
        self
    }

    /// Asserts that `token` holds (see [`LeaseToken`]). Replaces any earlier
    /// assertion of this op.
    pub fn assert_lease(mut self, token: &LeaseToken<Sqlite>) -> Op {
        self.assertion = Some(Assertion::Lease(token.clone()));
        self
    }

    /// Asserts that `query` returns at least one row, for example
    /// `SELECT 1 FROM accounts WHERE id = ? AND balance >= ?`. Replaces any
    /// earlier assertion of this op.
    pub fn assert_exists(mut self, query: &str, params: impl IntoParams) -> Op {
        self.assertion = Some(Assertion::Exists(Statement::new(query, params)));
        self
    }

    /// The op's mutation: any statement that returns no rows. Replaces any
    /// earlier mutation of this op.
    pub fn execute(mut self, sql: &str, params: impl IntoParams) -> Op {
        self.mutation = Some(Statement::new(sql, params));
        self
    }
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Appends an op.
    pub fn op(&mut self, op: Op) -> &mut Txn {
        self.ops.push(op);
        self
    }

    /// Appends an op asserting that `token` holds.
    pub fn assert_lease(&mut self, token: &LeaseToken<Sqlite>) -> &mut Txn {
        self.op(Op::new().assert_lease(token))
    }

    /// Appends an op asserting that `query` returns a row.
    pub fn assert_exists(&mut self, query: &str, params: impl IntoParams) -> &mut Txn {
        self.op(Op::new().assert_exists(query, params))
    }

    /// Appends an op that only mutates.
    pub fn execute(&mut self, sql: &str, params: impl IntoParams) -> &mut Txn {
        self.op(Op::new().execute(sql, params))
    }

    /// The number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies the ops inside your open transaction on `conn`, within a
    /// savepoint: on error the savepoint is rolled back and your
    /// transaction is left as it was before the call. See
    /// [`LeaseToken::check_in`] for deferred transactions.
    ///
    /// # Errors
    ///
    /// - [`Error::GuardFailed`], [`Error::AssertionFailed`],
    ///   [`Error::StatementFailed`] and [`Error::InvalidArgument`] as for
    ///   [`Engine::commit`](crate::Engine::commit), and
    ///   [`Error::InvalidArgument`] if `conn` is not inside a transaction;
    ///   your transaction is as it was before the call (the ops ran in a
    ///   savepoint, rolled back);
    /// - [`Error::TransactionLost`] if an op's error made SQLite roll back
    ///   your whole transaction;
    /// - [`Error::Storage`] if SQLite fails otherwise (the savepoint, or a
    ///   lease guard's query).
    pub fn apply(&self, conn: &Connection) -> Result<Vec<usize>> {
        if conn.is_autocommit() {
            return Err(Error::invalid(
                "connection",
                conn.path().unwrap_or(""),
                "is not inside a transaction; use Engine::commit to run a Txn on its own",
            ));
        }
        let fail = |source| crate::sqlite::error::stored(Context::new("apply"), source);
        conn.execute_batch("SAVEPOINT leasehold_txn")
            .map_err(fail)?;
        match self.run_ops(conn) {
            Ok(changes) => {
                conn.execute_batch("RELEASE leasehold_txn").map_err(fail)?;
                Ok(changes)
            }
            Err(e) => {
                // Some errors end the whole transaction, savepoint and all:
                // say so, or the caller would write on in autocommit mode.
                if conn.is_autocommit() {
                    return Err(Error::TransactionLost { cause: Box::new(e) });
                }
                // Report the op's error; a failed rollback of the savepoint
                // leaves the caller's transaction to be rolled back by them.
                let _ = conn.execute_batch("ROLLBACK TO leasehold_txn; RELEASE leasehold_txn");
                Err(e)
            }
        }
    }

    /// Runs the ops on `conn`, already inside a transaction: every
    /// parameter is checked first, then every assertion, then every mutation.
    pub(crate) fn run_ops(&self, conn: &Connection) -> Result<Vec<usize>> {
        // Prepared once, checked, then run: (assertion, mutation) per op.
        let mut prepared = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            let mut assertion = None;
            if let Some(Assertion::Exists(stmt)) = &op.assertion {
                stmt.values(i)?;
                let s = conn
                    .prepare_cached(&stmt.sql)
                    .map_err(|e| op.failed(i, stmt, e))?;
                if !s.readonly() || s.column_count() == 0 {
                    return Err(op.misuse(
                        i,
                        stmt,
                        "an assertion must be a query that only reads (SELECT …)",
                    ));
                }
                assertion = Some(s);
            }
            let mut mutation = None;
            if let Some(stmt) = &op.mutation {
                stmt.values(i)?;
                let s = conn
                    .prepare_cached(&stmt.sql)
                    .map_err(|e| op.failed(i, stmt, e))?;
                if s.readonly() {
                    // Includes BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE,
                    // which would end the transaction the guards run in.
                    return Err(op.misuse(
                        i,
                        stmt,
                        "a mutation must be a statement that writes; queries and transaction control are not allowed",
                    ));
                }
                mutation = Some(s);
            }
            prepared.push((assertion, mutation));
        }
        for (i, (op, (assertion, _))) in self.ops.iter().zip(&mut prepared).enumerate() {
            match (&op.assertion, assertion) {
                (Some(Assertion::Lease(token)), _) => {
                    crate::sqlite::api::check_on(token, conn, Some((i, op.label.as_deref())))?;
                }
                (Some(Assertion::Exists(stmt)), Some(s)) => {
                    let found = s
                        .exists(params_from_iter(stmt.values(i)?))
                        .map_err(|e| op.failed(i, stmt, e))?;
                    if !found {
                        return Err(Error::AssertionFailed {
                            op: i,
                            label: op.label.clone(),
                            sql: stmt.sql.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        let mut changes = Vec::with_capacity(self.ops.len());
        for (i, (op, (_, mutation))) in self.ops.iter().zip(&mut prepared).enumerate() {
            let n = match (&op.mutation, mutation) {
                (Some(stmt), Some(s)) => s
                    .execute(params_from_iter(stmt.values(i)?))
                    .map_err(|e| op.failed(i, stmt, e))?,
                _ => 0,
            };
            changes.push(n);
        }
        if conn.is_autocommit() {
            // Unreachable with the checks above; never report success for
            // writes that ran outside the guarded transaction.
            return Err(Error::invalid(
                "txn",
                "",
                "a statement ended the transaction; its writes were not guarded",
            ));
        }
        Ok(changes)
    }
}

impl Op {
    fn misuse(&self, index: usize, stmt: &Statement, reason: &str) -> Error {
        Error::invalid("statement", &format!("op {index}: {}", stmt.sql), reason)
    }

    fn failed(&self, index: usize, stmt: &Statement, source: rusqlite::Error) -> Error {
        Error::StatementFailed {
            op: index,
            label: self.label.clone(),
            sql: stmt.sql.clone(),
            source: crate::sqlite::error::storage(source, std::time::Duration::ZERO),
        }
    }
}

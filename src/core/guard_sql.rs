//! The guard as SQL text, for clients that are not this library: every
//! value bound as a literal, in the dialect of the database.

use std::fmt;

use crate::core::error::{Error, Result};
use crate::core::key::{Key, validate_name};

/// A lease's guard as SQL text, with every value written as a quoted
/// literal: for SQL clients that are not this library (`sqlite3`, `psql`, a
/// migration tool, a shell script), which cannot hold a token.
///
/// Two forms, both checking, at the moment they run, that `holder` holds
/// the key (in `epoch`, if one is given) by the database's own clock:
///
/// - [`statement`](GuardSql::statement): a statement to put first in a
///   transaction. It fails unless the lease is held, and the error names
///   the key, the holder and what the database holds instead. Passing, it
///   keeps any tenure from ending or beginning until the transaction ends
///   (SQLite: it takes the write lock; PostgreSQL: it locks the lease row
///   `FOR SHARE`).
/// - [`predicate`](GuardSql::predicate): a boolean expression for one
///   statement's `WHERE` (`UPDATE t SET … WHERE … AND <predicate>`), which
///   then writes nothing unless the lease is held.
///
/// Neither has a trailing semicolon. The statement needs schema 5 on
/// SQLite and 2 on PostgreSQL (any engine opened for writing migrates to
/// it); the predicate reads the same tables.
///
/// **A client must stop at the guard's error.** On PostgreSQL the failed
/// statement aborts the transaction: every later statement fails, and
/// `COMMIT` rolls back (unless the client rolls back to a savepoint, as
/// psql's `ON_ERROR_ROLLBACK` does, which also undoes a passed guard's
/// hold). On SQLite only the guard statement fails and the
/// transaction stays open: a client that carries on after an error (the
/// `sqlite3` shell reading a script without `-bail`) would run the rest
/// and commit it unguarded. Use `sqlite3 -bail` and `psql -v
/// ON_ERROR_STOP=1` with `BEGIN`…`COMMIT` (or `psql -1`), or put the
/// predicate in every write.
///
/// ```
/// use leasehold::{GuardSql, Key};
///
/// let key = Key::new("ops", "schema-migration")?;
/// let guard = GuardSql::sqlite(&key, "host-1", Some(7))?;
/// assert_eq!(
///     guard.statement(),
///     "INSERT INTO main.leasehold_guard (namespace, name, holder, epoch) \
///      VALUES ('ops', 'schema-migration', 'host-1', 7)"
/// );
/// # Ok::<(), leasehold::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardSql {
    statement: String,
    predicate: String,
}

impl GuardSql {
    /// The guard in SQLite's dialect, on the database's `main` schema.
    ///
    /// The statement is an insert into the `leasehold_guard` view: run it
    /// first inside `BEGIN IMMEDIATE` (in a deferred transaction it takes
    /// the write lock itself, or fails with `SQLITE_BUSY`). It works with
    /// any SQLite from 3.38 (JSON built in), such as Debian 12's 3.40.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a holder that is empty, too long, has
    /// surrounding whitespace or a control character, or an epoch of 0 or
    /// above `i64::MAX`.
    pub fn sqlite(key: &Key, holder: &str, epoch: Option<u64>) -> Result<GuardSql> {
        let epoch = checked(holder, epoch)?;
        let (ns, name, holder) = (
            sqlite_literal(key.namespace()),
            sqlite_literal(key.name()),
            sqlite_literal(holder),
        );
        let epoch_value = epoch.map_or_else(|| "NULL".to_owned(), |e| e.to_string());
        let epoch_condition = epoch.map_or_else(String::new, |e| format!(" AND epoch = {e}"));
        Ok(GuardSql {
            statement: format!(
                "INSERT INTO main.leasehold_guard (namespace, name, holder, epoch) \
                 VALUES ({ns}, {name}, {holder}, {epoch_value})"
            ),
            predicate: format!(
                "EXISTS (SELECT 1 FROM main.leasehold_leases \
                 WHERE namespace = {ns} AND name = {name} AND holder = {holder}{epoch_condition} \
                 AND max(expiry_ms, pinned_until_ms) \
                 > max((SELECT now_ms FROM main.leasehold_now), updated_ms))"
            ),
        })
    }

    /// The guard in PostgreSQL's dialect, on leasehold's tables in
    /// `schema`: `SELECT <schema>.leasehold_guard(…)`, and the predicate
    /// `(SELECT <schema>.leasehold_holds(…))`. Text values are written as
    /// escape-string literals (`E'…'`), which read the same whatever the
    /// server's `standard_conforming_strings`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] as for [`GuardSql::sqlite`], and for an
    /// empty schema name or one with a control character.
    pub fn postgres(schema: &str, key: &Key, holder: &str, epoch: Option<u64>) -> Result<GuardSql> {
        let epoch = checked(holder, epoch)?;
        validate_name("schema", schema)?;
        let schema = format!("\"{}\"", schema.replace('"', "\"\""));
        let args = format!(
            "{}, {}, {}, {}",
            pg_literal(key.namespace()),
            pg_literal(key.name()),
            pg_literal(holder),
            epoch.map_or_else(|| "NULL".to_owned(), |e| e.to_string())
        );
        Ok(GuardSql {
            statement: format!("SELECT {schema}.leasehold_guard({args})"),
            predicate: format!("(SELECT {schema}.leasehold_holds({args}))"),
        })
    }

    /// The guard statement, to run first in a transaction.
    pub fn statement(&self) -> &str {
        &self.statement
    }

    /// The guard as a boolean expression, for one statement's `WHERE`.
    pub fn predicate(&self) -> &str {
        &self.predicate
    }
}

impl fmt::Display for GuardSql {
    /// The statement.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.statement)
    }
}

/// Checks the holder; the epoch as SQL's integer.
fn checked(holder: &str, epoch: Option<u64>) -> Result<Option<i64>> {
    validate_name("holder", holder)?;
    if epoch == Some(0) {
        return Err(Error::invalid(
            "epoch",
            "0",
            "no tenure has epoch 0 (the first is 1): the guard could never pass",
        ));
    }
    epoch
        .map(|e| {
            i64::try_from(e).map_err(|_| {
                Error::invalid("epoch", &e.to_string(), "is larger than any epoch can be")
            })
        })
        .transpose()
}

/// A SQLite string literal: quotes doubled, nothing else special.
fn sqlite_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A PostgreSQL escape-string literal: backslashes and quotes doubled.
fn pg_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_what_ends_them() {
        assert_eq!(sqlite_literal(r"a'b\c"), r"'a''b\c'");
        assert_eq!(pg_literal(r"a'b\c"), r"E'a''b\\c'");
    }

    #[test]
    fn bad_holders_and_epochs_are_refused() {
        let key = Key::new("ops", "m").unwrap();
        for holder in ["", " h", "a\nb", &"h".repeat(300)] {
            assert!(matches!(
                GuardSql::sqlite(&key, holder, None),
                Err(Error::InvalidArgument { what: "holder", .. })
            ));
        }
        for epoch in [0, u64::MAX] {
            assert!(matches!(
                GuardSql::sqlite(&key, "h", Some(epoch)),
                Err(Error::InvalidArgument { what: "epoch", .. })
            ));
        }
        assert!(matches!(
            GuardSql::postgres("", &key, "h", None),
            Err(Error::InvalidArgument { what: "schema", .. })
        ));
        let pg = GuardSql::postgres("my \"app\"", &key, "h", None).unwrap();
        assert_eq!(
            pg.statement(),
            "SELECT \"my \"\"app\"\"\".leasehold_guard(E'ops', E'm', E'h', NULL)"
        );
    }
}

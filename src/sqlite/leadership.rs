//! The leadership [`Token`] trait in SQLite's types (Juju's `Token`: check
//! standalone, inside a transaction, as an SQL predicate, in a `Txn`).

use rusqlite::Connection;

use crate::core::error::Result;
use crate::engine::LeaseToken;
use crate::sqlite::Sqlite;
use crate::sqlite::api::Guard;
use crate::sqlite::txn::Txn;

/// A unit's leadership of its application, checkable four ways (see
/// [`LeaseToken`](crate::LeaseToken) for the guarantees).
pub trait Token {
    /// Fails if the condition no longer holds, judged now.
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`](crate::Error::GuardFailed) saying what holds
    /// instead, or a storage error.
    fn check(&self) -> Result<()>;

    /// Fails if the condition does not hold inside the caller's transaction
    /// on `conn`.
    ///
    /// # Errors
    ///
    /// As [`LeaseToken::check_in`](crate::LeaseToken::check_in).
    fn check_in(&self, conn: &Connection) -> Result<()>;

    /// The condition as an SQL predicate for the caller's own statements.
    fn guard(&self) -> Guard;

    /// Adds the condition to `txn` as an assertion op.
    fn add_to(&self, txn: &mut Txn);
}

impl Token for LeaseToken<Sqlite> {
    fn check(&self) -> Result<()> {
        LeaseToken::<Sqlite>::check(self)
    }

    fn check_in(&self, conn: &Connection) -> Result<()> {
        LeaseToken::<Sqlite>::check_in(self, conn)
    }

    fn guard(&self) -> Guard {
        LeaseToken::<Sqlite>::guard(self)
    }

    fn add_to(&self, txn: &mut Txn) {
        LeaseToken::<Sqlite>::add_to(self, txn);
    }
}

//! SQLite's errors, classified for the crate's neutral [`StorageError`].

use std::time::Duration;

use crate::core::error::{Context, Error, StorageError, StorageKind};

/// Whether SQLite said the database was busy or locked.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `SQLITE_BUSY_SNAPSHOT`: a deferred transaction read an old snapshot and
/// then tried to write; only retrying the whole transaction helps.
pub(crate) fn is_stale_snapshot(e: &rusqlite::Error) -> bool {
    const SQLITE_BUSY_SNAPSHOT: i32 = 5 | (2 << 8);
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == SQLITE_BUSY_SNAPSHOT)
}

/// Classifies an SQLite error: a lock waited for `waited` in vain is
/// [`StorageKind::Busy`], a stale snapshot [`StorageKind::Retry`].
pub(crate) fn storage(e: rusqlite::Error, waited: Duration) -> StorageError {
    let kind = if is_stale_snapshot(&e) {
        StorageKind::Retry
    } else if is_busy(&e) {
        StorageKind::Busy { waited }
    } else {
        StorageKind::Other
    };
    StorageError::new(kind, e)
}

/// SQLite's error back out of a storage error (one SQLite did not raise
/// becomes a generic failure with its message).
pub(crate) fn into_sqlite(e: StorageError) -> rusqlite::Error {
    match e.into_inner().downcast::<rusqlite::Error>() {
        Ok(e) => *e,
        Err(other) => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// A storage error for SQLite's `e`, unclassified as a lock wait (for code
/// that retries busy errors itself).
pub(crate) fn stored(context: Context, e: rusqlite::Error) -> Error {
    Error::Storage {
        context,
        source: storage(e, Duration::ZERO),
    }
}

/// The crate's error for SQLite's `e`, raised while doing `context` with a
/// lock budget of `waited`.
pub(crate) fn fail(context: Context, e: rusqlite::Error, waited: Duration) -> Error {
    Error::storage(context, storage(e, waited))
}

/// Errors from your own statements in a guarded transaction
/// (`tx.execute`, `tx.commit`), so that one `?` and one type serve the
/// whole transaction: an [`Error::Storage`] (context `transaction`) whose
/// [`Error::is_transient`] and [`Error::sqlite_error_code`] classify it as
/// this crate's own errors are (a lock wait, or `SQLITE_BUSY_SNAPSHOT` in
/// a deferred transaction, is transient: retry the whole transaction).
impl From<rusqlite::Error> for Error {
    fn from(source: rusqlite::Error) -> Error {
        Error::Storage {
            context: Context::new("transaction"),
            source: storage(source, Duration::ZERO),
        }
    }
}

impl Error {
    /// The SQLite error code underneath, if this error came from SQLite.
    pub fn sqlite_error_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            Error::Storage { source, .. }
            | Error::Open { source, .. }
            | Error::StatementFailed { source, .. } => source
                .downcast_ref::<rusqlite::Error>()
                .and_then(rusqlite::Error::sqlite_error_code),
            Error::Busy { .. } => Some(rusqlite::ErrorCode::DatabaseBusy),
            Error::NotADatabase { .. } => Some(rusqlite::ErrorCode::NotADatabase),
            Error::TransactionLost { cause } => cause.sqlite_error_code(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32, msg: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(msg.to_owned()))
    }

    #[test]
    fn sqlite_errors_convert_with_the_same_classification() {
        let locked: Error = sqlite(5, "database is locked").into();
        assert!(locked.is_transient());
        assert_eq!(
            locked.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        let stale: Error = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code: rusqlite::ErrorCode::DatabaseBusy,
                extended_code: 517,
            },
            None,
        )
        .into();
        assert!(
            stale.is_transient(),
            "SQLITE_BUSY_SNAPSHOT: retry the transaction"
        );
        let constraint: Error = sqlite(19, "UNIQUE constraint failed: t.id").into();
        assert!(!constraint.is_transient());
        assert_eq!(
            constraint.to_string(),
            "transaction: UNIQUE constraint failed: t.id"
        );
    }

    #[test]
    fn busy_is_transient_and_classified() {
        let busy = fail(
            Context::new("claim"),
            sqlite(5, "database is locked"),
            Duration::from_secs(1),
        );
        assert!(matches!(busy, Error::Busy { .. }));
        assert!(busy.is_transient());
        assert_eq!(
            busy.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        let snapshot = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code: rusqlite::ErrorCode::DatabaseBusy,
                extended_code: 517,
            },
            None,
        );
        let stale = fail(Context::new("commit"), snapshot, Duration::from_secs(1));
        assert!(
            matches!(stale, Error::Storage { .. }),
            "a stale snapshot is not a lock wait"
        );
        assert!(stale.is_transient(), "but retrying the transaction helps");
        let full = fail(
            Context::new("claim"),
            sqlite(13, "full"),
            Duration::from_secs(1),
        );
        assert!(!full.is_transient());
    }
}

//! PostgreSQL's errors, classified for the crate's neutral [`StorageError`].

use std::time::Duration;

use postgres::error::SqlState;

use crate::core::error::{Context, Error, StorageError, StorageKind};

/// Classifies a PostgreSQL error: a lock or statement deadline that ran out
/// (`55P03`, `57014`) is [`StorageKind::Busy`]; a serialization failure
/// (`40001`), a deadlock (`40P01`), a lost connection, or a prepared
/// statement of the engine's that the server lost (`26000`, after someone
/// ran `DISCARD ALL` on a lent client) or can no longer run as prepared
/// (`0A000` "cached plan must not change result type") is
/// [`StorageKind::Retry`] (retry the whole transaction: the connection
/// prepares its statements again).
pub(crate) fn storage(e: postgres::Error, waited: Duration) -> StorageError {
    storage_saying(e, waited, None)
}

/// As [`storage`], with `hint` (what to do) said after the causes.
pub(crate) fn storage_saying(
    e: postgres::Error,
    waited: Duration,
    hint: Option<String>,
) -> StorageError {
    let kind = match e.code() {
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED => {
            StorageKind::Busy { waited }
        }
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::INVALID_SQL_STATEMENT_NAME =>
        {
            StorageKind::Retry
        }
        Some(c)
            if *c == SqlState::FEATURE_NOT_SUPPORTED
                && e.as_db_error()
                    .is_some_and(|d| d.message().contains("cached plan")) =>
        {
            StorageKind::Retry
        }
        None if e.is_closed() => StorageKind::Retry,
        _ => StorageKind::Other,
    };
    let detail = match (causes(&e), hint) {
        (Some(causes), Some(hint)) => Some(format!("{causes} ({hint})")),
        (causes, hint) => causes.or(hint),
    };
    StorageError::new(kind, e).with_detail(detail)
}

/// The causes beneath `e` that its message does not say ("error connecting
/// to server" says why only in its source).
fn causes(e: &postgres::Error) -> Option<String> {
    let mut shown = e.to_string();
    let mut said = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !shown.contains(&text) {
            shown.push_str(&text);
            said.push(text);
        }
        next = cause.source();
    }
    (!said.is_empty()).then(|| said.join(": "))
}

/// Whether `e` says a table, schema or function does not exist (the
/// session is on a database without our tables).
pub(crate) fn is_missing_object(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::UNDEFINED_TABLE
            || *c == SqlState::INVALID_SCHEMA_NAME
            || *c == SqlState::UNDEFINED_FUNCTION
    })
}

/// The crate's error for PostgreSQL's `e`, raised while doing `context`
/// within a lock budget of `waited`.
pub(crate) fn fail(context: Context, e: postgres::Error, waited: Duration) -> Error {
    Error::storage(context, storage(e, waited))
}

impl From<postgres::Error> for Error {
    /// Errors from your own statements in a guarded transaction: an
    /// [`Error::Storage`] (context `transaction`) whose
    /// [`Error::is_transient`] says when to retry the whole transaction
    /// (a serialization failure, a deadlock, a deadline, a lost
    /// connection).
    fn from(source: postgres::Error) -> Error {
        Error::Storage {
            context: Context::new("transaction"),
            source: storage(source, Duration::ZERO),
        }
    }
}

impl Error {
    /// The SQLSTATE underneath, if this error came from PostgreSQL.
    pub fn postgres_code(&self) -> Option<&SqlState> {
        match self {
            Error::Storage { source, .. }
            | Error::Open { source, .. }
            | Error::StatementFailed { source, .. } => source
                .downcast_ref::<postgres::Error>()
                .and_then(postgres::Error::code),
            Error::TransactionLost { cause } => cause.postgres_code(),
            _ => None,
        }
    }
}

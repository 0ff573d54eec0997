//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::core::key::Key;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, each variant naming the key and holder
/// involved where there is one.
///
/// Only [`Error::ClaimDenied`] and [`Error::NotHeld`] are definite answers
/// about a lease ("you do not hold it"). After any other error during a claim
/// nothing may be inferred: the claim may or may not have committed. Errors
/// from operations that change nothing on failure say so in their docs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lease is held by someone else; the claimant definitely does not
    /// hold it.
    #[error("claim of {key} by {holder} denied: it is held by {current_holder}")]
    ClaimDenied {
        /// The lease claimed.
        key: Key,
        /// Who asked.
        holder: String,
        /// Who holds it now.
        current_holder: String,
    },

    /// The holder named does not hold the lease now (release, check).
    #[error("{key} is not held by {holder}: {}", held_by(.current_holder.as_deref()))]
    NotHeld {
        /// The lease.
        key: Key,
        /// Who was expected to hold it.
        holder: String,
        /// Who holds it now, if anyone.
        current_holder: Option<String>,
    },

    /// A token's guard did not hold inside a transaction, so the transaction
    /// was rolled back (or, inside the caller's own transaction, the caller
    /// must roll back).
    #[error("{}guard failed for {key}: expected {holder}{} to hold it, found {found}",
        op_prefix(*.op, .label.as_deref()), epoch_suffix(*.expected_epoch))]
    GuardFailed {
        /// Index of the failing op in its [`Txn`](crate::Txn), if any.
        op: Option<usize>,
        /// The failing op's label, if it had one.
        label: Option<String>,
        /// The lease guarded.
        key: Key,
        /// The holder the token vouches for.
        holder: String,
        /// The tenure the token was fixed to, for tokens from a claim.
        expected_epoch: Option<u64>,
        /// What the database held instead.
        found: Found,
    },

    /// One of the caller's own assertions in a [`Txn`](crate::Txn) matched no
    /// row; the whole transaction was rolled back.
    #[error("{}assertion matched no row: {sql}", op_prefix(Some(*.op), .label.as_deref()))]
    AssertionFailed {
        /// Index of the failing op in its [`Txn`](crate::Txn).
        op: usize,
        /// The failing op's label, if it had one.
        label: Option<String>,
        /// The assertion's query.
        sql: String,
    },

    /// SQLite refused one of the statements of a [`Txn`](crate::Txn) (syntax,
    /// constraint, …); the whole transaction was rolled back.
    #[error("{}statement failed: {source}: {sql}", op_prefix(Some(*.op), .label.as_deref()))]
    StatementFailed {
        /// Index of the failing op.
        op: usize,
        /// The failing op's label, if it had one.
        label: Option<String>,
        /// The statement.
        sql: String,
        /// The database's error.
        #[source]
        source: StorageError,
    },

    /// An import was refused because of one entry; nothing was written.
    #[error("import entry {index}, field {field}: {reason}")]
    ImportRefused {
        /// The entry's position: leases first, then pins, from 0.
        index: usize,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument was rejected before anything was read or written.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument (`"name"`, `"holder"`, `"duration"`, …).
        what: &'static str,
        /// The rejected value, shortened to 64 characters.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The database was migrated by a newer leasehold than this one; nothing
    /// was changed.
    #[error(
        "database schema version {found} is newer than this build of leasehold supports \
         (up to {supported}); upgrade leasehold"
    )]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },

    /// A migration recorded in the database differs from the one embedded in
    /// this build (its SQL was edited after it shipped); nothing was changed.
    #[error("migration {version} ({name}) applied to this database differs from this build's copy")]
    SchemaMismatch {
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: String,
    },

    /// The file exists but is not a SQLite database; nothing was changed.
    #[error("{} is not a SQLite database", .path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },

    /// The database has no leasehold schema, or an older one, and the
    /// engine was opened read-only
    /// ([`EngineBuilder::read_only`](crate::EngineBuilder::read_only)), so it
    /// cannot apply it; nothing was changed.
    #[error("{}", not_migrated(.path, *.found, *.expected))]
    NotMigrated {
        /// The file.
        path: PathBuf,
        /// The leasehold schema version it holds (0: none).
        found: u32,
        /// The version this build needs.
        expected: u32,
    },

    /// leasehold's schema cannot be applied because the database already
    /// holds an object of the same name that leasehold did not create (an
    /// application's own `leasehold_leases` table, say); nothing was changed.
    #[error(
        "cannot apply leasehold's schema to {}: {kind} {name} already exists and was not created \
         by leasehold; rename it or use another database",
        .path.display()
    )]
    SchemaConflict {
        /// The file.
        path: PathBuf,
        /// The conflicting object's name.
        name: String,
        /// Its kind: `table`, `index`, `trigger` or `view`.
        kind: String,
    },

    /// The database's directory cannot be written: SQLite keeps a WAL
    /// database's `-wal` and `-shm` files (and a rollback journal) beside
    /// the file, and must create them there, even to read; nothing was
    /// changed.
    #[error(
        "cannot use {}: SQLite must create {}-wal and {}-shm beside it, in {}, a directory this \
         process cannot write (read-only file system or permissions)",
        .path.display(), file_name(.path), file_name(.path), .directory.display()
    )]
    DirectoryNotWritable {
        /// The database file.
        path: PathBuf,
        /// Its directory.
        directory: PathBuf,
    },

    /// The file this engine opened is no longer the file at its path: it
    /// was deleted, moved, or replaced by another. Every tenure the engine
    /// held counts as lost (trackers step down) and every later operation
    /// fails with this error, since its connections still write to the old
    /// file, which nobody else sees.
    #[error(
        "{} was deleted or replaced since this engine opened it: its tenures count as lost; \
         open the database again",
        .path.display()
    )]
    DatabaseReplaced {
        /// The path the engine opened.
        path: PathBuf,
    },

    /// The database could not be opened or prepared (missing directory,
    /// permissions, read-only file system, full disk, …).
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The file (or, for a server, what was connected to).
        path: PathBuf,
        /// The database's error.
        #[source]
        source: StorageError,
    },

    /// The database stayed locked by other writers for the whole busy budget;
    /// the operation changed nothing.
    #[error("{context}: database still locked after {waited:?}")]
    Busy {
        /// What was attempted.
        context: Context,
        /// How long it waited.
        waited: Duration,
    },

    /// No pooled connection became free within the busy timeout (every
    /// connection is in use, or new ones cannot be opened); nothing was done.
    #[error(
        "{context}: no pooled connection free after {waited:?} (pool size {size}): {last_error}"
    )]
    PoolTimeout {
        /// What was attempted.
        context: Context,
        /// How long it waited.
        waited: Duration,
        /// The pool's size.
        size: u32,
        /// The pool's own description of what went wrong.
        last_error: String,
    },

    /// A wait ran past its timeout or deadline.
    #[error("{context}: timed out after {waited:?}")]
    Timeout {
        /// What was awaited.
        context: Context,
        /// How long it waited.
        waited: Duration,
    },

    /// The engine was shut down.
    #[error("{context}: the leasehold engine has stopped")]
    Stopped {
        /// What was attempted or awaited.
        context: Context,
    },

    /// An error inside your transaction made SQLite roll back the whole
    /// transaction (an `OR ROLLBACK` conflict, `RAISE(ROLLBACK, …)`, a full
    /// disk, an I/O error): it is gone, your connection is in autocommit
    /// mode, and statements you run next would each commit on their own.
    #[error("your transaction was rolled back by SQLite: {cause}")]
    TransactionLost {
        /// The error that ended it.
        #[source]
        cause: Box<Error>,
    },

    /// Any other failure of the database underneath.
    #[error("{context}: {source}")]
    Storage {
        /// What was attempted.
        context: Context,
        /// The database's error (the backend's own error is its source).
        #[source]
        source: StorageError,
    },
}

impl Error {
    /// Whether retrying later may succeed: the database was busy (a lock or
    /// a pooled connection could not be had in time), a wait timed out, or
    /// the transaction must be retried whole (a stale snapshot, a
    /// serialization failure, a deadlock) — retry the *whole* transaction.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Busy { .. } | Error::Timeout { .. } | Error::PoolTimeout { .. } => true,
            Error::Storage { source, .. } | Error::StatementFailed { source, .. } => {
                source.is_transient()
            }
            Error::TransactionLost { cause } => cause.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Error {
        let mut shown: String = value.chars().take(64).collect();
        if shown.len() < value.len() {
            shown.push('…');
        }
        Error::InvalidArgument {
            what,
            value: shown,
            reason: reason.into(),
        }
    }

    /// A storage error raised while doing `context`: [`Error::Busy`] for a
    /// lock that could not be had in time, [`Error::Storage`] otherwise.
    pub(crate) fn storage(context: Context, source: StorageError) -> Error {
        match source.kind {
            StorageKind::Busy { waited } => Error::Busy { context, waited },
            _ => Error::Storage { context, source },
        }
    }
}

/// A failure of the database underneath, whichever backend it is: a
/// classification, and the backend's own error as its
/// [`source`](std::error::Error::source) (reach it with
/// [`StorageError::downcast_ref`], e.g. to SQLite's error type).
#[derive(Debug)]
pub struct StorageError {
    kind: StorageKind,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// What the backend's error says only in its sources, said after it.
    detail: Option<String>,
}

/// How a [`StorageError`] is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageKind {
    /// A lock (the write lock, a row lock) could not be had within the
    /// budget.
    Busy {
        /// How long it was waited for.
        waited: Duration,
    },
    /// The transaction must be retried whole: SQLite's
    /// `SQLITE_BUSY_SNAPSHOT` in a deferred transaction, a serialization
    /// failure or a deadlock on a server.
    Retry,
    /// Anything else: retrying the same call is not expected to help.
    Other,
}

impl StorageError {
    /// Wraps a backend's error with its classification.
    pub fn new(
        kind: StorageKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> StorageError {
        StorageError {
            kind,
            inner: error.into(),
            detail: None,
        }
    }

    /// The same error, its message followed by `detail` (a cause the
    /// backend's error keeps in its source chain).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn with_detail(mut self, detail: Option<String>) -> StorageError {
        self.detail = detail;
        self
    }

    /// A storage error with only a message (no backend error underneath).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn message(kind: StorageKind, message: impl Into<String>) -> StorageError {
        StorageError::new(kind, message.into())
    }

    /// The classification.
    pub fn kind(&self) -> StorageKind {
        self.kind
    }

    /// Whether retrying may succeed ([`StorageKind::Busy`] or
    /// [`StorageKind::Retry`]).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, StorageKind::Busy { .. } | StorageKind::Retry)
    }

    /// The backend's own error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// The backend's own error, by value.
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.inner
    }

    /// The backend's own error, if it is an `E` (the SQLite backend's are
    /// its client library's errors).
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.inner.downcast_ref::<E>()
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)?;
        match &self.detail {
            Some(detail) => write!(f, ": {detail}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.inner)
    }
}

/// What the database held when a guard failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Found {
    /// The key has never been claimed or pinned.
    Absent,
    /// Nobody holds the key; `epoch` is its latest tenure's (0 if none).
    Vacant {
        /// The latest tenure's epoch.
        epoch: u64,
    },
    /// `holder`'s tenure `epoch` ran out and nobody has claimed since.
    Lapsed {
        /// Who held it.
        holder: String,
        /// That tenure's epoch.
        epoch: u64,
    },
    /// `holder` holds the key in tenure `epoch`.
    Held {
        /// Who holds it.
        holder: String,
        /// The tenure's epoch.
        epoch: u64,
    },
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Absent => f.write_str("no lease at all"),
            Found::Vacant { epoch } => write!(f, "it vacant after epoch {epoch}"),
            Found::Lapsed { holder, epoch } => {
                write!(f, "{holder}'s tenure at epoch {epoch} expired")
            }
            Found::Held { holder, epoch } => write!(f, "it held by {holder} at epoch {epoch}"),
        }
    }
}

/// Which operation failed, on which key, for which holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    operation: &'static str,
    key: Option<Key>,
    namespace: Option<String>,
    holder: Option<String>,
}

impl Context {
    pub(crate) fn new(operation: &'static str) -> Context {
        Context {
            operation,
            key: None,
            namespace: None,
            holder: None,
        }
    }

    pub(crate) fn namespace(mut self, namespace: &str) -> Context {
        self.namespace = Some(namespace.to_owned());
        self
    }

    pub(crate) fn key(mut self, key: &Key) -> Context {
        self.key = Some(key.clone());
        self
    }

    pub(crate) fn holder(mut self, holder: &str) -> Context {
        self.holder = Some(holder.to_owned());
        self
    }

    /// The operation: `"claim"`, `"release"`, `"commit"`, …
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The lease involved, if any.
    pub fn lease_key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// The holder involved, if any.
    pub fn lease_holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.operation)?;
        if let Some(key) = &self.key {
            write!(f, " of {key}")?;
        } else if let Some(namespace) = &self.namespace {
            write!(f, " in {namespace}")?;
        }
        if let Some(holder) = &self.holder {
            write!(f, " by {holder}")?;
        }
        Ok(())
    }
}

fn not_migrated(path: &std::path::Path, found: u32, expected: u32) -> String {
    if found == 0 {
        format!(
            "no leasehold schema in {}; run `leasehold migrate` (or open it read-write) to apply it",
            path.display()
        )
    } else {
        format!(
            "{} has leasehold schema version {found}, older than this build's {expected}; \
             run `leasehold migrate` (or open it read-write) to upgrade it",
            path.display()
        )
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn held_by(holder: Option<&str>) -> String {
    match holder {
        Some(h) => format!("it is held by {h}"),
        None => "nobody holds it".to_owned(),
    }
}

fn op_prefix(op: Option<usize>, label: Option<&str>) -> String {
    match (op, label) {
        (Some(i), Some(l)) => format!("op {i} ({l}): "),
        (Some(i), None) => format!("op {i}: "),
        _ => String::new(),
    }
}

fn epoch_suffix(epoch: Option<u64>) -> String {
    epoch.map(|e| format!(" at epoch {e}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new("ops", "schema-migration").expect("key")
    }

    fn failed(msg: &str) -> StorageError {
        StorageError::message(StorageKind::Other, msg)
    }

    /// Pins the text of every variant: these lines are what operators read.
    #[test]
    fn display_of_every_variant() {
        let ctx = Context::new("claim").key(&key()).holder("host-1");
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::ClaimDenied {
                    key: key(),
                    holder: "host-2".into(),
                    current_holder: "host-1".into(),
                },
                "claim of ops/schema-migration by host-2 denied: it is held by host-1",
            ),
            (
                Error::NotHeld {
                    key: key(),
                    holder: "host-2".into(),
                    current_holder: Some("host-1".into()),
                },
                "ops/schema-migration is not held by host-2: it is held by host-1",
            ),
            (
                Error::NotHeld {
                    key: key(),
                    holder: "host-2".into(),
                    current_holder: None,
                },
                "ops/schema-migration is not held by host-2: nobody holds it",
            ),
            (
                Error::GuardFailed {
                    op: Some(2),
                    label: Some("write config".into()),
                    key: key(),
                    holder: "host-1".into(),
                    expected_epoch: Some(4),
                    found: Found::Held {
                        holder: "host-2".into(),
                        epoch: 5,
                    },
                },
                "op 2 (write config): guard failed for ops/schema-migration: expected host-1 at epoch 4 \
                 to hold it, found it held by host-2 at epoch 5",
            ),
            (
                Error::GuardFailed {
                    op: None,
                    label: None,
                    key: key(),
                    holder: "host-1".into(),
                    expected_epoch: None,
                    found: Found::Lapsed {
                        holder: "host-1".into(),
                        epoch: 3,
                    },
                },
                "guard failed for ops/schema-migration: expected host-1 to hold it, \
                 found host-1's tenure at epoch 3 expired",
            ),
            (
                Error::GuardFailed {
                    op: Some(0),
                    label: None,
                    key: key(),
                    holder: "host-1".into(),
                    expected_epoch: Some(1),
                    found: Found::Vacant { epoch: 1 },
                },
                "op 0: guard failed for ops/schema-migration: expected host-1 at epoch 1 to hold it, \
                 found it vacant after epoch 1",
            ),
            (
                Error::GuardFailed {
                    op: None,
                    label: None,
                    key: key(),
                    holder: "host-1".into(),
                    expected_epoch: None,
                    found: Found::Absent,
                },
                "guard failed for ops/schema-migration: expected host-1 to hold it, found no lease at all",
            ),
            (
                Error::AssertionFailed {
                    op: 1,
                    label: None,
                    sql: "SELECT 1 FROM t WHERE id = ?".into(),
                },
                "op 1: assertion matched no row: SELECT 1 FROM t WHERE id = ?",
            ),
            (
                Error::StatementFailed {
                    op: 3,
                    label: Some("insert".into()),
                    sql: "INSERT INTO t VALUES (1)".into(),
                    source: failed("UNIQUE constraint failed: t.id"),
                },
                "op 3 (insert): statement failed: UNIQUE constraint failed: t.id: INSERT INTO t VALUES (1)",
            ),
            (
                Error::invalid(
                    "holder",
                    "bell\u{7}",
                    "contains the control character U+0007 at byte 4",
                ),
                "invalid holder \"bell\\u{7}\": contains the control character U+0007 at byte 4",
            ),
            (
                Error::SchemaTooNew {
                    found: 9,
                    supported: 3,
                },
                "database schema version 9 is newer than this build of leasehold supports (up to 3); \
                 upgrade leasehold",
            ),
            (
                Error::SchemaMismatch {
                    version: 1,
                    name: "leases".into(),
                },
                "migration 1 (leases) applied to this database differs from this build's copy",
            ),
            (
                Error::NotADatabase {
                    path: "/tmp/notes.txt".into(),
                },
                "/tmp/notes.txt is not a SQLite database",
            ),
            (
                Error::NotMigrated {
                    path: "/srv/app.db".into(),
                    found: 0,
                    expected: 3,
                },
                "no leasehold schema in /srv/app.db; run `leasehold migrate` (or open it read-write) \
                 to apply it",
            ),
            (
                Error::NotMigrated {
                    path: "/srv/app.db".into(),
                    found: 2,
                    expected: 3,
                },
                "/srv/app.db has leasehold schema version 2, older than this build's 3; run \
                 `leasehold migrate` (or open it read-write) to upgrade it",
            ),
            (
                Error::SchemaConflict {
                    path: "/srv/app.db".into(),
                    name: "leasehold_leases".into(),
                    kind: "table".into(),
                },
                "cannot apply leasehold's schema to /srv/app.db: table leasehold_leases already \
                 exists and was not created by leasehold; rename it or use another database",
            ),
            (
                Error::DirectoryNotWritable {
                    path: "/ro/app.db".into(),
                    directory: "/ro".into(),
                },
                "cannot use /ro/app.db: SQLite must create app.db-wal and app.db-shm beside it, in \
                 /ro, a directory this process cannot write (read-only file system or permissions)",
            ),
            (
                Error::DatabaseReplaced {
                    path: "/srv/app.db".into(),
                },
                "/srv/app.db was deleted or replaced since this engine opened it: its tenures \
                 count as lost; open the database again",
            ),
            (
                Error::Open {
                    path: "/ro/app.db".into(),
                    source: failed("attempt to write a readonly database"),
                },
                "cannot open /ro/app.db: attempt to write a readonly database",
            ),
            (
                Error::Busy {
                    context: ctx.clone(),
                    waited: Duration::from_secs(5),
                },
                "claim of ops/schema-migration by host-1: database still locked after 5s",
            ),
            (
                Error::PoolTimeout {
                    context: Context::new("revoke").key(&key()),
                    waited: Duration::from_secs(5),
                    size: 8,
                    last_error: "timed out waiting for connection".into(),
                },
                "revoke of ops/schema-migration: no pooled connection free after 5s (pool size 8): \
                 timed out waiting for connection",
            ),
            (
                Error::Timeout {
                    context: Context::new("wait for release").key(&key()),
                    waited: Duration::from_millis(250),
                },
                "wait for release of ops/schema-migration: timed out after 250ms",
            ),
            (
                Error::Stopped {
                    context: Context::new("wait for release").key(&key()),
                },
                "wait for release of ops/schema-migration: the leasehold engine has stopped",
            ),
            (
                Error::TransactionLost {
                    cause: Box::new(Error::Stopped {
                        context: Context::new("apply"),
                    }),
                },
                "your transaction was rolled back by SQLite: apply: the leasehold engine has stopped",
            ),
            (
                Error::Storage {
                    context: ctx,
                    source: failed("database or disk is full"),
                },
                "claim of ops/schema-migration by host-1: database or disk is full",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let e = Error::invalid("name", &"x".repeat(300), "too long");
        assert_eq!(
            e.to_string(),
            format!("invalid name \"{}…\": too long", "x".repeat(64))
        );
    }

    #[test]
    fn busy_storage_errors_become_busy_and_retries_stay_transient() {
        let busy = Error::storage(
            Context::new("claim"),
            StorageError::message(
                StorageKind::Busy {
                    waited: Duration::from_secs(1),
                },
                "database is locked",
            ),
        );
        assert!(matches!(busy, Error::Busy { waited, .. } if waited == Duration::from_secs(1)));
        assert!(busy.is_transient());
        let retry = Error::storage(
            Context::new("commit"),
            StorageError::message(StorageKind::Retry, "stale snapshot"),
        );
        assert!(matches!(retry, Error::Storage { .. }), "not a lock wait");
        assert!(retry.is_transient(), "but retrying the transaction helps");
        let full = Error::storage(Context::new("claim"), failed("full"));
        assert!(!full.is_transient());
        assert!(
            std::error::Error::source(&full)
                .and_then(|s| s.source())
                .is_some_and(|inner| inner.to_string() == "full"),
            "the backend's error is reachable as the source"
        );
    }
}

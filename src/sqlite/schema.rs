//! Embedded migrations and the code that applies them.
//!
//! Our schema version lives in `leasehold_schema` (one row per applied
//! migration, with a checksum of its SQL). `PRAGMA user_version` belongs to
//! the application and is never read or written here.

use std::fmt;

use rusqlite::{Connection, OptionalExtension};

use crate::core::error::{Context, Error, Result};
use crate::sqlite::error::stored;

/// The schema version this build creates and understands.
///
/// A database at a later version is refused ([`Error::SchemaTooNew`]), so
/// during a rolling upgrade, once a newer build has migrated the file,
/// older builds no longer open it. Version 3 changed only a `CHECK`
/// (version 2 code would work on it), by rebuilding `leasehold_events`:
/// indexes or triggers an application added to that table are dropped
/// (its views keep working). Version 4 added `leasehold_clock.offset_ms`,
/// the clock offset persisted with the time mark (version 3 code would
/// work on it, ignoring the offset). Version 5 added the guard statement
/// for other SQL clients (the `leasehold_guard` and `leasehold_now` views;
/// version 4 code would work on it).
pub const SCHEMA_VERSION: u32 = 5;

/// The oldest schema a read-only engine reads: what version 5 added (the
/// guard's views) no read uses, so a file not yet migrated stays readable.
pub(crate) const READABLE_SINCE_VERSION: u32 = 4;

/// Milliseconds since the Unix epoch, in SQL any SQLite 3 understands
/// (`unixepoch('subsec')` needs 3.42, and an application's own migration
/// tool may link an older one).
macro_rules! now_ms_sql {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// One embedded migration: `migrations/sqlite/NNNN_name.sql`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "leases",
        sql: include_str!("../../migrations/sqlite/0001_leases.sql"),
    },
    Migration {
        version: 2,
        name: "events",
        sql: include_str!("../../migrations/sqlite/0002_events.sql"),
    },
    Migration {
        version: 3,
        name: "events_cheap_check",
        sql: include_str!("../../migrations/sqlite/0003_events_cheap_check.sql"),
    },
    Migration {
        version: 4,
        name: "clock_offset",
        sql: include_str!("../../migrations/sqlite/0004_clock_offset.sql"),
    },
    Migration {
        version: 5,
        name: "guard",
        sql: include_str!("../../migrations/sqlite/0005_guard.sql"),
    },
];

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS leasehold_schema (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_ms INTEGER NOT NULL
);";

/// Every migration this build embeds, oldest first.
///
/// For an application that runs its own migration tool: apply each
/// [`Migration::script`] in order, or call [`migrate`] from inside the tool's
/// transaction.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

impl Migration {
    /// The migration's version; versions are consecutive from 1.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The migration's short name (the file name without number and suffix).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The migration's SQL, exactly as in `migrations/sqlite/`.
    pub fn sql(&self) -> &'static str {
        self.sql
    }

    /// The migration's SQL followed by the statements that record it in
    /// `leasehold_schema`, so that an engine opened later sees it applied.
    /// Run it inside one transaction.
    pub fn script(&self) -> String {
        format!(
            "{BOOKKEEPING}\n{sql}\nINSERT INTO leasehold_schema (version, name, checksum, applied_ms)\n\
             VALUES ({v}, '{n}', '{c}', {now});\n",
            now = now_ms_sql!(),
            sql = self.sql.trim_end(),
            v = self.version,
            n = self.name,
            c = self.checksum(),
        )
    }

    /// A checksum of [`Migration::sql`] (64-bit FNV-1a, hex), recorded when
    /// applied so that edits to shipped SQL are caught. Carriage returns
    /// are left out, so that a checkout with CRLF line endings agrees.
    pub fn checksum(&self) -> String {
        crate::core::migration_checksum(self.sql)
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The leasehold schema version of the database on `conn`: 0 if leasehold
/// has never been applied to it.
///
/// # Errors
///
/// [`Error::Storage`] if the database cannot be read.
pub fn schema_version(conn: &Connection) -> Result<u32> {
    let ctx = || Context::new("read schema version");
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'leasehold_schema')",
            [],
            |row| row.get(0),
        )
        .map_err(|source| stored(ctx(), source))?;
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM leasehold_schema",
        [],
        |row| row.get(0),
    )
    .map_err(|source| match source {
        // A table of that name without our columns: an application's.
        rusqlite::Error::SqlInputError { .. } => Error::SchemaConflict {
            path: conn.path().unwrap_or("").into(),
            name: "leasehold_schema".into(),
            kind: "table".into(),
        },
        source => stored(ctx(), source),
    })
}

/// Checks, reading only, that the migrations recorded on `conn` are this
/// build's (same checksums) and none is newer.
pub(crate) fn verify(conn: &Connection) -> Result<()> {
    let applied: Vec<(u32, String, String)> = conn
        .prepare("SELECT version, name, checksum FROM leasehold_schema ORDER BY version")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(|source| stored(Context::new("read schema version"), source))?;
    check_applied(&applied)
}

/// Refuses recorded migrations newer than this build, or whose SQL differs
/// from this build's copy.
fn check_applied(applied: &[(u32, String, String)]) -> Result<()> {
    let found = applied.last().map_or(0, |a| a.0);
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, name, checksum) in applied {
        let known = MIGRATIONS.iter().find(|m| m.version == *version);
        if known.is_none_or(|m| m.checksum() != *checksum) {
            return Err(Error::SchemaMismatch {
                version: *version,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Brings the leasehold tables on `conn` up to [`SCHEMA_VERSION`] and returns
/// that version.
///
/// If `conn` is not inside a transaction, the migrations run in a
/// `BEGIN IMMEDIATE` transaction of their own, with the version read inside
/// it: two processes migrating a fresh file at once both succeed and the
/// schema is applied once. If `conn` is inside a transaction (say, your own
/// migration tool's), they join it and commit or roll back with it; make that
/// transaction `IMMEDIATE` for the same guarantee.
///
/// # Errors
///
/// - [`Error::SchemaTooNew`] if a newer leasehold migrated this database;
/// - [`Error::SchemaMismatch`] if an applied migration's SQL differs from
///   this build's copy;
/// - [`Error::Busy`] or [`Error::Storage`] from SQLite.
///
/// On any error nothing is changed (our own transaction rolls back; inside
/// yours, a savepoint is rolled back). Some errors (`SQLITE_FULL`,
/// `SQLITE_IOERR`, `SQLITE_NOMEM`) make SQLite roll back your whole
/// transaction itself: if `conn.is_autocommit()` is true afterwards, it is
/// gone, and statements you run next would each commit on their own.
pub fn migrate(conn: &Connection) -> Result<u32> {
    let own = conn.is_autocommit();
    let (begin, commit, rollback) = if own {
        ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
    } else {
        (
            "SAVEPOINT leasehold_migrate",
            "RELEASE leasehold_migrate",
            "ROLLBACK TO leasehold_migrate; RELEASE leasehold_migrate",
        )
    };
    let storage = |source| {
        let budget = busy_budget(conn);
        crate::sqlite::error::fail(Context::new("migrate"), source, budget)
    };
    conn.execute_batch(begin).map_err(storage)?;
    match apply_pending(conn) {
        Ok(version) => match conn.execute_batch(commit) {
            Ok(()) => Ok(version),
            Err(e) => {
                // A COMMIT that failed (a full disk) leaves our transaction
                // open, holding the write lock: end it.
                if own && !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Err(storage(e))
            }
        },
        Err(e) => {
            // The error that stopped the migration matters more than a failed
            // rollback (which SQLite completes when the connection closes).
            let _ = conn.execute_batch(rollback);
            Err(e)
        }
    }
}

fn apply_pending(conn: &Connection) -> Result<u32> {
    let storage = |source| {
        crate::sqlite::error::fail(
            Context::new("migrate"),
            without_sql(source),
            busy_budget(conn),
        )
    };
    // Refuse an application's own object in our way before writing
    // anything (the bookkeeping table included).
    let found = schema_version(conn)?;
    if found < SCHEMA_VERSION {
        check_conflicts(conn, found)?;
    }
    conn.execute_batch(BOOKKEEPING).map_err(storage)?;
    let applied: Vec<(u32, String, String)> = conn
        .prepare("SELECT version, name, checksum FROM leasehold_schema ORDER BY version")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(storage)?;
    check_applied(&applied)?;
    let found = applied.last().map_or(0, |a| a.0);
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        conn.execute_batch(m.sql).map_err(storage)?;
        conn.execute(
            concat!(
                "INSERT INTO leasehold_schema (version, name, checksum, applied_ms)
                 VALUES (?1, ?2, ?3, ",
                now_ms_sql!(),
                ")"
            ),
            (m.version, m.name, m.checksum()),
        )
        .map_err(storage)?;
    }
    Ok(SCHEMA_VERSION)
}

/// The names of the tables, indexes, triggers and views `sql` creates
/// (`CREATE [UNIQUE|TEMP] KIND [IF NOT EXISTS] name`), lowercased.
fn created_objects(sql: &str) -> Vec<String> {
    let words: Vec<String> = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .flat_map(|line| {
            line.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut names = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if w != "create" {
            continue;
        }
        let mut rest = words[i + 1..]
            .iter()
            .skip_while(|w| matches!(w.as_str(), "unique" | "temp" | "temporary"));
        if !matches!(
            rest.next().map(String::as_str),
            Some("table" | "index" | "trigger" | "view")
        ) {
            continue;
        }
        let mut name = rest.next();
        if name.map(String::as_str) == Some("if") {
            name = rest.nth(2); // "not", "exists", name
        }
        if let Some(name) = name {
            names.push(name.trim_matches('"').to_owned());
        }
    }
    names
}

/// Refuses, before anything is written, a database holding an object
/// that a pending migration (after version `found`) would create, or a
/// `leasehold_schema` table that is not ours.
fn check_conflicts(conn: &Connection, found: u32) -> Result<()> {
    let path = conn.path().unwrap_or("").into();
    let storage = |source| stored(Context::new("migrate"), source);
    let existing = |name: &str| -> Result<Option<String>> {
        conn.query_row(
            "SELECT type FROM sqlite_schema WHERE lower(name) = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)
    };
    let pending = MIGRATIONS.iter().filter(|m| m.version > found);
    for name in pending.flat_map(|m| created_objects(m.sql)) {
        if let Some(kind) = existing(&name)? {
            return Err(Error::SchemaConflict { path, name, kind });
        }
    }
    if found == 0
        && let Some(kind) = existing("leasehold_schema")?
    {
        return Err(Error::SchemaConflict {
            path,
            name: "leasehold_schema".into(),
            kind,
        });
    }
    Ok(())
}

/// SQLite's error without the statement text some errors carry (a
/// migration's whole script, thousands of characters, is no help in a
/// one-line message).
fn without_sql(e: rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqlInputError { error, msg, .. } => {
            rusqlite::Error::SqliteFailure(error, Some(msg))
        }
        other => other,
    }
}

/// The connection's busy timeout, for error messages.
pub(crate) fn busy_budget(conn: &Connection) -> std::time::Duration {
    let ms: Option<i64> = conn
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .optional()
        .ok()
        .flatten();
    std::time::Duration::from_millis(ms.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_files_are_all_listed() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
        let mut files: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
                .expect("migrations dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn every_migration_applies_to_memory_and_is_idempotent() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        assert_eq!(schema_version(&conn)?, 0);
        assert_eq!(migrate(&conn)?, SCHEMA_VERSION);
        assert_eq!(migrate(&conn)?, SCHEMA_VERSION);
        assert_eq!(schema_version(&conn)?, SCHEMA_VERSION);
        let user_version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version");
        assert_eq!(user_version, 0, "user_version belongs to the application");
        Ok(())
    }

    #[test]
    fn scripts_are_equivalent_to_migrate() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        for m in migrations() {
            conn.execute_batch(&format!("BEGIN; {} COMMIT;", m.script()))
                .expect("script");
        }
        assert_eq!(schema_version(&conn)?, SCHEMA_VERSION);
        assert_eq!(migrate(&conn)?, SCHEMA_VERSION, "checksums match");
        Ok(())
    }

    #[test]
    fn version_2_databases_keep_their_history_through_version_3() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        for m in &migrations()[..2] {
            conn.execute_batch(&format!("BEGIN; {} COMMIT;", m.script()))
                .expect("script");
        }
        conn.execute_batch(
            "INSERT INTO leasehold_events (id, at_ms, namespace, name, kind, holder, epoch)
             VALUES (7, 1000, 'ns', 'k', 'claimed', 'me', 1);
             CREATE VIEW app_claims AS SELECT holder FROM leasehold_events WHERE kind = 'claimed';",
        )
        .expect("event and an application's view");
        assert_eq!(migrate(&conn)?, SCHEMA_VERSION);
        let via_view: String = conn
            .query_row("SELECT holder FROM app_claims", [], |r| r.get(0))
            .expect("the view reads the rebuilt table");
        assert_eq!(via_view, "me");
        let kept: (i64, String, String) = conn
            .query_row("SELECT id, kind, holder FROM leasehold_events", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("kept");
        assert_eq!(kept, (7, "claimed".to_owned(), "me".to_owned()));
        let bogus = conn.execute(
            "INSERT INTO leasehold_events (at_ms, namespace, name, kind, epoch)
             VALUES (1, 'ns', 'k', 'bogus', 1)",
            [],
        );
        assert!(bogus.is_err(), "the kind is still checked");
        Ok(())
    }

    #[test]
    fn version_3_databases_keep_their_clock_mark_through_version_4() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        for m in &migrations()[..3] {
            conn.execute_batch(&format!("BEGIN; {} COMMIT;", m.script()))
                .expect("script");
        }
        conn.execute_batch("UPDATE leasehold_clock SET high_water_ms = 1234")
            .expect("a mark");
        assert_eq!(migrate(&conn)?, SCHEMA_VERSION);
        let clock: (i64, i64) = conn
            .query_row(
                "SELECT high_water_ms, offset_ms FROM leasehold_clock",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("clock row");
        assert_eq!(clock, (1234, 0));
        assert_eq!(
            crate::sqlite::store::high_water(&conn).expect("read"),
            (1234, 0)
        );
        crate::sqlite::store::persist_high_water(&conn, 1000, 50).expect("persist");
        crate::sqlite::store::persist_high_water(&conn, 2000, 20).expect("persist");
        assert_eq!(
            crate::sqlite::store::high_water(&conn).expect("read"),
            (2000, 50),
            "neither is ever lowered"
        );
        Ok(())
    }

    #[test]
    fn every_object_is_prefixed() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        migrate(&conn)?;
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
            .expect("prepare");
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert!(!names.is_empty());
        for name in names {
            assert!(name.starts_with("leasehold_"), "{name} is not prefixed");
        }
        Ok(())
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        migrate(&conn)?;
        conn.execute(
            "INSERT INTO leasehold_schema VALUES (?1, 'future', 'x', 0)",
            [SCHEMA_VERSION + 1],
        )
        .expect("insert");
        let err = migrate(&conn).unwrap_err();
        assert!(matches!(
            err,
            Error::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
        assert_eq!(schema_version(&conn)?, SCHEMA_VERSION + 1);
        Ok(())
    }

    #[test]
    fn edited_sql_is_detected() -> Result<()> {
        let conn = Connection::open_in_memory().expect("memory db");
        migrate(&conn)?;
        conn.execute(
            "UPDATE leasehold_schema SET checksum = 'edited' WHERE version = 1",
            [],
        )
        .expect("update");
        assert!(matches!(
            migrate(&conn),
            Err(Error::SchemaMismatch { version: 1, .. })
        ));
        Ok(())
    }

    #[test]
    fn migrate_joins_the_callers_transaction() -> Result<()> {
        let mut conn = Connection::open_in_memory().expect("memory db");
        let tx = conn.transaction().expect("tx");
        migrate(&tx)?;
        tx.rollback().expect("rollback");
        assert_eq!(schema_version(&conn)?, 0, "rolled back with the caller");
        Ok(())
    }

    #[test]
    fn checksums_ignore_carriage_returns_and_the_shipped_sql_has_none() {
        let lf = Migration {
            version: 1,
            name: "x",
            sql: "CREATE TABLE t (a);\nCREATE TABLE u (b);\n",
        };
        let crlf = Migration {
            sql: "CREATE TABLE t (a);\r\nCREATE TABLE u (b);\r\n",
            ..lf
        };
        assert_eq!(lf.checksum(), crlf.checksum());
        for m in migrations() {
            assert!(
                !m.sql().contains('\r'),
                "{} has CRLF line endings",
                m.name()
            );
        }
    }

    #[test]
    fn every_object_a_migration_creates_is_found_by_the_conflict_scan() {
        let created: Vec<String> = migrations()
            .iter()
            .flat_map(|m| created_objects(m.sql))
            .collect();
        for name in [
            "leasehold_leases",
            "leasehold_pins",
            "leasehold_clock",
            "leasehold_leases_keep_rows",
            "leasehold_leases_epoch_never_decreases",
            "leasehold_leases_no_replacement_downwards",
            "leasehold_events",
            "leasehold_events_v3",
        ] {
            assert!(
                created.iter().any(|c| c == name),
                "{name} not in {created:?}"
            );
        }
        assert_eq!(
            created_objects("create unique index if not exists \"x\" on t (a); -- create table y"),
            vec!["x"]
        );
    }

    #[test]
    fn an_applications_table_in_the_way_is_refused_before_anything_is_written() {
        let conn = Connection::open_in_memory().expect("memory db");
        conn.execute_batch("CREATE TABLE leasehold_leases (id INTEGER PRIMARY KEY, mine TEXT)")
            .expect("the application's table");
        let err = migrate(&conn).unwrap_err();
        assert!(
            matches!(&err, Error::SchemaConflict { name, kind, .. }
                if name == "leasehold_leases" && kind == "table"),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.len() < 300 && !message.contains("CREATE"),
            "{message}"
        );
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .expect("count");
        assert_eq!(objects, 1, "nothing of leasehold's was created");

        let conn = Connection::open_in_memory().expect("memory db");
        conn.execute_batch("CREATE TABLE leasehold_schema (x TEXT)")
            .expect("the application's table");
        assert!(matches!(
            migrate(&conn),
            Err(Error::SchemaConflict { name, .. }) if name == "leasehold_schema"
        ));
    }

    #[test]
    fn a_migration_that_fails_leaves_no_transaction_open() {
        let conn = Connection::open_in_memory().expect("open");
        // Room for a page or two: the schema cannot fit.
        conn.pragma_update(None, "max_page_count", 2)
            .expect("pragma");
        assert!(migrate(&conn).is_err());
        assert!(conn.is_autocommit());
        assert_eq!(schema_version(&conn).expect("version"), 0);
    }
}

//! Embedded migrations for PostgreSQL, and the code that applies them.
//!
//! The rules are SQLite's: the version lives in a table of ours
//! (`leasehold_schema`, one row per applied migration with a checksum of its
//! SQL); a database migrated by a newer build is refused; an edited
//! migration is refused; an object of the application's in our way is
//! refused before anything is written; reading the version never writes.
//! Migrations run in one transaction under an advisory lock, so that
//! processes opening a fresh database at once apply them once.

use std::fmt;
use std::time::Duration;

use postgres::Client;

use crate::core::error::{Context, Error, Result};
use crate::postgres::error::fail;

/// The PostgreSQL schema version this build creates and understands.
pub const PG_SCHEMA_VERSION: u32 = 2;

/// One embedded migration: `migrations/postgres/NNNN_name.sql`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PgMigration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

static MIGRATIONS: &[PgMigration] = &[
    PgMigration {
        version: 1,
        name: "leases",
        sql: include_str!("../../migrations/postgres/0001_leases.sql"),
    },
    PgMigration {
        version: 2,
        name: "guard",
        sql: include_str!("../../migrations/postgres/0002_guard.sql"),
    },
];

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS leasehold_schema (
    version    integer PRIMARY KEY,
    name       text    NOT NULL,
    checksum   text    NOT NULL,
    applied_ms bigint  NOT NULL
);";

/// The advisory lock (first key) migrations take, with the schema's hash as
/// the second key: one migration per schema at a time.
const MIGRATION_LOCK: i32 = 0x6c68_6d67; // "lhmg"

/// Every PostgreSQL migration this build embeds, oldest first.
pub fn pg_migrations() -> &'static [PgMigration] {
    MIGRATIONS
}

impl PgMigration {
    /// The migration's version; versions are consecutive from 1.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The migration's short name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The migration's SQL, exactly as in `migrations/postgres/`.
    pub fn sql(&self) -> &'static str {
        self.sql
    }

    /// The migration as one script for another migration tool: run in one
    /// transaction, it creates the objects in `schema` and records itself
    /// in `leasehold_schema`, so that an engine opened later sees it
    /// applied.
    ///
    /// The schema is created only if missing (a `DO` block), so that a role
    /// granted `CREATE` on an existing schema, and not on the database,
    /// can run it.
    pub fn script(&self, schema: &str) -> String {
        let lit = format!("E'{}'", schema.replace('\\', "\\\\").replace('\'', "''"));
        let tag = (0..)
            .map(|n| format!("$leasehold{n}$"))
            .find(|tag| !schema.contains(tag.as_str()))
            .unwrap_or_default();
        format!(
            "DO {tag} BEGIN\n    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {lit}) THEN\n        \
             CREATE SCHEMA {s};\n    END IF;\nEND {tag};\n\
             SET LOCAL search_path TO {s};\n{BOOKKEEPING}\n{sql}\n\
             INSERT INTO leasehold_schema (version, name, checksum, applied_ms)\n\
             VALUES ({v}, '{n}', '{c}', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint);\n",
            s = quote_ident(schema),
            sql = self.sql.trim_end(),
            v = self.version,
            n = self.name,
            c = self.checksum(),
        )
    }

    /// A checksum of [`PgMigration::sql`] (64-bit FNV-1a, hex, carriage
    /// returns left out), recorded when applied.
    pub fn checksum(&self) -> String {
        crate::core::migration_checksum(self.sql)
    }
}

impl fmt::Debug for PgMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgMigration")
            .field("version", &self.version)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `ident` as a double-quoted SQL identifier.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The leasehold schema version of `schema` on `client`, reading only: 0 if
/// leasehold has never been applied there.
///
/// # Errors
///
/// [`Error::Storage`] if the database cannot be read;
/// [`Error::SchemaConflict`] if a `leasehold_schema` table there is not
/// ours.
pub(crate) fn schema_version(client: &mut Client, schema: &str, budget: Duration) -> Result<u32> {
    let ctx = || Context::new("read schema version");
    let table = format!("{}.leasehold_schema", quote_ident(schema));
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .map_err(|e| fail(ctx(), e, budget))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    match client.query_one(
        &format!("SELECT coalesce(max(version), 0)::bigint FROM {table}"),
        &[],
    ) {
        Ok(row) => Ok(u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX)),
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_COLUMN) => {
            Err(Error::SchemaConflict {
                path: schema.into(),
                name: "leasehold_schema".into(),
                kind: "table".into(),
            })
        }
        Err(e) => Err(fail(ctx(), e, budget)),
    }
}

/// The identity of the tables in `schema` (made when they were created).
pub(crate) fn instance(client: &mut Client, schema: &str, budget: Duration) -> Result<String> {
    client
        .query_one(
            &format!(
                "SELECT uuid::text FROM {}.leasehold_instance",
                quote_ident(schema)
            ),
            &[],
        )
        .map(|row| row.get(0))
        .map_err(|e| fail(Context::new("read schema identity"), e, budget))
}

/// Checks, reading only, that the migrations recorded in `schema` are this
/// build's and none is newer.
pub(crate) fn verify(client: &mut Client, schema: &str, budget: Duration) -> Result<()> {
    let rows = client
        .query(
            &format!(
                "SELECT version, name, checksum FROM {}.leasehold_schema ORDER BY version",
                quote_ident(schema)
            ),
            &[],
        )
        .map_err(|e| fail(Context::new("read schema version"), e, budget))?;
    let applied: Vec<(u32, String, String)> = rows
        .iter()
        .map(|r| {
            (
                u32::try_from(r.get::<_, i32>(0)).unwrap_or(u32::MAX),
                r.get(1),
                r.get(2),
            )
        })
        .collect();
    check_applied(&applied)
}

fn check_applied(applied: &[(u32, String, String)]) -> Result<()> {
    let found = applied.last().map_or(0, |a| a.0);
    if found > PG_SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: PG_SCHEMA_VERSION,
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

/// The names a migration's SQL creates (tables, indexes, functions,
/// triggers), lowercased.
fn created_objects(sql: &str) -> Vec<(String, &'static str)> {
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
            .skip_while(|w| matches!(w.as_str(), "unique" | "or" | "replace"));
        let kind = match rest.next().map(String::as_str) {
            Some("table") => "table",
            Some("index") => "index",
            Some("function") => "function",
            Some("trigger") => "trigger",
            _ => continue,
        };
        let mut name = rest.next();
        if name.map(String::as_str) == Some("if") {
            name = rest.nth(2);
        }
        if let Some(name) = name {
            names.push((name.trim_matches('"').to_owned(), kind));
        }
    }
    names
}

/// Brings leasehold's tables in `schema` up to [`PG_SCHEMA_VERSION`] (the
/// schema created if missing), in one transaction under an advisory lock.
/// Reads first: a current schema is only verified, never written.
///
/// # Errors
///
/// [`Error::SchemaTooNew`], [`Error::SchemaMismatch`],
/// [`Error::SchemaConflict`] (an object of that name that leasehold did not
/// create); storage errors. On any error nothing is changed.
pub(crate) fn migrate(client: &mut Client, schema: &str, budget: Duration) -> Result<u32> {
    let found = schema_version(client, schema, budget)?;
    if found == PG_SCHEMA_VERSION {
        verify(client, schema, budget)?;
        return Ok(found);
    }
    if found > PG_SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: PG_SCHEMA_VERSION,
        });
    }
    let ctx = || Context::new("migrate");
    let quoted = quote_ident(schema);
    let mut tx = client.transaction().map_err(|e| fail(ctx(), e, budget))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&MIGRATION_LOCK, &schema],
    )
    .map_err(|e| fail(ctx(), e, budget))?;
    // CREATE SCHEMA IF NOT EXISTS checks the database's CREATE privilege
    // before it looks for the schema: a role granted CREATE on an existing
    // schema only (as a DBA sets one up) would be refused.
    let schema_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .map_err(|e| fail(ctx(), e, budget))?
        .get(0);
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {quoted};"))
            .map_err(|e| fail(ctx(), e, budget))?;
    }
    tx.batch_execute(&format!("SET LOCAL search_path TO {quoted};"))
        .map_err(|e| fail(ctx(), e, budget))?;
    // Read again under the lock: another process may have migrated.
    let table_exists: bool = tx
        .query_one("SELECT to_regclass('leasehold_schema') IS NOT NULL", &[])
        .map_err(|e| fail(ctx(), e, budget))?
        .get(0);
    let applied: Vec<(u32, String, String)> = if table_exists {
        tx.query(
            "SELECT version, name, checksum FROM leasehold_schema ORDER BY version",
            &[],
        )
        .map_err(|e| fail(ctx(), e, budget))?
        .iter()
        .map(|r| {
            (
                u32::try_from(r.get::<_, i32>(0)).unwrap_or(u32::MAX),
                r.get(1),
                r.get(2),
            )
        })
        .collect()
    } else {
        Vec::new()
    };
    check_applied(&applied)?;
    let found = applied.last().map_or(0, |a| a.0);
    // Objects of the application's in the way, before anything is written.
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        for (name, kind) in created_objects(m.sql) {
            let taken: bool = match kind {
                "function" => tx.query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = $1 AND p.proname = $2)",
                    &[&schema, &name],
                ),
                "trigger" => tx.query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname = $2)",
                    &[&schema, &name],
                ),
                _ => tx.query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = $2)",
                    &[&schema, &name],
                ),
            }
            .map_err(|e| fail(ctx(), e, budget))?
            .get(0);
            if taken {
                return Err(Error::SchemaConflict {
                    path: schema.into(),
                    name,
                    kind: kind.into(),
                });
            }
        }
    }
    if found == 0 && table_exists {
        return Err(Error::SchemaConflict {
            path: schema.into(),
            name: "leasehold_schema".into(),
            kind: "table".into(),
        });
    }
    tx.batch_execute(BOOKKEEPING)
        .map_err(|e| fail(ctx(), e, budget))?;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql)
            .map_err(|e| fail(ctx(), e, budget))?;
        tx.execute(
            "INSERT INTO leasehold_schema (version, name, checksum, applied_ms)
             VALUES ($1, $2, $3, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            &[&(m.version as i32), &m.name, &m.checksum()],
        )
        .map_err(|e| fail(ctx(), e, budget))?;
    }
    tx.commit().map_err(|e| fail(ctx(), e, budget))?;
    Ok(PG_SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard function for other clients takes the same turns as the
    /// library's guards: same lock space.
    #[test]
    fn the_sql_guard_takes_the_library_s_turns() {
        let guard = MIGRATIONS.iter().find(|m| m.name == "guard").expect("0002");
        assert!(
            guard.sql.contains(&format!(
                "'/' || p_name, {})",
                crate::postgres::store::TURNS
            )),
            "migrations/postgres/0002_guard.sql must use TURNS"
        );
    }

    #[test]
    fn every_object_the_migration_creates_is_found() {
        let names: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| created_objects(m.sql))
            .map(|(n, _)| n)
            .collect();
        for name in [
            "leasehold_leases",
            "leasehold_pins",
            "leasehold_events",
            "leasehold_trimmed",
            "leasehold_keep_rows",
            "leasehold_leases_keep_rows",
            "leasehold_leases_keep_rows_truncate",
            "leasehold_epoch_never_decreases",
            "leasehold_leases_epoch_never_decreases",
            "leasehold_now_us",
            "leasehold_events_by_tx",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

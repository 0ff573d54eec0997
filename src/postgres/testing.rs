//! The testing kit on PostgreSQL (features `testing` and `postgres`): the
//! writes table in the run's schema, its guarded writes, reading a run back
//! for the checker in commit order, and a workload's PostgreSQL side.
//!
//! Commit order needs care here: `bigserial` ids are handed out when rows
//! are inserted, not when they commit. Each recorded write therefore takes
//! its number from a one-row counter it updates last, whose row lock it
//! holds until it commits: the numbers follow commits. The key's events are
//! read in the order of their transactions' ids, which for the engine's own
//! transactions (each locks its key's row first) is the order of their
//! commits on that key.

use std::path::Path;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::engine::{Engine, LeaseToken};
use crate::postgres::schema::quote_ident;
use crate::postgres::{PgEngine, PgOp, PgTxn, Postgres};
use crate::testing::database::{Recorded, RunDatabase, WorkerSide};
use crate::testing::{
    CheckOptions, CheckReport, LeaseEvent, OffsetClock, WriteRow, check_recorded, wall_ms,
};
use crate::{Error, Key, Result};

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Creates the writes table (and its commit counter) in `schema`
/// (idempotent).
///
/// # Errors
///
/// The server's error.
pub fn pg_create_writes_table(client: &mut Client, schema: &str) -> Result<()> {
    let s = quote_ident(schema);
    client.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.checker_writes (
             id bigserial PRIMARY KEY,
             -- commit order (see the module docs)
             ord bigint NOT NULL UNIQUE,
             proc bigint NOT NULL,
             holder text NOT NULL,
             epoch bigint NOT NULL,
             seq bigint NOT NULL,
             -- what the lease table said inside the writing transaction
             lease_holder text,
             lease_epoch bigint,
             lease_until_ms bigint,
             -- the wall clock just before the transaction began
             wall_ms bigint
         );
         CREATE TABLE IF NOT EXISTS {s}.checker_order (
             id int PRIMARY KEY CHECK (id = 1),
             n bigint NOT NULL
         );
         INSERT INTO {s}.checker_order (id, n) VALUES (1, 0) ON CONFLICT DO NOTHING;"
    ))?;
    Ok(())
}

/// The recorded write's statement: its commit number last, the lease as
/// the transaction sees it. Parameters: proc, holder, epoch, seq,
/// namespace, name, wall clock (ms) before the transaction.
fn insert_write(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "WITH o AS (UPDATE {s}.checker_order SET n = n + 1 WHERE id = 1 RETURNING n)
         INSERT INTO {s}.checker_writes
             (ord, proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms, wall_ms)
         SELECT o.n, $1, $2, $3, $4, l.holder, l.epoch,
                greatest(l.expiry_ms, l.pinned_until_ms), $7
         FROM o LEFT JOIN {s}.leasehold_leases l ON l.namespace = $5 AND l.name = $6"
    )
}

/// Writes one row of the writes table for `holder` in tenure `epoch`
/// through [`Engine::commit`](crate::engine::Engine) on PostgreSQL, guarded
/// by `token` (unguarded with `None`, to show that the checker has teeth).
///
/// # Errors
///
/// [`Error::GuardFailed`] if the guard fails; storage errors.
#[allow(clippy::too_many_arguments)]
pub fn pg_guarded_write(
    engine: &PgEngine,
    key: &Key,
    token: Option<&LeaseToken<Postgres>>,
    proc: u32,
    holder: &str,
    epoch: u64,
    seq: u64,
) -> Result<()> {
    let mut txn = PgTxn::new();
    if let Some(token) = token {
        token.add_to(&mut txn);
    }
    txn.op(PgOp::new().execute(
        &insert_write(engine.schema()),
        vec![
            Box::new(i64::from(proc)),
            Box::new(holder.to_owned()),
            Box::new(i64::try_from(epoch).unwrap_or(i64::MAX)),
            Box::new(i64::try_from(seq).unwrap_or(i64::MAX)),
            Box::new(key.namespace().to_owned()),
            Box::new(key.name().to_owned()),
            Box::new(wall_ms()),
        ],
    ));
    engine.commit(&txn).map(drop)
}

/// Checks a run recorded in `dir` against schema `schema` of the database
/// at `url`; see [`check`](crate::testing::check) for what is checked.
///
/// # Errors
///
/// The database or the histories cannot be read.
pub fn pg_check(
    url: &str,
    schema: &str,
    dir: &Path,
    key: &Key,
    opts: CheckOptions,
) -> std::io::Result<CheckReport> {
    let s = quote_ident(schema);
    let mut client = Client::connect(url, NoTls).map_err(io)?;
    let rows: Vec<WriteRow> = client
        .query(
            &format!(
                "SELECT ord, proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms,
                        wall_ms
                 FROM {s}.checker_writes ORDER BY ord"
            ),
            &[],
        )
        .map_err(io)?
        .iter()
        .map(|r| WriteRow {
            id: r.get(0),
            proc: u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
            holder: r.get(2),
            epoch: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            seq: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
            lease_holder: r.get(5),
            lease_epoch: r
                .get::<_, Option<i64>>(6)
                .and_then(|e| u64::try_from(e).ok()),
            lease_until_ms: r.get(7),
            wall_ms: r.get(8),
        })
        .collect();
    let events: Vec<LeaseEvent> = client
        .query(
            &format!(
                "SELECT id, kind, holder, epoch, at_ms FROM {s}.leasehold_events
                 WHERE namespace = $1 AND name = $2 ORDER BY tx, id"
            ),
            &[&key.namespace(), &key.name()],
        )
        .map_err(io)?
        .iter()
        .map(|r| LeaseEvent {
            id: r.get(0),
            kind: r.get(1),
            holder: r.get(2),
            epoch: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            at_ms: r.get(4),
        })
        .collect();
    check_recorded(dir, rows, events, opts)
}

/// Creates a run's tables in `schema` (refusing a schema that holds
/// leasehold's tables), keeping every event.
pub(crate) fn prepare(url: &str, schema: &str) -> std::io::Result<()> {
    let mut client = Client::connect(url, NoTls).map_err(io)?;
    let table = format!("{}.leasehold_schema", quote_ident(schema));
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .map_err(io)?
        .get(0);
    if exists {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("schema {schema} holds leasehold's tables: a workload runs in a fresh one"),
        ));
    }
    let engine = PgEngine::builder(url)
        .schema(schema)
        .event_retention(10_000_000)
        .build()
        .map_err(io)?;
    pg_create_writes_table(&mut client, schema).map_err(io)?;
    engine.shutdown();
    Ok(())
}

/// A worker's connection string: `url`'s user, password and database, the
/// session named `application`, through `via` (a proxy) if given, else to
/// `url`'s hosts.
pub(crate) fn worker_url(
    url: &str,
    via: Option<std::net::SocketAddr>,
    application: &str,
) -> String {
    let Ok(config) = url.parse::<postgres::Config>() else {
        return url.to_owned();
    };
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    match via {
        Some(addr) => {
            parts.push(format!("host={}", addr.ip()));
            parts.push(format!("port={}", addr.port()));
        }
        None => {
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            if !hosts.is_empty() {
                parts.push(format!("host={}", quote(&hosts.join(","))));
            }
            let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
            if !ports.is_empty() {
                parts.push(format!("port={}", ports.join(",")));
            }
        }
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(db)));
    }
    parts.push(format!("application_name={}", quote(application)));
    parts.join(" ")
}

/// Ends every session named `application`; how many.
pub(crate) fn terminate(url: &str, application: &str) -> u32 {
    let Ok(mut client) = Client::connect(url, NoTls) else {
        return 0;
    };
    client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1",
            &[&application],
        )
        .map_or(0, |r| u32::try_from(r.get::<_, i64>(0)).unwrap_or(0))
}

/// The holder the lease row of `key` names.
pub(crate) fn holder(url: &str, schema: &str, key: &Key) -> Option<String> {
    let mut client = Client::connect(url, NoTls).ok()?;
    client
        .query_opt(
            &format!(
                "SELECT holder FROM {}.leasehold_leases WHERE namespace = $1 AND name = $2",
                quote_ident(schema)
            ),
            &[&key.namespace(), &key.name()],
        )
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<String>>(0))
}

/// Holds the lease row of `key` `FOR UPDATE` (taken within `wait`) until
/// `length` has passed: every claim, renewal and guard on the key waits.
pub(crate) fn hold_lock(
    url: &str,
    schema: &str,
    key: &Key,
    wait: Duration,
    length: Duration,
    held: &mut dyn FnMut(),
) -> bool {
    let Ok(mut client) = Client::connect(url, NoTls) else {
        return false;
    };
    let Ok(mut tx) = client.transaction() else {
        return false;
    };
    let locked = tx
        .batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            wait.as_millis().max(1)
        ))
        .and_then(|()| {
            tx.query(
                &format!(
                    "SELECT 1 FROM {}.leasehold_leases WHERE namespace = $1 AND name = $2
                     FOR UPDATE",
                    quote_ident(schema)
                ),
                &[&key.namespace(), &key.name()],
            )
        });
    if !matches!(locked, Ok(rows) if !rows.is_empty()) {
        return false;
    }
    let taken = Instant::now();
    held();
    std::thread::sleep(length.saturating_sub(taken.elapsed()));
    let _ = tx.commit();
    true
}

impl WorkerSide for Postgres {
    type Held = crate::postgres::PgPooledClient;

    fn open(
        database: &RunDatabase,
        _dir: &Path,
        _clock: OffsetClock,
        busy: Duration,
        pool: u32,
    ) -> Result<Engine<Postgres>> {
        // Time is the server's: the clock-step nemesis moves nothing here.
        let RunDatabase::Postgres { url, schema } = database else {
            return Err(Error::invalid(
                "database",
                "sqlite",
                "a PostgreSQL worker needs a PostgreSQL run",
            ));
        };
        PgEngine::builder(url)
            .schema(schema)
            .busy_timeout(busy)
            .pool_size(pool)
            .event_retention(10_000_000)
            // A worker paused inside a transaction loses its session
            // (and its locks) after two of its busy timeouts.
            .idle_in_transaction_timeout(busy * 2)
            .build()
    }

    fn checkout(engine: &Engine<Postgres>) -> Option<crate::postgres::PgPooledClient> {
        engine.client().ok()
    }

    fn commit_write(
        engine: &Engine<Postgres>,
        key: &Key,
        token: Option<&LeaseToken<Postgres>>,
        w: Recorded<'_>,
    ) -> Result<()> {
        pg_guarded_write(engine, key, token, w.proc, w.holder, w.epoch, w.seq)
    }

    fn own_txn_write(
        engine: &Engine<Postgres>,
        key: &Key,
        token: Option<&LeaseToken<Postgres>>,
        w: Recorded<'_>,
        inside: &dyn Fn(),
    ) -> Result<()> {
        let mut client = engine.client()?;
        let began = wall_ms();
        let mut tx = client.transaction()?;
        if let Some(token) = token {
            token.check_in(&mut tx)?;
        }
        inside();
        std::thread::sleep(Duration::from_millis(1));
        tx.execute(
            &insert_write(engine.schema()),
            &[
                &i64::from(w.proc),
                &w.holder,
                &i64::try_from(w.epoch).unwrap_or(i64::MAX),
                &i64::try_from(w.seq).unwrap_or(i64::MAX),
                &key.namespace(),
                &key.name(),
                &began,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }
}

//! The testing kit on SQLite: the writes table, the guarded write whose row
//! records what the lease table said at commit, reading a run back for the
//! checker, and a workload's SQLite side (its file, its leader, its write
//! lock, its workers' engines and writes).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::testing::database::{Recorded, RunDatabase, WorkerSide};
use crate::testing::{
    CheckOptions, CheckReport, LeaseEvent, OffsetClock, WriteRow, check_recorded, wall_ms,
};
use crate::{Engine, Key, LeaseToken, Sqlite, Txn};

/// The file a run's database lives in, in the run's directory.
const RUN_DB: &str = "db.sqlite";

/// Creates the run's file with the writes table, keeping every event.
pub(crate) fn prepare(dir: &Path) -> std::io::Result<()> {
    let db = dir.join(RUN_DB);
    if db.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists: a workload runs in a fresh directory",
                db.display()
            ),
        ));
    }
    let io = |e: crate::Error| std::io::Error::other(e.to_string());
    let engine = Engine::builder(&db)
        .event_retention(10_000_000)
        .build()
        .map_err(io)?;
    create_writes_table(&*engine.connection().map_err(io)?)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The holder the lease row of `key` names.
pub(crate) fn holder(dir: &Path, key: &Key) -> Option<String> {
    let conn = Connection::open(dir.join(RUN_DB)).ok()?;
    conn.query_row(
        "SELECT holder FROM leasehold_leases WHERE namespace = ?1 AND name = ?2",
        [key.namespace(), key.name()],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .ok()
    .flatten()
    .flatten()
}

/// Holds the write lock (taken within `wait`) until `length` has passed.
pub(crate) fn hold_lock(
    dir: &Path,
    wait: Duration,
    length: Duration,
    held: &mut dyn FnMut(),
) -> bool {
    let Ok(mut conn) = Connection::open(dir.join(RUN_DB)) else {
        return false;
    };
    let _ = conn.busy_timeout(wait);
    let Ok(tx) = conn.transaction_with_behavior(TransactionBehavior::Immediate) else {
        return false;
    };
    let taken = Instant::now();
    held();
    std::thread::sleep(length.saturating_sub(taken.elapsed()));
    let _ = tx.commit();
    true
}

impl WorkerSide for Sqlite {
    type Held = crate::PooledConnection;

    fn open(
        _database: &RunDatabase,
        dir: &Path,
        clock: OffsetClock,
        busy: Duration,
        pool: u32,
    ) -> crate::Result<Engine> {
        Engine::builder(dir.join(RUN_DB))
            .clock(clock)
            .busy_timeout(busy)
            .pool_size(pool)
            .event_retention(10_000_000)
            .build()
    }

    fn checkout(engine: &Engine) -> Option<crate::PooledConnection> {
        engine.connection().ok()
    }

    fn commit_write(
        engine: &Engine,
        key: &Key,
        token: Option<&LeaseToken>,
        w: Recorded<'_>,
    ) -> crate::Result<()> {
        guarded_write(engine, key, token, w.proc, w.holder, w.epoch, w.seq)
    }

    fn own_txn_write(
        engine: &Engine,
        key: &Key,
        token: Option<&LeaseToken>,
        w: Recorded<'_>,
        inside: &dyn Fn(),
    ) -> crate::Result<()> {
        let storage = |e| {
            let context = crate::Context::new("write").key(key).holder(w.holder);
            crate::sqlite::error::fail(context, e, engine.busy_timeout())
        };
        let mut conn = engine.connection()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let began = wall_ms();
        if let Some(token) = token {
            token.check_in(&tx)?;
        }
        inside();
        std::thread::sleep(Duration::from_millis(1));
        tx.execute(
            INSERT_WRITE,
            rusqlite::params![
                i64::from(w.proc),
                w.holder,
                w.epoch,
                w.seq,
                key.namespace(),
                key.name(),
                began
            ],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)
    }
}

/// The application table guarded writes go to.
pub const WRITES_TABLE: &str = "checker_writes";

/// Creates [`WRITES_TABLE`] (idempotent).
///
/// # Errors
///
/// SQLite's error, if the table cannot be created.
pub fn create_writes_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS checker_writes (
             id INTEGER PRIMARY KEY,          -- commit order
             proc INTEGER NOT NULL,
             holder TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             -- What the lease table said inside the writing transaction:
             lease_holder TEXT,
             lease_epoch INTEGER,
             -- ... and until when it was held (max of expiry and pins)
             lease_until_ms INTEGER,
             -- The wall clock just before the transaction began (so no
             -- later than its guard was evaluated).
             wall_ms INTEGER
         );",
    )
}

/// Writes one row of [`WRITES_TABLE`] for `holder` in tenure `epoch`, in
/// one `BEGIN IMMEDIATE` transaction guarded by `token` (or unguarded with
/// `None`, to show that the checker has teeth). The row also records the
/// lease's holder and epoch as the same transaction sees them.
///
/// # Errors
///
/// [`Error::GuardFailed`](crate::Error::GuardFailed) if the guard fails; storage errors.
pub fn guarded_write(
    engine: &Engine,
    key: &Key,
    token: Option<&LeaseToken>,
    proc: u32,
    holder: &str,
    epoch: u64,
    seq: u64,
) -> crate::Result<()> {
    let mut txn = Txn::new();
    if let Some(token) = token {
        token.add_to(&mut txn);
    }
    txn.execute(
        INSERT_WRITE,
        (
            i64::from(proc),
            holder.to_owned(),
            epoch,
            seq,
            key.namespace().to_owned(),
            key.name().to_owned(),
            wall_ms(),
        ),
    );
    engine.commit(&txn).map(drop)
}

/// Inserts one row of [`WRITES_TABLE`] with the lease as the writing
/// transaction sees it. Parameters: proc, holder, epoch, seq, namespace,
/// name, and the wall clock (ms) before the guard.
const INSERT_WRITE: &str = "INSERT INTO checker_writes
         (proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms, wall_ms)
     SELECT ?1, ?2, ?3, ?4, l.holder, l.epoch, max(l.expiry_ms, l.pinned_until_ms), ?7
     FROM (SELECT 1) LEFT JOIN main.leasehold_leases l ON l.namespace = ?5 AND l.name = ?6";

/// Checks a run recorded in `dir` (histories) against the database at `db`:
///
/// 1. no acknowledged write is missing;
/// 2. epochs strictly increase across tenures in commit order;
/// 3. exactly one holder per epoch (lease history, claims and rows agree);
/// 4. every row was committed while its writer held the lease in that very
///    tenure (holder and epoch as seen inside the writing transaction);
/// 5. without clock steps, no tenure began inside another holder's
///    guaranteed window (start of its claim call + duration), unless that
///    holder released it or it was revoked.
///
/// # Errors
///
/// The database or histories cannot be read.
pub fn check(db: &Path, dir: &Path, key: &Key, opts: CheckOptions) -> std::io::Result<CheckReport> {
    let io = |e: rusqlite::Error| std::io::Error::other(e.to_string());
    let conn = Connection::open(db).map_err(io)?;
    let rows: Vec<WriteRow> = conn
        .prepare(
            "SELECT id, proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms, wall_ms
             FROM checker_writes ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(WriteRow {
                    id: r.get(0)?,
                    proc: r.get(1)?,
                    holder: r.get(2)?,
                    epoch: r.get(3)?,
                    seq: r.get(4)?,
                    lease_holder: r.get(5)?,
                    lease_epoch: r.get(6)?,
                    lease_until_ms: r.get(7)?,
                    wall_ms: r.get(8)?,
                })
            })?
            .collect()
        })
        .map_err(io)?;
    let events: Vec<LeaseEvent> = conn
        .prepare(
            "SELECT id, kind, holder, epoch, at_ms FROM leasehold_events
             WHERE namespace = ?1 AND name = ?2 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([key.namespace(), key.name()], |r| {
                Ok(LeaseEvent {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    holder: r.get(2)?,
                    epoch: r.get(3)?,
                    at_ms: r.get(4)?,
                })
            })?
            .collect()
        })
        .map_err(io)?;
    check_recorded(dir, rows, events, opts)
}

//! The [`Store`] on a PostgreSQL session: the lease rows, pins and events
//! as `leasehold_*` tables of one schema, on any session inside a
//! transaction (the engine's own, or the caller's `postgres::Transaction`).
//! Every row an operation decides on is locked `FOR UPDATE`; a guard shares
//! it `FOR SHARE`; time is the server's, read after the lock.

use postgres::types::{ToSql, Type};
use postgres::{Row, Transaction};

use crate::core::error::StorageError;
use crate::core::event::{Event, EventKind, EventRecord, Events, Gap};
use crate::core::key::Key;
use crate::core::lease::{PinRecord, Record};
use crate::core::store::{GuardSpec, Known, Now, Store, StoreResult};
use crate::postgres::Postgres;
use crate::postgres::error::storage;

/// A PostgreSQL session a store can run statements on: a pooled client
/// between `BEGIN` and `COMMIT`, or a caller's transaction.
pub(crate) trait Session {
    /// Runs a query with typed parameters (one round trip).
    fn query(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, postgres::Error>;
    /// Runs a statement with typed parameters; the rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, postgres::Error>;
}

/// Implements [`Session`] for `$ty` with its methods `$query` and
/// `$execute` (same parameters).
macro_rules! session {
    ($ty:ty, $query:ident, $execute:ident) => {
        impl Session for $ty {
            fn query(
                &mut self,
                sql: &str,
                params: &[(&(dyn ToSql + Sync), Type)],
            ) -> Result<Vec<Row>, postgres::Error> {
                self.$query(sql, params)
            }

            fn execute(
                &mut self,
                sql: &str,
                params: &[(&(dyn ToSql + Sync), Type)],
            ) -> Result<u64, postgres::Error> {
                self.$execute(sql, params)
            }
        }
    };
}

// Unnamed statements: one round trip each, nothing left on the server.
session!(postgres::Client, query_typed, execute_typed);
session!(Transaction<'_>, query_typed, execute_typed);
// The engine's pooled connections: its statements, prepared once each.
session!(
    crate::postgres::pool::PgConnection,
    query_cached,
    execute_cached
);

/// The statements of one schema, rendered once.
#[derive(Debug)]
pub(crate) struct Sql {
    pub now: String,
    pub load: String,
    pub lock: String,
    pub lock_inserted: String,
    pub insert_vacant: String,
    pub update: String,
    pub insert: String,
    pub extend: String,
    pub extend_known: String,
    pub pins: String,
    pub put_pin: String,
    pub delete_pin: String,
    pub list: String,
    pub list_pins: String,
    pub namespaces: String,
    pub record_event: String,
    pub trim: String,
    pub history: String,
    pub horizon: String,
    pub events_after: String,
    pub guard: String,
    pub fenced_guard: String,
    pub instance: String,
}

/// The seed of the hash that names the advisory lock queueing a key's
/// turns (`hashtextextended(namespace || '/' || name, TURNS)`).
pub(crate) const TURNS: i64 = 1_818_782_068;

/// The columns of a lease row, as `record_from` reads them.
const RECORD: &str = "holder, epoch, started_ms, expiry_ms, pinned_until_ms, updated_ms";

impl Sql {
    /// The statements for the tables in schema `s` (already quoted).
    pub(crate) fn new(s: &str) -> Sql {
        let leases = format!("{s}.leasehold_leases");
        let pins = format!("{s}.leasehold_pins");
        let events = format!("{s}.leasehold_events");
        let now_us = format!("{s}.leasehold_now_us()");
        // Fair turns at a key's row. A row share lock (a guard's FOR SHARE)
        // is granted while an update of the row waits, so guards arriving
        // one after another could keep a renewal, a revoke or a claim
        // waiting for ever. Every operation therefore first takes an
        // advisory lock named by the key's hash, exclusive before it locks
        // the row FOR UPDATE, shared before a guard's FOR SHARE: the lock
        // manager queues those in order, so a guard that comes after a
        // waiting operation waits behind it. (Two keys that share a hash
        // only share their queue.) Inline, not in a function of the
        // schema's: an SQL function that is not inlined costs a guard a
        // tenth of its time.
        let turn = |lock: &str, ns: &str, name: &str| {
            format!("{lock}(hashtextextended({ns} || '/' || {name}, {TURNS}))::text = ''")
        };
        let extend = |extra: &str| {
            let turn = turn("pg_advisory_xact_lock", "$1", "$2");
            format!(
                "UPDATE {leases} SET expiry_ms = greatest(expiry_ms, $4), updated_ms = $3
                 WHERE namespace = $1 AND name = $2 AND holder = $5 AND epoch = $6{extra}
                   AND updated_ms <= $3 AND (expiry_ms > $3 OR pinned_until_ms > $3)
                   AND {turn}"
            )
        };
        // The guard, judged at $4 (ms) or, when NULL, the server's time,
        // on the tables of instance $5; returns whether it holds and the
        // time (µs) it was judged at.
        let guard = |epoch: &str| {
            format!(
                "WITH t AS (SELECT coalesce($4::bigint * 1000, {now_us}) AS us)
                 SELECT EXISTS (SELECT 1 FROM {leases}
                                WHERE namespace = $1 AND name = $2 AND holder = $3{epoch}
                                  AND greatest(expiry_ms, pinned_until_ms)
                                      > greatest((SELECT us FROM t) / 1000, updated_ms)
                                  AND (SELECT uuid::text FROM {s}.leasehold_instance) = $5
                                  AND {turn}
                                FOR SHARE OF {leases_bare}),
                        (SELECT us FROM t)",
                leases_bare = "leasehold_leases",
                turn = turn("pg_advisory_xact_lock_shared", "$1", "$2"),
            )
        };
        Sql {
            now: format!("SELECT {now_us}"),
            // One row whether or not the key has one, with the server's time
            // read after the row (locked, for `lock`) was.
            load: format!(
                "SELECT l.holder, l.epoch, l.started_ms, l.expiry_ms, l.pinned_until_ms, l.updated_ms, l.namespace IS NOT NULL,
                        {now_us}
                 FROM (SELECT 1) AS one
                 LEFT JOIN {leases} l ON l.namespace = $1 AND l.name = $2"
            ),
            lock: format!(
                "WITH l AS (SELECT namespace, {RECORD} FROM {leases}
                            WHERE namespace = $1 AND name = $2 AND {turn}
                            FOR UPDATE)
                 SELECT l.holder, l.epoch, l.started_ms, l.expiry_ms, l.pinned_until_ms, l.updated_ms, l.namespace IS NOT NULL,
                        {now_us}
                 FROM (SELECT 1) AS one LEFT JOIN l ON true",
                turn = turn("pg_advisory_xact_lock", "$1", "$2"),
            ),
            // A row this transaction has just inserted: nobody else can
            // see it, let alone queue for it, until this transaction ends,
            // so it is locked without taking the key's turn. (Each turn is
            // an entry in the server's lock table until the transaction
            // ends, and that table holds a few thousand: an import of
            // tens of thousands of new keys ran out of it.)
            lock_inserted: format!(
                "WITH l AS (SELECT namespace, {RECORD} FROM {leases}
                            WHERE namespace = $1 AND name = $2
                            FOR UPDATE)
                 SELECT l.holder, l.epoch, l.started_ms, l.expiry_ms, l.pinned_until_ms, l.updated_ms, l.namespace IS NOT NULL,
                        {now_us}
                 FROM (SELECT 1) AS one LEFT JOIN l ON true"
            ),
            insert_vacant: format!(
                "INSERT INTO {leases} (namespace, name, holder, epoch, started_ms, expiry_ms, pinned_until_ms, updated_ms)
                 VALUES ($1, $2, NULL, 0, 0, 0, 0, 0) ON CONFLICT (namespace, name) DO NOTHING"
            ),
            update: format!(
                "UPDATE {leases} SET holder = $3, epoch = $4, started_ms = $5, expiry_ms = $6,
                    pinned_until_ms = $7, updated_ms = $8
                 WHERE namespace = $1 AND name = $2"
            ),
            insert: format!(
                "INSERT INTO {leases} (namespace, name, holder, epoch, started_ms, expiry_ms, pinned_until_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            extend: extend(""),
            extend_known: extend(" AND started_ms = $7 AND expiry_ms = $8"),
            pins: format!(
                "SELECT entity, reason, pinned_ms, expires_ms FROM {pins}
                 WHERE namespace = $1 AND name = $2 ORDER BY entity"
            ),
            put_pin: format!(
                "INSERT INTO {pins} (namespace, name, entity, reason, pinned_ms, expires_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (namespace, name, entity) DO UPDATE SET
                    reason = excluded.reason, pinned_ms = excluded.pinned_ms,
                    expires_ms = excluded.expires_ms"
            ),
            delete_pin: format!(
                "DELETE FROM {pins} WHERE namespace = $1 AND name = $2 AND entity = $3"
            ),
            list: format!(
                "SELECT name, {RECORD} FROM {leases} WHERE namespace = $1 ORDER BY name"
            ),
            list_pins: format!(
                "SELECT name, entity, reason, pinned_ms, expires_ms FROM {pins}
                 WHERE namespace = $1 ORDER BY name, entity"
            ),
            namespaces: format!("SELECT DISTINCT namespace FROM {leases} ORDER BY namespace"),
            // Ordered by the writing transaction's id, or by the key's
            // previous event's if that is later: a caller's transaction may
            // have taken its id before it waited for the key's row, and its
            // event must still follow the ones it waited for. (The key's
            // latest event by id is its latest by commit: the row lock
            // orders them.)
            record_event: format!(
                "INSERT INTO {events} (tx, at_ms, namespace, name, kind, holder, epoch, entity, detail)
                 VALUES (greatest(pg_current_xact_id(),
                                  coalesce((SELECT p.tx FROM {events} p
                                            WHERE p.namespace = $2 AND p.name = $3
                                            ORDER BY p.id DESC LIMIT 1), '0'::xid8)),
                         $1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING id"
            ),
            trim: format!(
                "WITH gone AS (DELETE FROM {events} WHERE id <= $1 RETURNING tx)
                 UPDATE {s}.leasehold_trimmed SET up_to = greatest(up_to, (SELECT max(tx) FROM gone))
                 WHERE id = 1 AND EXISTS (SELECT 1 FROM gone)"
            ),
            history: format!(
                "SELECT id, at_ms, kind, holder, epoch, entity, detail FROM {events}
                 WHERE namespace = $1 AND name = $2 ORDER BY id DESC LIMIT $3"
            ),
            horizon: format!(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                        (SELECT up_to::text::bigint FROM {s}.leasehold_trimmed WHERE id = 1)"
            ),
            events_after: format!(
                "SELECT id, at_ms, kind, holder, epoch, entity, detail, namespace, name, tx::text::bigint
                 FROM {events}
                 WHERE tx >= $1::text::xid8 AND tx < $2::text::xid8 AND ($3::text IS NULL OR namespace = $3)
                 ORDER BY tx, id LIMIT $4"
            ),
            guard: guard(""),
            fenced_guard: guard(" AND epoch = $6"),
            instance: format!("SELECT uuid::text FROM {s}.leasehold_instance"),
        }
    }
}

/// The [`Store`] on a PostgreSQL session of the database `db` opened.
pub(crate) struct PgStore<'s> {
    session: &'s mut dyn Session,
    db: &'s Postgres,
    /// The server's time read with the last row loaded or locked, for the
    /// operation's next `now` (one round trip fewer).
    read_now: Option<Now>,
    /// Keys whose holder changed, to notify once the transaction commits.
    pub(crate) changed: Vec<Key>,
    /// Whether the engine owns the transaction (then it may trim the
    /// history; a caller's transaction never writes a row shared by all
    /// keys).
    owned: bool,
}

impl<'s> PgStore<'s> {
    pub(crate) fn new(session: &'s mut dyn Session, db: &'s Postgres, owned: bool) -> PgStore<'s> {
        PgStore {
            session,
            db,
            read_now: None,
            changed: Vec::new(),
            owned,
        }
    }

    fn fail(&self, e: postgres::Error) -> StorageError {
        storage(e, self.db.busy_timeout)
    }

    /// The time a row read brought back: the manual clock's if the engine
    /// has one, else the server's (microseconds).
    fn time_of(&self, server_us: i64, sent: std::time::Instant) -> Now {
        self.db.server_time.observe(server_us, sent);
        match &self.db.time {
            Some(time) => time.reading(),
            None => Now {
                ms: server_us.div_euclid(1000),
                fraction: server_us.rem_euclid(1000) != 0,
            },
        }
    }

    /// Loads or locks a row with the time after it.
    fn row(&mut self, sql: &str, key: &Key) -> StoreResult<Option<Record>> {
        let ns = key.namespace();
        let name = key.name();
        let sent = std::time::Instant::now();
        let rows = self
            .session
            .query(sql, &[(&ns, Type::TEXT), (&name, Type::TEXT)])
            .map_err(|e| self.fail(e))?;
        let row = rows.first().ok_or_else(|| {
            StorageError::message(crate::StorageKind::Other, "the row read returned nothing")
        })?;
        let present: bool = row.get(6);
        let now_us: i64 = row.get(7);
        self.read_now = Some(self.time_of(now_us, sent));
        Ok(present.then(|| record_from(row, 0)))
    }
}

/// A lease row from columns `at..at+6`.
fn record_from(row: &Row, at: usize) -> Record {
    Record {
        holder: row.get(at),
        epoch: u64::try_from(row.get::<_, i64>(at + 1)).unwrap_or(0),
        started_ms: row.get(at + 2),
        expiry_ms: row.get(at + 3),
        pinned_until_ms: row.get(at + 4),
        updated_ms: row.get(at + 5),
    }
}

fn pin_from(row: &Row, at: usize) -> PinRecord {
    PinRecord {
        entity: row.get(at),
        reason: row.get(at + 1),
        pinned_ms: row.get(at + 2),
        expires_ms: row.get(at + 3),
    }
}

fn event_from(row: &Row) -> Result<Event, StorageError> {
    let kind: String = row.get(2);
    let kind: EventKind = kind
        .parse()
        .map_err(|e: String| StorageError::message(crate::StorageKind::Other, e))?;
    Ok(Event::new(
        row.get(0),
        row.get(1),
        kind,
        row.get(3),
        u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        row.get(5),
        row.get(6),
    ))
}

impl Store for PgStore<'_> {
    fn now(&mut self) -> StoreResult<Now> {
        if let Some(now) = self.read_now.take() {
            return Ok(now);
        }
        if let Some(time) = &self.db.time {
            return Ok(time.reading());
        }
        let sent = std::time::Instant::now();
        let rows = self
            .session
            .query(&self.db.sql.now, &[])
            .map_err(|e| self.fail(e))?;
        let us: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(self.time_of(us, sent))
    }

    fn load(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        let sql = &self.db.sql.load;
        self.row(sql, key)
    }

    fn lock(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        let sql = &self.db.sql.lock;
        self.row(sql, key)
    }

    fn lock_for_claim(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        let locked = self.lock(key)?;
        if locked.is_some() {
            return Ok(locked);
        }
        // A key's first row: inserted vacant if absent (a rival's first
        // claim waits for this one's commit, then sees its row), then
        // locked.
        let ns = key.namespace();
        let name = key.name();
        let inserted = self
            .session
            .execute(
                &self.db.sql.insert_vacant,
                &[(&ns, Type::TEXT), (&name, Type::TEXT)],
            )
            .map_err(|e| self.fail(e))?;
        let locked = if inserted == 1 {
            let sql = &self.db.sql.lock_inserted;
            self.row(sql, key)?
        } else {
            self.lock(key)?
        };
        // The vacant placeholder stands for "never claimed" (the operation
        // saves over it; it never commits as it is).
        Ok(locked.filter(|r| r.epoch > 0 || r.holder.is_some() || r.updated_ms > 0))
    }

    fn save(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        let epoch = i64::try_from(rec.epoch).unwrap_or(i64::MAX);
        let (ns, name) = (key.namespace(), key.name());
        let params: [(&(dyn ToSql + Sync), Type); 8] = [
            (&ns, Type::TEXT),
            (&name, Type::TEXT),
            (&rec.holder, Type::TEXT),
            (&epoch, Type::INT8),
            (&rec.started_ms, Type::INT8),
            (&rec.expiry_ms, Type::INT8),
            (&rec.pinned_until_ms, Type::INT8),
            (&rec.updated_ms, Type::INT8),
        ];
        let updated = self
            .session
            .execute(&self.db.sql.update, &params)
            .map_err(|e| self.fail(e))?;
        if updated == 0 {
            self.session
                .execute(&self.db.sql.insert, &params)
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn extend_tenure(
        &mut self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool> {
        let Some(until) = now.checked_add(duration_ms) else {
            return Ok(false);
        };
        let ns = key.namespace();
        let name = key.name();
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.session
            .execute(
                &self.db.sql.extend,
                &[
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&now, Type::INT8),
                    (&until, Type::INT8),
                    (&holder, Type::TEXT),
                    (&epoch, Type::INT8),
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| self.fail(e))
    }

    fn extend_known(
        &mut self,
        key: &Key,
        holder: &str,
        known: Known,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool> {
        let Some(until) = now.checked_add(duration_ms) else {
            return Ok(false);
        };
        let ns = key.namespace();
        let name = key.name();
        let epoch = i64::try_from(known.epoch).unwrap_or(i64::MAX);
        self.session
            .execute(
                &self.db.sql.extend_known,
                &[
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&now, Type::INT8),
                    (&until, Type::INT8),
                    (&holder, Type::TEXT),
                    (&epoch, Type::INT8),
                    (&known.started_ms, Type::INT8),
                    (&known.expiry_ms, Type::INT8),
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| self.fail(e))
    }

    fn pins(&mut self, key: &Key) -> StoreResult<Vec<PinRecord>> {
        let ns = key.namespace();
        let name = key.name();
        let rows = self
            .session
            .query(&self.db.sql.pins, &[(&ns, Type::TEXT), (&name, Type::TEXT)])
            .map_err(|e| self.fail(e))?;
        Ok(rows.iter().map(|r| pin_from(r, 0)).collect())
    }

    fn put_pin(&mut self, key: &Key, pin: &PinRecord) -> StoreResult<()> {
        let ns = key.namespace();
        let name = key.name();
        self.session
            .execute(
                &self.db.sql.put_pin,
                &[
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&pin.entity, Type::TEXT),
                    (&pin.reason, Type::TEXT),
                    (&pin.pinned_ms, Type::INT8),
                    (&pin.expires_ms, Type::INT8),
                ],
            )
            .map(drop)
            .map_err(|e| self.fail(e))?;
        self.changed.push(key.clone());
        Ok(())
    }

    fn delete_pin(&mut self, key: &Key, entity: &str) -> StoreResult<bool> {
        let ns = key.namespace();
        let name = key.name();
        let n = self
            .session
            .execute(
                &self.db.sql.delete_pin,
                &[
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&entity, Type::TEXT),
                ],
            )
            .map_err(|e| self.fail(e))?;
        Ok(n > 0)
    }

    fn list(&mut self, namespace: &str) -> StoreResult<Vec<(String, Record)>> {
        let rows = self
            .session
            .query(&self.db.sql.list, &[(&namespace, Type::TEXT)])
            .map_err(|e| self.fail(e))?;
        Ok(rows.iter().map(|r| (r.get(0), record_from(r, 1))).collect())
    }

    fn list_pins(&mut self, namespace: &str) -> StoreResult<Vec<(String, PinRecord)>> {
        let rows = self
            .session
            .query(&self.db.sql.list_pins, &[(&namespace, Type::TEXT)])
            .map_err(|e| self.fail(e))?;
        Ok(rows.iter().map(|r| (r.get(0), pin_from(r, 1))).collect())
    }

    fn namespaces(&mut self) -> StoreResult<Vec<String>> {
        let rows = self
            .session
            .query(&self.db.sql.namespaces, &[])
            .map_err(|e| self.fail(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn record_event(&mut self, key: &Key, e: &EventRecord) -> StoreResult<()> {
        let ns = key.namespace();
        let name = key.name();
        let kind = e.kind.as_str();
        let epoch = i64::try_from(e.epoch).unwrap_or(i64::MAX);
        let rows = self
            .session
            .query(
                &self.db.sql.record_event,
                &[
                    (&e.at_ms, Type::INT8),
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&kind, Type::TEXT),
                    (&e.holder, Type::TEXT),
                    (&epoch, Type::INT8),
                    (&e.entity, Type::TEXT),
                    (&e.detail, Type::TEXT),
                ],
            )
            .map_err(|e| self.fail(e))?;
        if !self.changed.contains(key) {
            self.changed.push(key.clone());
        }
        // Trim every 64 events, in the engine's own transactions only.
        let id: i64 = rows.first().map_or(0, |r| r.get(0));
        if self.owned && id % 64 == 0 {
            let keep = i64::try_from(self.db.event_retention).unwrap_or(i64::MAX);
            let below = id.saturating_sub(keep);
            self.session
                .execute(&self.db.sql.trim, &[(&below, Type::INT8)])
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn history(&mut self, key: &Key, limit: usize) -> StoreResult<Vec<Event>> {
        let ns = key.namespace();
        let name = key.name();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .session
            .query(
                &self.db.sql.history,
                &[(&ns, Type::TEXT), (&name, Type::TEXT), (&limit, Type::INT8)],
            )
            .map_err(|e| self.fail(e))?;
        let mut events = rows.iter().map(event_from).collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    /// Events of transactions that have ended (below the snapshot's xmin),
    /// from the horizon `after` on: PostgreSQL's ids do not follow commit
    /// order, so the position is a transaction horizon, not an id.
    fn events_after(
        &mut self,
        namespace: Option<&str>,
        after: i64,
        limit: usize,
    ) -> StoreResult<Events> {
        let rows = self
            .session
            .query(&self.db.sql.horizon, &[])
            .map_err(|e| self.fail(e))?;
        let (horizon, trimmed): (i64, i64) = rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
        let after = after.max(0);
        let gap = (trimmed >= after && trimmed > 0).then_some(Gap::Trimmed);
        let from = if gap.is_some() { trimmed + 1 } else { after };
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let (from_text, horizon_text) = (from.to_string(), horizon.to_string());
        let rows = self
            .session
            .query(
                &self.db.sql.events_after,
                &[
                    (&from_text, Type::TEXT),
                    (&horizon_text, Type::TEXT),
                    (&namespace, Type::TEXT),
                    (&fetch, Type::INT8),
                ],
            )
            .map_err(|e| self.fail(e))?;
        let mut events = Vec::with_capacity(rows.len());
        let mut txs = Vec::with_capacity(rows.len());
        for r in &rows {
            let key = Key::new(r.get::<_, String>(7), r.get::<_, String>(8))
                .map_err(|e| StorageError::message(crate::StorageKind::Other, e.to_string()))?;
            events.push((key, event_from(r)?));
            txs.push(r.get::<_, i64>(9));
        }
        // A page cut short ends before its last transaction (whose events
        // are read whole next time), unless that one transaction fills it.
        let cursor = if events.len() > limit {
            let last = txs[limit];
            let keep = txs.iter().position(|&t| t == last).unwrap_or(limit);
            if keep > 0 {
                events.truncate(keep);
                last
            } else {
                events.truncate(limit);
                last
            }
        } else {
            horizon.max(from)
        };
        Ok(Events::new(events, gap, cursor))
    }

    fn guard_holds(&mut self, guard: &GuardSpec, now: i64) -> StoreResult<bool> {
        self.guard_at(guard, Some(now)).map(|(held, _)| held)
    }

    fn check_guard(&mut self, guard: &GuardSpec) -> StoreResult<(bool, i64)> {
        let at = self.db.time.as_ref().map(|t| t.reading().ms);
        self.guard_at(guard, at)
    }
}

impl PgStore<'_> {
    /// Whether this session's database holds the tables the engine opened
    /// (not another database's, with a schema of the same name).
    pub(crate) fn same_instance(&mut self) -> StoreResult<bool> {
        match self.session.query(&self.db.sql.instance, &[]) {
            Ok(rows) => Ok(rows
                .first()
                .is_some_and(|r| r.get::<_, String>(0) == self.db.instance)),
            Err(e) if crate::postgres::error::is_missing_object(&e) => Ok(false),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The guard at `now` (ms), or at the server's time when `None`;
    /// whether it holds and the time (ms) it was judged at.
    fn guard_at(&mut self, guard: &GuardSpec, now: Option<i64>) -> StoreResult<(bool, i64)> {
        let ns = guard.key.namespace();
        let name = guard.key.name();
        let rows = match guard.epoch {
            Some(epoch) => {
                let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
                self.session.query(
                    &self.db.sql.fenced_guard,
                    &[
                        (&ns, Type::TEXT),
                        (&name, Type::TEXT),
                        (&guard.holder, Type::TEXT),
                        (&now, Type::INT8),
                        (&self.db.instance, Type::TEXT),
                        (&epoch, Type::INT8),
                    ],
                )
            }
            None => self.session.query(
                &self.db.sql.guard,
                &[
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&guard.holder, Type::TEXT),
                    (&now, Type::INT8),
                    (&self.db.instance, Type::TEXT),
                ],
            ),
        }
        .map_err(|e| self.fail(e))?;
        let row = rows.first().ok_or_else(|| {
            StorageError::message(crate::StorageKind::Other, "the guard returned nothing")
        })?;
        let us: i64 = row.get(1);
        Ok((row.get(0), us.div_euclid(1000)))
    }
}

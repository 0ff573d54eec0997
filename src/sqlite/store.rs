//! The [`Store`] on a SQLite connection, and the guard SQL: the lease rows,
//! pins and events as `leasehold_*` tables, on any `&Connection` inside a
//! transaction — the engine's own or the caller's.

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};

use crate::core::error::StorageError;
use crate::core::event::{Event, EventRecord, Events};
use crate::core::key::Key;
use crate::core::lease::{PinRecord, Record};
use crate::core::store::{GuardSpec, Known, Now, Store, StoreResult};
use crate::sqlite::Sqlite;
use crate::sqlite::error::storage;

/// The guard's row condition, with `$epoch` (empty, or the epoch condition)
/// in it: `FROM … WHERE …`.
macro_rules! guard_from_where {
    ($epoch:literal) => {
        concat!(
            "FROM main.leasehold_leases \
             WHERE namespace = ? AND name = ? AND holder = ?",
            $epoch,
            " AND max(expiry_ms, pinned_until_ms) > max(?, updated_ms)"
        )
    };
}

/// The guard predicate, with `$epoch` (empty, or the epoch condition) in it.
macro_rules! guard_predicate {
    ($epoch:literal) => {
        concat!("EXISTS (SELECT 1 ", guard_from_where!($epoch), ")")
    };
}

/// The guard predicate for an unfenced token: true while `holder` holds the
/// key. Parameters, in order: namespace, name, holder, now (ms).
///
/// It must agree with [`Record::is_held_by`]; the tests check that it does.
pub(crate) const GUARD_SQL: &str = guard_predicate!("");

/// The guard predicate for a token fixed to one tenure. Parameters, in
/// order: namespace, name, holder, epoch, now (ms).
pub(crate) const FENCED_GUARD_SQL: &str = guard_predicate!(" AND epoch = ?");

/// [`GUARD_SQL`] as a query of its own: a row if the guard holds, none if
/// not (cheaper to run than `SELECT EXISTS (…)`).
pub(crate) const GUARD_QUERY: &str = concat!("SELECT 1 ", guard_from_where!(""));

/// [`FENCED_GUARD_SQL`] as a query of its own.
pub(crate) const FENCED_GUARD_QUERY: &str =
    concat!("SELECT 1 ", guard_from_where!(" AND epoch = ?"));

/// [`Store`] on a SQLite connection of the database `db` opened. Statements
/// come from the connection's cache; the engine's own stores keep them
/// checked out for the store's life, so that a batch of operations (many
/// claims in one transaction) prepares each once.
pub(crate) struct SqliteStore<'c> {
    conn: &'c Connection,
    db: &'c Sqlite,
    /// `None` for a store that returns statements to the cache after each
    /// use (its owner must not keep the connection borrowed).
    held: Option<Vec<(&'static str, CachedStatement<'c>)>>,
    /// Whether the engine owns the transaction (and will learn what was
    /// persisted once it commits).
    owned: bool,
    /// The clock mark and offset this transaction wrote, if any.
    persisted: Option<(i64, i64)>,
}

impl<'c> SqliteStore<'c> {
    /// A store in a transaction of the caller's, keeping nothing checked
    /// out between calls.
    pub(crate) fn borrowed(db: &'c Sqlite, conn: &'c Connection) -> SqliteStore<'c> {
        SqliteStore {
            conn,
            db,
            held: None,
            owned: false,
            persisted: None,
        }
    }

    /// A store in the engine's own transaction, keeping its statements
    /// checked out until dropped.
    pub(crate) fn owned(db: &'c Sqlite, conn: &'c Connection) -> SqliteStore<'c> {
        SqliteStore {
            conn,
            db,
            held: Some(Vec::new()),
            owned: true,
            persisted: None,
        }
    }

    /// The clock mark and offset this transaction wrote (only the engine's
    /// own transactions report them: yours may roll back).
    pub(crate) fn persisted_high_water(&self) -> Option<(i64, i64)> {
        self.persisted.filter(|_| self.owned)
    }

    /// SQLite's error as a storage error.
    fn fail(&self, e: rusqlite::Error) -> StorageError {
        storage(e, self.db.busy_timeout)
    }

    /// Runs `f` with the prepared statement for `sql`, found by the address
    /// of the static string (no hashing of the SQL text).
    fn with<T>(
        &mut self,
        sql: &'static str,
        f: impl FnOnce(&mut CachedStatement<'c>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let Some(held) = &mut self.held else {
            return f(&mut self.conn.prepare_cached(sql)?);
        };
        let i = match held.iter().position(|(s, _)| std::ptr::eq(*s, sql)) {
            Some(i) => i,
            None => {
                held.push((sql, self.conn.prepare_cached(sql)?));
                held.len() - 1
            }
        };
        f(&mut held[i].1)
    }

    /// The one-statement extension (see [`Store::extend_tenure`]): `sql`
    /// from `extend_sql!`, whose conditions past the sixth parameter take
    /// `extra`. Only the common case: the row was last written no later
    /// than `now` (so max(now, updated_ms) = now), the holder and epoch
    /// match, and max(expiry, pinned_until) > now; then expiry = max(expiry,
    /// now + d) and updated = now. In every other case nothing is written
    /// and the caller falls back to the state machine, which also handles a
    /// row from a clock ahead of ours, and a sum past i64::MAX.
    #[allow(clippy::too_many_arguments)]
    fn extend_where(
        &mut self,
        sql: &'static str,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
        extra: &[i64],
    ) -> rusqlite::Result<bool> {
        let Some(until) = now.checked_add(duration_ms) else {
            return Ok(false);
        };
        self.with(sql, |st| {
            // The raw API skips `execute`'s count check, and a held
            // statement keeps its last bindings: bind every parameter.
            debug_assert_eq!(st.parameter_count(), 6 + extra.len());
            st.raw_bind_parameter(1, key.namespace())?;
            st.raw_bind_parameter(2, key.name())?;
            st.raw_bind_parameter(3, now)?;
            st.raw_bind_parameter(4, until)?;
            st.raw_bind_parameter(5, holder)?;
            st.raw_bind_parameter(6, epoch)?;
            for (i, v) in extra.iter().enumerate() {
                st.raw_bind_parameter(7 + i, v)?;
            }
            st.raw_execute()
        })
        .map(|n| n == 1)
    }
}

/// The latest engine time the database proves has passed (the persisted
/// high-water mark, or any lease row's last write if later), and the
/// largest clock offset persisted.
pub(crate) fn high_water(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(
        "SELECT max(coalesce((SELECT high_water_ms FROM main.leasehold_clock WHERE id = 1), 0),
                    coalesce((SELECT max(updated_ms) FROM main.leasehold_leases), 0)),
                coalesce((SELECT offset_ms FROM main.leasehold_clock WHERE id = 1), 0)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Raises the persisted mark to `ms` and offset to `offset` (neither is
/// ever lowered).
const PERSIST_CLOCK: &str = "UPDATE main.leasehold_clock
    SET high_water_ms = max(high_water_ms, ?1), offset_ms = max(offset_ms, ?2)
    WHERE id = 1 AND (high_water_ms < ?1 OR offset_ms < ?2)";

/// Persists the high-water mark `ms` and the clock offset `offset` on
/// `conn`, in whatever transaction it is (or in one of its own).
pub(crate) fn persist_high_water(conn: &Connection, ms: i64, offset: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(PERSIST_CLOCK)?
        .execute([ms, offset])
        .map(drop)
}

fn record_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Record> {
    Ok(Record {
        holder: row.get(at)?,
        epoch: row.get(at + 1)?,
        started_ms: row.get(at + 2)?,
        expiry_ms: row.get(at + 3)?,
        pinned_until_ms: row.get(at + 4)?,
        updated_ms: row.get(at + 5)?,
    })
}

fn pin_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<PinRecord> {
    Ok(PinRecord {
        entity: row.get(at)?,
        reason: row.get(at + 1)?,
        pinned_ms: row.get(at + 2)?,
        expires_ms: row.get(at + 3)?,
    })
}

/// The one-statement extension's UPDATE, with `$extra` conditions (on
/// parameters 7 and up) added to its WHERE.
macro_rules! extend_sql {
    ($extra:literal) => {
        concat!(
            "UPDATE main.leasehold_leases
             SET expiry_ms = max(expiry_ms, ?4), updated_ms = ?3
             WHERE namespace = ?1 AND name = ?2 AND holder = ?5 AND epoch = ?6",
            $extra,
            " AND updated_ms <= ?3 AND (expiry_ms > ?3 OR pinned_until_ms > ?3)"
        )
    };
}

/// A lease row's values in the order `save` and `save_same_epoch` number
/// them: namespace, name, holder, epoch, started, expiry, pinned until,
/// updated.
fn row_values<'a>(key: &'a Key, rec: &'a Record) -> impl rusqlite::Params + 'a {
    (
        key.namespace(),
        key.name(),
        rec.holder.as_deref(),
        rec.epoch,
        rec.started_ms,
        rec.expiry_ms,
        rec.pinned_until_ms,
        rec.updated_ms,
    )
}

macro_rules! record_columns {
    () => {
        "holder, epoch, started_ms, expiry_ms, pinned_until_ms, updated_ms"
    };
}

impl SqliteStore<'_> {
    fn sql_load(&mut self, key: &Key) -> rusqlite::Result<Option<Record>> {
        self.with(
            concat!(
                "SELECT ",
                record_columns!(),
                " FROM main.leasehold_leases WHERE namespace = ?1 AND name = ?2"
            ),
            |st| {
                st.query_row([key.namespace(), key.name()], |r| record_from_row(r, 0))
                    .optional()
            },
        )
    }

    fn sql_save(&mut self, key: &Key, rec: &Record) -> rusqlite::Result<()> {
        // Existing keys take an UPDATE (the common case: no insert trigger to
        // run); a key's first row takes an INSERT.
        let updated = self.with(
            "UPDATE main.leasehold_leases SET holder = ?3, epoch = ?4, started_ms = ?5,
                expiry_ms = ?6, pinned_until_ms = ?7, updated_ms = ?8
             WHERE namespace = ?1 AND name = ?2",
            |st| st.execute(row_values(key, rec)),
        )?;
        if updated == 0 {
            self.with(
                "INSERT INTO main.leasehold_leases
                    (namespace, name, holder, epoch, started_ms, expiry_ms, pinned_until_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                |st| st.execute(row_values(key, rec)),
            )?;
        }
        Ok(())
    }

    fn sql_save_same_epoch(&mut self, key: &Key, rec: &Record) -> rusqlite::Result<()> {
        let updated = self.with(
            "UPDATE main.leasehold_leases SET holder = ?3, started_ms = ?5, expiry_ms = ?6,
                pinned_until_ms = ?7, updated_ms = ?8
             WHERE namespace = ?1 AND name = ?2 AND epoch = ?4",
            |st| st.execute(row_values(key, rec)),
        )?;
        // No row yet (a first pin), or (never, from our callers) another
        // epoch stored: the full save inserts, or lets the trigger judge.
        if updated == 0 {
            self.sql_save(key, rec)?;
        }
        Ok(())
    }

    fn sql_pins(&mut self, key: &Key) -> rusqlite::Result<Vec<PinRecord>> {
        self.conn
            .prepare_cached(
                "SELECT entity, reason, pinned_ms, expires_ms FROM main.leasehold_pins
                 WHERE namespace = ?1 AND name = ?2 ORDER BY entity",
            )?
            .query_map([key.namespace(), key.name()], |r| pin_from_row(r, 0))?
            .collect()
    }

    fn sql_put_pin(&mut self, key: &Key, pin: &PinRecord) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO main.leasehold_pins (namespace, name, entity, reason, pinned_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (namespace, name, entity) DO UPDATE SET
                    reason = excluded.reason, pinned_ms = excluded.pinned_ms,
                    expires_ms = excluded.expires_ms",
            )?
            .execute(params![
                key.namespace(),
                key.name(),
                pin.entity,
                pin.reason,
                pin.pinned_ms,
                pin.expires_ms
            ])
            .map(drop)
    }

    fn sql_delete_pin(&mut self, key: &Key, entity: &str) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached(
                "DELETE FROM main.leasehold_pins WHERE namespace = ?1 AND name = ?2 AND entity = ?3",
            )?
            .execute([key.namespace(), key.name(), entity])
            .map(|n| n > 0)
    }

    fn sql_list(&mut self, namespace: &str) -> rusqlite::Result<Vec<(String, Record)>> {
        self.conn
            .prepare_cached(concat!(
                "SELECT name, ",
                record_columns!(),
                " FROM main.leasehold_leases WHERE namespace = ?1 ORDER BY name"
            ))?
            .query_map([namespace], |r| Ok((r.get(0)?, record_from_row(r, 1)?)))?
            .collect()
    }

    fn sql_list_pins(&mut self, namespace: &str) -> rusqlite::Result<Vec<(String, PinRecord)>> {
        self.conn
            .prepare_cached(
                "SELECT name, entity, reason, pinned_ms, expires_ms FROM main.leasehold_pins
                 WHERE namespace = ?1 ORDER BY name, entity",
            )?
            .query_map([namespace], |r| Ok((r.get(0)?, pin_from_row(r, 1)?)))?
            .collect()
    }

    fn sql_record_event(&mut self, key: &Key, e: &EventRecord) -> rusqlite::Result<()> {
        let retention = self.db.event_retention;
        self.with(
            "INSERT INTO main.leasehold_events (at_ms, namespace, name, kind, holder, epoch, entity, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            |st| {
                st.execute(params![
                    e.at_ms,
                    key.namespace(),
                    key.name(),
                    e.kind.as_str(),
                    e.holder,
                    e.epoch,
                    e.entity,
                    e.detail
                ])
            },
        )?;
        // Trim the history every 64 events rather than at each one, so that
        // most events write one page, not two.
        let newest = self.conn.last_insert_rowid();
        if newest % 64 != 0 {
            return Ok(());
        }
        let keep = i64::try_from(retention).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached("DELETE FROM main.leasehold_events WHERE id <= ?1")?
            .execute([newest.saturating_sub(keep)])
            .map(drop)
    }

    fn sql_save_extension(&mut self, key: &Key, rec: &Record) -> rusqlite::Result<()> {
        self.with(
            "UPDATE main.leasehold_leases SET expiry_ms = ?3, updated_ms = ?4
             WHERE namespace = ?1 AND name = ?2",
            |st| {
                st.execute(params![
                    key.namespace(),
                    key.name(),
                    rec.expiry_ms,
                    rec.updated_ms
                ])
            },
        )
        .map(drop)
    }

    fn sql_extend_tenure(
        &mut self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> rusqlite::Result<bool> {
        self.extend_where(extend_sql!(""), key, holder, epoch, now, duration_ms, &[])
    }

    fn sql_extend_known(
        &mut self,
        key: &Key,
        holder: &str,
        known: Known,
        now: i64,
        duration_ms: i64,
    ) -> rusqlite::Result<bool> {
        self.extend_where(
            extend_sql!(" AND started_ms = ?7 AND expiry_ms = ?8"),
            key,
            holder,
            known.epoch,
            now,
            duration_ms,
            &[known.started_ms, known.expiry_ms],
        )
    }
}

impl Store for SqliteStore<'_> {
    fn now(&mut self) -> StoreResult<Now> {
        Ok(self.db.time.reading())
    }

    fn load(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        self.sql_load(key).map_err(|e| self.fail(e))
    }

    fn save(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        self.sql_save(key, rec).map_err(|e| self.fail(e))
    }

    fn save_same_epoch(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        self.sql_save_same_epoch(key, rec).map_err(|e| self.fail(e))
    }

    fn save_extension(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        self.sql_save_extension(key, rec).map_err(|e| self.fail(e))
    }

    fn extend_tenure(
        &mut self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool> {
        self.sql_extend_tenure(key, holder, epoch, now, duration_ms)
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
        self.sql_extend_known(key, holder, known, now, duration_ms)
            .map_err(|e| self.fail(e))
    }

    fn pins(&mut self, key: &Key) -> StoreResult<Vec<PinRecord>> {
        self.sql_pins(key).map_err(|e| self.fail(e))
    }

    fn put_pin(&mut self, key: &Key, pin: &PinRecord) -> StoreResult<()> {
        self.sql_put_pin(key, pin).map_err(|e| self.fail(e))
    }

    fn delete_pin(&mut self, key: &Key, entity: &str) -> StoreResult<bool> {
        self.sql_delete_pin(key, entity).map_err(|e| self.fail(e))
    }

    fn list(&mut self, namespace: &str) -> StoreResult<Vec<(String, Record)>> {
        self.sql_list(namespace).map_err(|e| self.fail(e))
    }

    fn list_pins(&mut self, namespace: &str) -> StoreResult<Vec<(String, PinRecord)>> {
        self.sql_list_pins(namespace).map_err(|e| self.fail(e))
    }

    fn namespaces(&mut self) -> StoreResult<Vec<String>> {
        self.conn
            .prepare_cached(
                "SELECT DISTINCT namespace FROM main.leasehold_leases ORDER BY namespace",
            )
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.fail(e))
    }

    fn record_event(&mut self, key: &Key, event: &EventRecord) -> StoreResult<()> {
        self.sql_record_event(key, event).map_err(|e| self.fail(e))
    }

    fn history(&mut self, key: &Key, limit: usize) -> StoreResult<Vec<Event>> {
        crate::sqlite::history::history(self.conn, key, limit).map_err(|e| self.fail(e))
    }

    fn events_after(
        &mut self,
        namespace: Option<&str>,
        after: i64,
        limit: usize,
    ) -> StoreResult<Events> {
        crate::sqlite::history::events_after(self.conn, namespace, after, limit)
            .map_err(|e| self.fail(e))
    }

    fn guard_holds(&mut self, guard: &GuardSpec, now: i64) -> StoreResult<bool> {
        let (ns, name, holder) = (guard.key.namespace(), guard.key.name(), &guard.holder);
        match guard.epoch {
            Some(epoch) => self.with(FENCED_GUARD_QUERY, |st| {
                st.exists(params![ns, name, holder, epoch as i64, now])
            }),
            None => self.with(GUARD_QUERY, |st| st.exists(params![ns, name, holder, now])),
        }
        .map_err(|e| self.fail(e))
    }

    fn finish_write(&mut self, now: i64) -> StoreResult<()> {
        if self.persisted.is_some() || !self.db.time.persist_due(now, self.owned) {
            return Ok(());
        }
        let offset = self.db.time.offset();
        self.with(PERSIST_CLOCK, |st| st.execute([now, offset]))
            .map_err(|e| self.fail(e))?;
        self.persisted = Some((now, offset));
        if !self.owned {
            // The engine cannot see your transaction end. Noting the mark as
            // written (unconfirmed) keeps your other transactions from each
            // writing it again; should this one roll back, the engine's own
            // next write still persists it.
            self.db.time.written_unconfirmed(now, offset);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The guard and the one-statement extensions restate, in SQL, rules
    //! that `Record` decides: checked against it on generated rows.

    use super::*;
    use crate::core::lease::FOREVER_MS;
    use proptest::prelude::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("memory db");
        crate::sqlite::schema::migrate(&conn).expect("schema");
        conn
    }

    fn key() -> Key {
        Key::new("t", "k").expect("key")
    }

    /// Replaces the one row with `rec`.
    fn put(conn: &Connection, rec: &Record) {
        conn.execute_batch(
            "DROP TRIGGER IF EXISTS leasehold_leases_keep_rows;
             DROP TRIGGER IF EXISTS leasehold_leases_epoch_never_decreases;
             DROP TRIGGER IF EXISTS leasehold_leases_no_replacement_downwards;
             DELETE FROM leasehold_leases;",
        )
        .expect("clear");
        conn.execute(
            "INSERT INTO leasehold_leases
                (namespace, name, holder, epoch, started_ms, expiry_ms, pinned_until_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            row_values(&key(), rec),
        )
        .expect("insert");
    }

    fn get(conn: &Connection) -> Record {
        conn.query_row(
            concat!("SELECT ", record_columns!(), " FROM leasehold_leases"),
            [],
            |r| record_from_row(r, 0),
        )
        .expect("row")
    }

    fn holder() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("a".to_owned())),
            Just(Some("b".to_owned()))
        ]
    }

    prop_compose! {
        fn record()(
            holder in holder(),
            epoch in 0u64..4,
            started in 0i64..50,
            expiry in 0i64..100,
            pinned in prop_oneof![Just(0i64), 0i64..100, Just(FOREVER_MS)],
            updated in 0i64..100,
        ) -> Record {
            Record {
                holder,
                epoch,
                started_ms: started,
                expiry_ms: expiry,
                pinned_until_ms: pinned,
                updated_ms: updated,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The guard (both forms) holds exactly when `Record::is_held_by`.
        #[test]
        fn the_guard_sql_agrees_with_the_record(
            rec in record(),
            who in prop_oneof![Just("a"), Just("b")],
            epoch in prop_oneof![Just(None), (0u64..4).prop_map(Some)],
            now in 0i64..110,
        ) {
            let conn = db();
            put(&conn, &rec);
            let k = key();
            let held = match epoch {
                Some(e) => conn
                    .prepare(FENCED_GUARD_QUERY)
                    .and_then(|mut s| s.exists(params![k.namespace(), k.name(), who, e as i64, now])),
                None => conn
                    .prepare(GUARD_QUERY)
                    .and_then(|mut s| s.exists(params![k.namespace(), k.name(), who, now])),
            }
            .expect("guard query");
            prop_assert_eq!(held, rec.is_held_by(who, epoch, now));
            // The predicate form, as an application's statement embeds it.
            let sql = match epoch {
                Some(_) => format!("SELECT {FENCED_GUARD_SQL}"),
                None => format!("SELECT {GUARD_SQL}"),
            };
            let as_predicate: bool = match epoch {
                Some(e) => conn.query_row(&sql, params![k.namespace(), k.name(), who, e as i64, now], |r| r.get(0)),
                None => conn.query_row(&sql, params![k.namespace(), k.name(), who, now], |r| r.get(0)),
            }
            .expect("guard predicate");
            prop_assert_eq!(as_predicate, held);
        }

        /// The one-statement extension writes exactly when the holder holds
        /// that tenure and the row is not from a clock ahead, and then
        /// leaves the row `Record::claim` would.
        #[test]
        fn the_one_statement_extensions_agree_with_the_record(
            rec in record(),
            who in prop_oneof![Just("a"), Just("b")],
            epoch in 0u64..4,
            now in 0i64..110,
            duration in 1i64..60,
            known_matches in any::<bool>(),
        ) {
            let conn = db();
            let k = key();
            for with_known in [false, true] {
                put(&conn, &rec);
                let sql = if with_known {
                    extend_sql!(" AND started_ms = ?7 AND expiry_ms = ?8")
                } else {
                    extend_sql!("")
                };
                let (started, expiry) = if known_matches {
                    (rec.started_ms, rec.expiry_ms)
                } else {
                    (rec.started_ms + 1, rec.expiry_ms)
                };
                let mut st = conn.prepare(sql).expect("prepare");
                st.raw_bind_parameter(1, k.namespace()).expect("bind");
                st.raw_bind_parameter(2, k.name()).expect("bind");
                st.raw_bind_parameter(3, now).expect("bind");
                st.raw_bind_parameter(4, now + duration).expect("bind");
                st.raw_bind_parameter(5, who).expect("bind");
                st.raw_bind_parameter(6, epoch).expect("bind");
                if with_known {
                    st.raw_bind_parameter(7, started).expect("bind");
                    st.raw_bind_parameter(8, expiry).expect("bind");
                }
                let wrote = st.raw_execute().expect("extend") == 1;
                drop(st);
                let expected = rec.updated_ms <= now
                    && rec.is_held_by(who, Some(epoch), now)
                    && (!with_known || known_matches);
                prop_assert_eq!(wrote, expected, "with_known={}", with_known);
                if wrote {
                    let (decided, claimed) =
                        Record::claim(Some(&rec), who, now, duration).expect("an extension");
                    prop_assert_eq!(claimed, crate::core::lease::Claimed::Extended);
                    prop_assert_eq!(get(&conn), decided);
                } else {
                    prop_assert_eq!(get(&conn), rec.clone(), "nothing written");
                }
            }
        }
    }
}

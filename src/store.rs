//! The storage seam: loading and saving lease rows, pins and events.
//!
//! [`Store`] is all the lease logic (`ops.rs`) needs from a database; it
//! makes no decisions. [`SqliteStore`] implements it on any `&Connection`
//! that is inside a transaction — the engine's own or the caller's. Another
//! backend (PostgreSQL, say) would implement the same trait and its own
//! guard SQL.

use std::cell::RefCell;

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};

use crate::core::event::EventRecord;
use crate::core::key::Key;
use crate::core::lease::{PinRecord, Record};

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

/// A tenure as a process last wrote it: what a re-claim expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    pub epoch: u64,
    pub started_ms: i64,
    pub expiry_ms: i64,
}

/// Reads and writes of one transaction. Every method runs inside the
/// transaction its implementation was made for.
pub(crate) trait Store {
    type Error;
    fn load(&self, key: &Key) -> Result<Option<Record>, Self::Error>;
    fn save(&self, key: &Key, rec: &Record) -> Result<(), Self::Error>;
    fn pins(&self, key: &Key) -> Result<Vec<PinRecord>, Self::Error>;
    fn put_pin(&self, key: &Key, pin: &PinRecord) -> Result<(), Self::Error>;
    fn delete_pin(&self, key: &Key, entity: &str) -> Result<bool, Self::Error>;
    fn list(&self, namespace: &str) -> Result<Vec<(String, Record)>, Self::Error>;
    fn list_pins(&self, namespace: &str) -> Result<Vec<(String, PinRecord)>, Self::Error>;
    fn record_event(
        &self,
        key: &Key,
        event: &EventRecord,
        retention: u64,
    ) -> Result<(), Self::Error>;
    fn persist_high_water(&self, ms: i64) -> Result<(), Self::Error>;

    /// Saves a row whose epoch the write leaves as it was (a release, a
    /// revoke, a pin change). Same effect as [`Store::save`]; cheaper,
    /// because a statement that sets no epoch does not run the trigger
    /// guarding epochs, nor journal its page for a statement rollback.
    fn save_same_epoch(&self, key: &Key, rec: &Record) -> Result<(), Self::Error>;

    /// As [`Store::extend_tenure`], only if the row also still shows the
    /// start and expiry in `known`; the row is then known exactly: expiry
    /// `max(known.expiry_ms, now + duration_ms)`.
    fn extend_known(
        &self,
        key: &Key,
        holder: &str,
        known: Known,
        now: i64,
        duration_ms: i64,
    ) -> Result<bool, Self::Error>;

    /// Saves an extension: only the expiry and the row's time change.
    fn save_extension(&self, key: &Key, rec: &Record) -> Result<(), Self::Error>;

    /// Extends tenure `epoch` of `holder` if it is current at `now`, in one
    /// statement: exactly [`Record::claim`]'s extension branch for that
    /// case. Returns whether it did; `false` writes nothing.
    fn extend_tenure(
        &self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> Result<bool, Self::Error>;
}

/// [`Store`] on a SQLite connection. Statements come from the connection's
/// cache and stay checked out for the store's life, so that a batch of
/// operations (many claims in one transaction) prepares each once.
pub(crate) struct SqliteStore<'c> {
    conn: &'c Connection,
    /// `None` for a store that returns statements to the cache after each
    /// use (its owner must not keep the connection borrowed).
    held: Option<RefCell<Vec<(&'static str, CachedStatement<'c>)>>>,
}

impl<'c> SqliteStore<'c> {
    /// A store that keeps nothing checked out between calls.
    pub fn new(conn: &'c Connection) -> SqliteStore<'c> {
        SqliteStore { conn, held: None }
    }

    /// A store that keeps its statements checked out until dropped: for the
    /// engine's own transactions, where many operations may run.
    pub fn holding(conn: &'c Connection) -> SqliteStore<'c> {
        SqliteStore {
            conn,
            held: Some(RefCell::new(Vec::new())),
        }
    }

    /// Runs `f` with the prepared statement for `sql`, found by the address
    /// of the static string (no hashing of the SQL text).
    fn with<T>(
        &self,
        sql: &'static str,
        f: impl FnOnce(&mut CachedStatement<'c>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let Some(held) = &self.held else {
            return f(&mut self.conn.prepare_cached(sql)?);
        };
        let mut held = held.borrow_mut();
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
        &self,
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

    /// The latest engine time the database proves has passed: the persisted
    /// high-water mark, or any lease row's last write if later.
    pub fn high_water(&self) -> rusqlite::Result<i64> {
        self.with(
            "SELECT max(coalesce((SELECT high_water_ms FROM main.leasehold_clock WHERE id = 1), 0),
                        coalesce((SELECT max(updated_ms) FROM main.leasehold_leases), 0))",
            |st| st.query_row([], |r| r.get(0)),
        )
    }
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

impl Store for SqliteStore<'_> {
    type Error = rusqlite::Error;

    fn load(&self, key: &Key) -> rusqlite::Result<Option<Record>> {
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

    fn save(&self, key: &Key, rec: &Record) -> rusqlite::Result<()> {
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

    fn save_same_epoch(&self, key: &Key, rec: &Record) -> rusqlite::Result<()> {
        let updated = self.with(
            "UPDATE main.leasehold_leases SET holder = ?3, started_ms = ?5, expiry_ms = ?6,
                pinned_until_ms = ?7, updated_ms = ?8
             WHERE namespace = ?1 AND name = ?2 AND epoch = ?4",
            |st| st.execute(row_values(key, rec)),
        )?;
        // No row yet (a first pin), or (never, from our callers) another
        // epoch stored: the full save inserts, or lets the trigger judge.
        if updated == 0 {
            self.save(key, rec)?;
        }
        Ok(())
    }

    fn pins(&self, key: &Key) -> rusqlite::Result<Vec<PinRecord>> {
        self.conn
            .prepare_cached(
                "SELECT entity, reason, pinned_ms, expires_ms FROM main.leasehold_pins
                 WHERE namespace = ?1 AND name = ?2 ORDER BY entity",
            )?
            .query_map([key.namespace(), key.name()], |r| pin_from_row(r, 0))?
            .collect()
    }

    fn put_pin(&self, key: &Key, pin: &PinRecord) -> rusqlite::Result<()> {
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

    fn delete_pin(&self, key: &Key, entity: &str) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached(
                "DELETE FROM main.leasehold_pins WHERE namespace = ?1 AND name = ?2 AND entity = ?3",
            )?
            .execute([key.namespace(), key.name(), entity])
            .map(|n| n > 0)
    }

    fn list(&self, namespace: &str) -> rusqlite::Result<Vec<(String, Record)>> {
        self.conn
            .prepare_cached(concat!(
                "SELECT name, ",
                record_columns!(),
                " FROM main.leasehold_leases WHERE namespace = ?1 ORDER BY name"
            ))?
            .query_map([namespace], |r| Ok((r.get(0)?, record_from_row(r, 1)?)))?
            .collect()
    }

    fn list_pins(&self, namespace: &str) -> rusqlite::Result<Vec<(String, PinRecord)>> {
        self.conn
            .prepare_cached(
                "SELECT name, entity, reason, pinned_ms, expires_ms FROM main.leasehold_pins
                 WHERE namespace = ?1 ORDER BY name, entity",
            )?
            .query_map([namespace], |r| Ok((r.get(0)?, pin_from_row(r, 1)?)))?
            .collect()
    }

    fn record_event(&self, key: &Key, e: &EventRecord, retention: u64) -> rusqlite::Result<()> {
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

    fn save_extension(&self, key: &Key, rec: &Record) -> rusqlite::Result<()> {
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

    fn extend_tenure(
        &self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> rusqlite::Result<bool> {
        self.extend_where(extend_sql!(""), key, holder, epoch, now, duration_ms, &[])
    }

    fn extend_known(
        &self,
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

    fn persist_high_water(&self, ms: i64) -> rusqlite::Result<()> {
        self.with(
            "UPDATE main.leasehold_clock SET high_water_ms = ?1 WHERE id = 1 AND high_water_ms < ?1",
            |st| st.execute([ms]),
        )
        .map(drop)
    }
}

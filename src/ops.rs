//! Lease operations inside one transaction: the glue between the pure state
//! machine (`lease.rs`), the store (`store.rs`) and engine time.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use rusqlite::Connection;

use crate::core::clock::from_ms;
use crate::core::error::{Context, Error, Result};
use crate::core::event::Event;
use crate::core::event::{EventKind, EventRecord};
use crate::core::key::{Key, MAX_REASON_LEN, duration_ms, validate_name, validate_text};
use crate::core::lease::{Claimed, PinRecord, Record};
use crate::core::snapshot::{Lease, live_pins};
use crate::engine::Engine;
use crate::store::{Known, SqliteStore, Store};
use crate::token::Tenure;

/// Lease operations on a transaction you own; from [`Engine::in_txn`].
///
/// Each method changes only what its [`Engine`] counterpart changes, inside
/// your transaction: nothing is visible to others, and nothing is final,
/// until you commit. The guarantees of a claim start when your transaction
/// commits, but are measured from the instant of the call, so commit
/// promptly. A [`Tenure`] (and its token) from a claim you then roll back
/// describes a tenure that never existed: drop it, since its epoch may be
/// given to the next real tenure.
pub struct InTxn<'c> {
    engine: &'c Engine,
    conn: &'c Connection,
    /// The engine's store with statements kept checked out, for its own
    /// transactions; `None` in yours (nothing may outlive your borrow).
    store: Option<&'c DynStore<'c>>,
    /// Whether the engine owns the transaction (and will tell it what was
    /// persisted once it commits).
    owned: bool,
    persisted: Cell<Option<i64>>,
}

impl<'c> InTxn<'c> {
    /// Operations in a transaction the engine began and will commit.
    pub(crate) fn owned(
        engine: &'c Engine,
        conn: &'c Connection,
        store: &'c DynStore<'c>,
    ) -> InTxn<'c> {
        InTxn {
            engine,
            conn,
            store: Some(store),
            owned: true,
            persisted: Cell::new(None),
        }
    }

    /// Operations in the caller's transaction.
    pub(crate) fn borrowed(engine: &'c Engine, conn: &'c Connection) -> InTxn<'c> {
        InTxn {
            engine,
            conn,
            store: None,
            owned: false,
            persisted: Cell::new(None),
        }
    }

    /// The high-water mark this transaction wrote, once it commits (only
    /// the engine's own transactions report it: yours may roll back).
    pub(crate) fn persisted_high_water(&self) -> Option<i64> {
        self.persisted.get().filter(|_| self.owned)
    }

    /// The connection this runs on.
    pub(crate) fn connection(&self) -> &'c Connection {
        self.conn
    }

    fn store(&self) -> StoreRef<'c> {
        match self.store {
            Some(s) => StoreRef::Held(s),
            None => StoreRef::Fresh(SqliteStore::new(self.conn)),
        }
    }

    /// Maps an SQLite error to ours; the context is built only on failure,
    /// off the hot path.
    fn fail<'a>(
        &'a self,
        ctx: impl Fn() -> Context + 'a,
    ) -> impl Fn(rusqlite::Error) -> Error + 'a {
        move |e| crate::sqlite::error::fail(ctx(), e, self.engine.busy_timeout())
    }

    /// Ends a write that succeeded: persists the high-water mark too when
    /// due, once per transaction. (Refused operations write nothing at all.)
    fn finish_write(&self, store: &DynStore<'_>, now: i64) -> rusqlite::Result<()> {
        if self.persisted.get().is_none() && self.engine.high_water_due(now, self.owned) {
            store.persist_high_water(now)?;
            self.persisted.set(Some(now));
            if !self.owned {
                // The engine cannot see your transaction end. Noting the mark
                // as written (unconfirmed) keeps your other transactions from
                // each writing it again; should this one roll back, the
                // engine's own next write still persists it.
                self.engine.high_water_written_unconfirmed(now);
            }
        }
        Ok(())
    }

    /// Persists the engine's high-water mark (after the clock stepped back).
    pub(crate) fn persist_high_water(&self) -> Result<()> {
        let now = self.engine.now_ms();
        let store_ref = self.store();
        store_ref
            .persist_high_water(now)
            .map_err(self.fail(|| Context::new("persist clock")))?;
        self.persisted.set(Some(now));
        Ok(())
    }

    fn event(&self, store: &DynStore<'_>, key: &Key, event: EventRecord) -> rusqlite::Result<()> {
        store.record_event(key, &event, self.engine.inner.event_retention)
    }

    /// Logs a tenure's transition (`kind`: claimed, released, revoked,
    /// lapsed) at `at_ms`.
    fn tenure_event(
        &self,
        store: &DynStore<'_>,
        key: &Key,
        kind: EventKind,
        holder: String,
        epoch: u64,
        at_ms: i64,
    ) -> rusqlite::Result<()> {
        self.event(
            store,
            key,
            EventRecord {
                at_ms,
                kind,
                holder: Some(holder),
                epoch,
                entity: None,
                detail: None,
            },
        )
    }

    /// Logs the end of a tenure that ran out, if `rec` holds one at `now`.
    fn note_lapse(
        &self,
        store: &DynStore<'_>,
        key: &Key,
        rec: &Record,
        now: i64,
    ) -> rusqlite::Result<()> {
        match rec.lapsed(now) {
            Some(holder) => self.tenure_event(
                store,
                key,
                EventKind::Lapsed,
                holder.to_owned(),
                rec.epoch,
                rec.expiry_ms.max(rec.pinned_until_ms),
            ),
            None => Ok(()),
        }
    }

    /// As [`Engine::claim`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim`]. After an error, roll your transaction back: a
    /// failed statement may have left part of its work.
    pub fn claim(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure> {
        self.claim_as(key, holder, duration, false, None)
    }

    /// As [`InTxn::claim`], trying first to extend `known`, the tenure of
    /// `holder` as the engine last committed it, in one statement (as
    /// [`Engine::extend`] does). If the row shows anything else (another
    /// tenure, a lapse, an extension by someone else), the full claim.
    pub(crate) fn claim_known(
        &self,
        key: &Key,
        holder: &str,
        duration: Duration,
        known: Option<Known>,
    ) -> Result<Tenure> {
        self.claim_as(key, holder, duration, false, known)
    }

    /// The [`Tenure`] of `holder` that the row now shows as `row`.
    fn tenure(&self, key: &Key, holder: &str, row: Known, extended: bool) -> Tenure {
        Tenure {
            engine: self.engine.clone(),
            key: key.clone(),
            holder: holder.to_owned(),
            epoch: row.epoch,
            started_at: from_ms(row.started_ms),
            expires_at: from_ms(row.expiry_ms),
            extended,
        }
    }

    /// As [`Engine::claim_new`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim_new`]; after an error, roll your transaction back.
    pub fn claim_new(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure> {
        self.claim_as(key, holder, duration, true, None)
    }

    fn claim_as(
        &self,
        key: &Key,
        holder: &str,
        duration: Duration,
        new_only: bool,
        known: Option<Known>,
    ) -> Result<Tenure> {
        validate_name("holder", holder)?;
        let ms = duration_ms("duration", duration)?;
        let fail = self.fail(|| Context::new("claim").key(key).holder(holder));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let (now, fraction) = self.engine.now_reading();
        // The guarantee runs from the instant of the call, which may lie up to
        // a millisecond after `now`: round the expiry up.
        let ms = ms + i64::from(fraction);
        if let Some(known) = known.filter(|_| !new_only)
            && store
                .extend_known(key, holder, known, now, ms)
                .map_err(&fail)?
        {
            self.finish_write(store, now).map_err(&fail)?;
            let expiry_ms = known.expiry_ms.max(now.saturating_add(ms));
            return Ok(self.tenure(key, holder, Known { expiry_ms, ..known }, true));
        }
        let current = store.load(key).map_err(&fail)?;
        let decided = if new_only {
            Record::claim_new(current.as_ref(), holder, now, ms).map(|r| (r, Claimed::New))
        } else {
            Record::claim(current.as_ref(), holder, now, ms)
        };
        let (rec, claimed) = decided.map_err(|current_holder| Error::ClaimDenied {
            key: key.clone(),
            holder: holder.to_owned(),
            current_holder,
        })?;
        if claimed == Claimed::New {
            if let Some(old) = &current {
                self.note_lapse(store, key, old, now).map_err(&fail)?;
            }
            self.tenure_event(
                store,
                key,
                EventKind::Claimed,
                holder.to_owned(),
                rec.epoch,
                rec.started_ms,
            )
            .map_err(&fail)?;
        }
        match claimed {
            Claimed::Extended => store.save_extension(key, &rec).map_err(&fail)?,
            Claimed::New => store.save(key, &rec).map_err(&fail)?,
        }
        self.finish_write(store, now).map_err(&fail)?;
        let row = Known {
            epoch: rec.epoch,
            started_ms: rec.started_ms,
            expiry_ms: rec.expiry_ms,
        };
        Ok(self.tenure(key, holder, row, claimed == Claimed::Extended))
    }

    /// As [`Engine::extend`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::extend`].
    pub fn extend(&self, tenure: &Tenure, duration: Duration) -> Result<Tenure> {
        let until = self.extend_epoch(&tenure.key, &tenure.holder, tenure.epoch, duration)?;
        Ok(Tenure {
            expires_at: tenure.expires_at.max(from_ms(until)),
            extended: true,
            ..tenure.clone()
        })
    }

    /// Extends tenure `epoch` of `holder`; returns a lower bound of the new
    /// expiry (ms).
    pub(crate) fn extend_epoch(
        &self,
        key: &Key,
        holder: &str,
        epoch: u64,
        duration: Duration,
    ) -> Result<i64> {
        let ms = duration_ms("duration", duration)?;
        self.extend_epoch_at(key, holder, epoch, ms, self.engine.now_reading())
    }

    /// [`InTxn::extend_epoch`] for a duration already checked (`ms`) at the
    /// engine time `reading` (from `Engine::now_reading`): a batch of
    /// renewals reads the clock once.
    pub(crate) fn extend_epoch_at(
        &self,
        key: &Key,
        holder: &str,
        epoch: u64,
        ms: i64,
        (now, fraction): (i64, bool),
    ) -> Result<i64> {
        let fail = self.fail(|| Context::new("extend").key(key).holder(holder));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let ms = ms + i64::from(fraction);
        let extended = store
            .extend_tenure(key, holder, epoch, now, ms)
            .map_err(&fail)?;
        if !extended {
            // Not this tenure any more — or the rare case the one-statement
            // path leaves to the state machine (a sum near i64::MAX).
            let current = store.load(key).map_err(&fail)?;
            match current {
                Some(rec) if rec.is_held_by(holder, Some(epoch), now) => {
                    let (rec, _) = Record::claim(Some(&rec), holder, now, ms)
                        .expect("the holder holds it, so this is an extension");
                    store.save_extension(key, &rec).map_err(&fail)?;
                }
                other => {
                    return Err(Error::NotHeld {
                        key: key.clone(),
                        holder: holder.to_owned(),
                        current_holder: other
                            .and_then(|r| r.holder_at(r.time(now)).map(str::to_owned)),
                    });
                }
            }
        }
        self.finish_write(store, now).map_err(&fail)?;
        Ok(now.saturating_add(ms))
    }

    /// As [`Engine::release`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::release`].
    pub fn release(&self, key: &Key, holder: &str) -> Result<()> {
        validate_name("holder", holder)?;
        let fail = self.fail(|| Context::new("release").key(key).holder(holder));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let now = self.engine.now_ms();
        let not_held = |current_holder| Error::NotHeld {
            key: key.clone(),
            holder: holder.to_owned(),
            current_holder,
        };
        let current = store
            .load(key)
            .map_err(&fail)?
            .ok_or_else(|| not_held(None))?;
        let rec = current.release(holder, now).map_err(not_held)?;
        self.tenure_event(
            store,
            key,
            EventKind::Released,
            holder.to_owned(),
            rec.epoch,
            rec.updated_ms,
        )
        .map_err(&fail)?;
        store.save_same_epoch(key, &rec).map_err(&fail)?;
        self.finish_write(store, now).map_err(&fail)
    }

    /// As [`Engine::revoke`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::revoke`].
    pub fn revoke(&self, key: &Key) -> Result<Option<Lease>> {
        let fail = self.fail(|| Context::new("revoke").key(key));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let now = self.engine.now_ms();
        let Some(current) = store.load(key).map_err(&fail)? else {
            return Ok(None);
        };
        let (rec, ended) = current.revoke(now);
        let before = match ended {
            Some((holder, epoch)) => {
                let pins = live_pins(&store.pins(key).map_err(&fail)?, rec.updated_ms);
                self.tenure_event(
                    store,
                    key,
                    EventKind::Revoked,
                    holder,
                    epoch,
                    rec.updated_ms,
                )
                .map_err(&fail)?;
                Some(Lease::from_record(key.clone(), &current, pins, now))
            }
            None => {
                self.note_lapse(store, key, &current, now).map_err(&fail)?;
                None
            }
        };
        if rec != current {
            store.save_same_epoch(key, &rec).map_err(&fail)?;
            self.finish_write(store, now).map_err(&fail)?;
        }
        Ok(before)
    }

    /// As [`Engine::pin`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::pin`].
    pub fn pin(
        &self,
        key: &Key,
        entity: &str,
        reason: &str,
        expires_after: Option<Duration>,
    ) -> Result<()> {
        validate_name("entity", entity)?;
        validate_text("reason", reason, MAX_REASON_LEN)?;
        let expires_ms = expires_after
            .map(|d| duration_ms("pin duration", d))
            .transpose()?;
        let fail = self.fail(|| Context::new("pin").key(key).holder(entity));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let now = self.engine.now_ms();
        let current = store.load(key).map_err(&fail)?;
        let rec = current.clone().unwrap_or_else(|| Record::vacant(now));
        let t = rec.time(now);
        let pin = PinRecord {
            entity: entity.to_owned(),
            reason: reason.to_owned(),
            pinned_ms: t,
            expires_ms: expires_ms.map(|ms| t.saturating_add(ms)),
        };
        store.put_pin(key, &pin).map_err(&fail)?;
        let pins = self.prune_pins(store, key, t).map_err(&fail)?;
        self.note_lapse(store, key, &rec, now).map_err(&fail)?;
        let (rec, ended) = rec.repin(PinRecord::pinned_until(&pins, t), now);
        self.note_ended(store, key, ended, rec.epoch, t)
            .map_err(&fail)?;
        self.event(
            store,
            key,
            EventRecord {
                at_ms: t,
                kind: EventKind::Pinned,
                holder: rec.holder.clone(),
                epoch: rec.epoch,
                entity: Some(entity.to_owned()),
                detail: Some(pin_detail(reason, pin.expires_ms)),
            },
        )
        .map_err(&fail)?;
        store.save_same_epoch(key, &rec).map_err(&fail)?;
        self.finish_write(store, now).map_err(&fail)
    }

    /// As [`Engine::unpin`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::unpin`].
    pub fn unpin(&self, key: &Key, entity: &str) -> Result<bool> {
        validate_name("entity", entity)?;
        let fail = self.fail(|| Context::new("unpin").key(key).holder(entity));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let now = self.engine.now_ms();
        let Some(current) = store.load(key).map_err(&fail)? else {
            return Ok(false);
        };
        if !store.delete_pin(key, entity).map_err(&fail)? {
            return Ok(false);
        }
        let t = current.time(now);
        let pins = self.prune_pins(store, key, t).map_err(&fail)?;
        self.note_lapse(store, key, &current, now).map_err(&fail)?;
        let (rec, ended) = current.repin(PinRecord::pinned_until(&pins, t), now);
        self.event(
            store,
            key,
            EventRecord {
                at_ms: t,
                kind: EventKind::Unpinned,
                holder: rec.holder.clone(),
                epoch: rec.epoch,
                entity: Some(entity.to_owned()),
                detail: None,
            },
        )
        .map_err(&fail)?;
        self.note_ended(store, key, ended, rec.epoch, t)
            .map_err(&fail)?;
        store.save_same_epoch(key, &rec).map_err(&fail)?;
        self.finish_write(store, now).map_err(&fail)?;
        Ok(true)
    }

    /// Logs the lapse of a tenure that new pins ended at `t` (the last pin
    /// of a tenure past its expiry removed): at that moment, not at the old
    /// expiry.
    fn note_ended(
        &self,
        store: &DynStore<'_>,
        key: &Key,
        ended: Option<String>,
        epoch: u64,
        t: i64,
    ) -> rusqlite::Result<()> {
        let Some(holder) = ended else {
            return Ok(());
        };
        self.tenure_event(store, key, EventKind::Lapsed, holder, epoch, t)
    }

    /// Deletes pins that have expired by `t`; returns the live ones.
    fn prune_pins(
        &self,
        store: &DynStore<'_>,
        key: &Key,
        t: i64,
    ) -> rusqlite::Result<Vec<PinRecord>> {
        let (live, dead): (Vec<_>, Vec<_>) =
            store.pins(key)?.into_iter().partition(|p| p.is_live(t));
        for pin in dead {
            store.delete_pin(key, &pin.entity)?;
        }
        Ok(live)
    }

    /// As [`Engine::lease`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::lease`].
    pub fn lease(&self, key: &Key) -> Result<Option<Lease>> {
        let fail = self.fail(|| Context::new("read").key(key));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let now = self.engine.now_ms();
        let Some(rec) = store.load(key).map_err(&fail)? else {
            return Ok(None);
        };
        let pins = live_pins(&store.pins(key).map_err(&fail)?, rec.time(now));
        Ok(Some(Lease::from_record(key.clone(), &rec, pins, now)))
    }

    /// As [`Engine::leases`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::leases`].
    pub fn leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        let mut all = self.all_leases(namespace)?;
        all.retain(Lease::is_held);
        Ok(all)
    }

    /// As [`Engine::all_leases`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::all_leases`].
    pub fn all_leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        validate_name("namespace", namespace)?;
        let fail = self.fail(|| Context::new("list").namespace(namespace));
        let store_ref = self.store();
        let store: &DynStore<'_> = &*store_ref;
        let now = self.engine.now_ms();
        let rows = store.list(namespace).map_err(&fail)?;
        let mut pins = store
            .list_pins(namespace)
            .map_err(&fail)?
            .into_iter()
            .peekable();
        let mut leases = Vec::with_capacity(rows.len());
        // Both lists are ordered by name: merge them.
        for (name, rec) in rows {
            let t = rec.time(now);
            let mut mine = Vec::new();
            while let Some((_, pin)) = pins.next_if(|(n, _)| *n <= name) {
                if pin.is_live(t) {
                    mine.push(pin.to_pin());
                }
            }
            let key = Key::new(namespace, name)?;
            leases.push(Lease::from_record(key, &rec, mine, now));
        }
        Ok(leases)
    }

    /// As [`Engine::history`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::history`].
    pub fn history(&self, key: &Key, limit: usize) -> Result<Vec<Event>> {
        crate::sqlite::history::history(self.conn, key, limit)
            .map_err(self.fail(|| Context::new("history").key(key)))
    }
}

/// The store behind the seam, as the lease logic sees it.
pub(crate) type DynStore<'a> = dyn Store<Error = rusqlite::Error> + 'a;

/// The store an operation uses: the engine's, or one made for the call.
enum StoreRef<'c> {
    Held(&'c DynStore<'c>),
    Fresh(SqliteStore<'c>),
}

impl<'c> std::ops::Deref for StoreRef<'c> {
    type Target = DynStore<'c>;
    fn deref(&self) -> &DynStore<'c> {
        match self {
            StoreRef::Held(s) => *s,
            StoreRef::Fresh(s) => s,
        }
    }
}

impl fmt::Debug for InTxn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InTxn")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

fn pin_detail(reason: &str, expires_ms: Option<i64>) -> String {
    let until = expires_ms.map(|ms| {
        format!(
            "until {}",
            from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    });
    match (reason.is_empty(), until) {
        (_, None) => reason.to_owned(),
        (true, Some(until)) => until,
        (false, Some(until)) => format!("{reason} ({until})"),
    }
}

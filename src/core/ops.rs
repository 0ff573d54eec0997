//! The lease operations, each as load → decide → save → log, over a
//! [`Store`] inside whatever transaction it was made for (the engine's own,
//! or one the caller owns). The rules are [`Record`]'s; time comes from the
//! store, read after the row is locked.

use std::time::Duration;

use crate::core::clock::from_ms;
use crate::core::error::{Context, Error, Found, Result, StorageError};
use crate::core::event::{Event, EventKind, EventRecord};
use crate::core::key::{Key, MAX_REASON_LEN, duration_ms, validate_name, validate_text};
use crate::core::lease::{Claimed, PinRecord, Record};
use crate::core::snapshot::{Lease, live_pins};
use crate::core::store::{GuardSpec, Known, Now, Store};

/// A tenure as an operation left it: what the engine hands back as a
/// `Tenure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TenureRow {
    pub epoch: u64,
    pub started_ms: i64,
    pub expiry_ms: i64,
    /// Whether the claim extended a tenure the holder already held.
    pub extended: bool,
}

/// Maps a storage error to the crate's, building the context only on
/// failure (off the hot path).
fn fail(ctx: impl Fn() -> Context) -> impl Fn(StorageError) -> Error {
    move |e| Error::storage(ctx(), e)
}

/// Logs a tenure's transition at `at_ms`.
fn tenure_event(
    st: &mut dyn Store,
    key: &Key,
    kind: EventKind,
    holder: String,
    epoch: u64,
    at_ms: i64,
) -> Result<(), StorageError> {
    st.record_event(
        key,
        &EventRecord {
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
fn note_lapse(st: &mut dyn Store, key: &Key, rec: &Record, now: i64) -> Result<(), StorageError> {
    match rec.lapsed(now) {
        Some(holder) => tenure_event(
            st,
            key,
            EventKind::Lapsed,
            holder.to_owned(),
            rec.epoch,
            rec.expiry_ms.max(rec.pinned_until_ms),
        ),
        None => Ok(()),
    }
}

/// Claims `key` for `holder` (see `Engine::claim`). With `new_only`, only a
/// new tenure (see `Engine::claim_new`). With `known`, the tenure of
/// `holder` as this process last committed it, first tries to extend it in
/// one statement; any other row takes the full claim.
pub(crate) fn claim(
    st: &mut dyn Store,
    key: &Key,
    holder: &str,
    duration: Duration,
    new_only: bool,
    known: Option<Known>,
) -> Result<TenureRow> {
    validate_name("holder", holder)?;
    let ms = duration_ms("duration", duration)?;
    let fail = fail(|| Context::new("claim").key(key).holder(holder));
    if let Some(known) = known.filter(|_| !new_only) {
        let now = st.now().map_err(&fail)?;
        // The guarantee runs from the instant of the call, which may lie up
        // to a millisecond after `now`: round the expiry up.
        let ms = ms + i64::from(now.fraction);
        if st
            .extend_known(key, holder, known, now.ms, ms)
            .map_err(&fail)?
        {
            st.finish_write(now.ms).map_err(&fail)?;
            return Ok(TenureRow {
                epoch: known.epoch,
                started_ms: known.started_ms,
                expiry_ms: known.expiry_ms.max(now.ms.saturating_add(ms)),
                extended: true,
            });
        }
    }
    let current = st.lock_for_claim(key).map_err(&fail)?;
    let now = st.now().map_err(&fail)?;
    let ms = ms + i64::from(now.fraction);
    let decided = if new_only {
        Record::claim_new(current.as_ref(), holder, now.ms, ms).map(|r| (r, Claimed::New))
    } else {
        Record::claim(current.as_ref(), holder, now.ms, ms)
    };
    let (rec, claimed) = decided.map_err(|current_holder| Error::ClaimDenied {
        key: key.clone(),
        holder: holder.to_owned(),
        current_holder,
    })?;
    if claimed == Claimed::New {
        if let Some(old) = &current {
            note_lapse(st, key, old, now.ms).map_err(&fail)?;
        }
        tenure_event(
            st,
            key,
            EventKind::Claimed,
            holder.to_owned(),
            rec.epoch,
            rec.started_ms,
        )
        .map_err(&fail)?;
    }
    match claimed {
        Claimed::Extended => st.save_extension(key, &rec).map_err(&fail)?,
        Claimed::New => st.save(key, &rec).map_err(&fail)?,
    }
    st.finish_write(now.ms).map_err(&fail)?;
    Ok(TenureRow {
        epoch: rec.epoch,
        started_ms: rec.started_ms,
        expiry_ms: rec.expiry_ms,
        extended: claimed == Claimed::Extended,
    })
}

/// Extends tenure `epoch` of `holder` by `ms` (a duration already checked)
/// at engine time `now`: a batch of renewals reads the time once. Returns a
/// lower bound of the new expiry (ms).
pub(crate) fn extend_epoch(
    st: &mut dyn Store,
    key: &Key,
    holder: &str,
    epoch: u64,
    ms: i64,
    now: Now,
) -> Result<i64> {
    let fail = fail(|| Context::new("extend").key(key).holder(holder));
    let ms = ms + i64::from(now.fraction);
    let extended = st
        .extend_tenure(key, holder, epoch, now.ms, ms)
        .map_err(&fail)?;
    if !extended {
        // Not this tenure any more — or the rare case the one-statement
        // path leaves to the state machine (a row from a clock ahead, a sum
        // near i64::MAX).
        let current = st.lock(key).map_err(&fail)?;
        match current {
            Some(rec) if rec.is_held_by(holder, Some(epoch), now.ms) => {
                let (rec, _) = Record::claim(Some(&rec), holder, now.ms, ms)
                    .expect("the holder holds it, so this is an extension");
                st.save_extension(key, &rec).map_err(&fail)?;
            }
            other => {
                return Err(Error::NotHeld {
                    key: key.clone(),
                    holder: holder.to_owned(),
                    current_holder: other
                        .and_then(|r| r.holder_at(r.time(now.ms)).map(str::to_owned)),
                });
            }
        }
    }
    st.finish_write(now.ms).map_err(&fail)?;
    Ok(now.ms.saturating_add(ms))
}

/// Ends `holder`'s tenure of `key` now (see `Engine::release`).
pub(crate) fn release(st: &mut dyn Store, key: &Key, holder: &str) -> Result<()> {
    validate_name("holder", holder)?;
    let fail = fail(|| Context::new("release").key(key).holder(holder));
    let not_held = |current_holder| Error::NotHeld {
        key: key.clone(),
        holder: holder.to_owned(),
        current_holder,
    };
    let current = st.lock(key).map_err(&fail)?;
    let now = st.now().map_err(&fail)?.ms;
    let current = current.ok_or_else(|| not_held(None))?;
    let rec = current.release(holder, now).map_err(not_held)?;
    tenure_event(
        st,
        key,
        EventKind::Released,
        holder.to_owned(),
        rec.epoch,
        rec.updated_ms,
    )
    .map_err(&fail)?;
    st.save_same_epoch(key, &rec).map_err(&fail)?;
    st.finish_write(now).map_err(&fail)
}

/// Ends whoever's tenure of `key` it is (see `Engine::revoke`).
pub(crate) fn revoke(st: &mut dyn Store, key: &Key) -> Result<Option<Lease>> {
    let fail = fail(|| Context::new("revoke").key(key));
    let current = st.lock(key).map_err(&fail)?;
    let now = st.now().map_err(&fail)?.ms;
    let Some(current) = current else {
        return Ok(None);
    };
    let (rec, ended) = current.revoke(now);
    let before = match ended {
        Some((holder, epoch)) => {
            let pins = live_pins(&st.pins(key).map_err(&fail)?, rec.updated_ms);
            tenure_event(st, key, EventKind::Revoked, holder, epoch, rec.updated_ms)
                .map_err(&fail)?;
            Some(Lease::from_record(key.clone(), &current, pins, now))
        }
        None => {
            note_lapse(st, key, &current, now).map_err(&fail)?;
            None
        }
    };
    if rec != current {
        st.save_same_epoch(key, &rec).map_err(&fail)?;
        st.finish_write(now).map_err(&fail)?;
    }
    Ok(before)
}

/// Pins `key` for `entity` (see `Engine::pin`).
pub(crate) fn pin(
    st: &mut dyn Store,
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
    let fail = fail(|| Context::new("pin").key(key).holder(entity));
    let current = st.lock_for_claim(key).map_err(&fail)?;
    let now = st.now().map_err(&fail)?.ms;
    let rec = current.unwrap_or_else(|| Record::vacant(now));
    let t = rec.time(now);
    let pin = PinRecord {
        entity: entity.to_owned(),
        reason: reason.to_owned(),
        pinned_ms: t,
        expires_ms: expires_ms.map(|ms| t.saturating_add(ms)),
    };
    st.put_pin(key, &pin).map_err(&fail)?;
    let pins = prune_pins(st, key, t).map_err(&fail)?;
    note_lapse(st, key, &rec, now).map_err(&fail)?;
    let (rec, ended) = rec.repin(PinRecord::pinned_until(&pins, t), now);
    note_ended(st, key, ended, rec.epoch, t).map_err(&fail)?;
    st.record_event(
        key,
        &EventRecord {
            at_ms: t,
            kind: EventKind::Pinned,
            holder: rec.holder.clone(),
            epoch: rec.epoch,
            entity: Some(entity.to_owned()),
            detail: Some(pin_detail(reason, pin.expires_ms)),
        },
    )
    .map_err(&fail)?;
    st.save_same_epoch(key, &rec).map_err(&fail)?;
    st.finish_write(now).map_err(&fail)
}

/// Removes `entity`'s pin from `key` (see `Engine::unpin`).
pub(crate) fn unpin(st: &mut dyn Store, key: &Key, entity: &str) -> Result<bool> {
    validate_name("entity", entity)?;
    let fail = fail(|| Context::new("unpin").key(key).holder(entity));
    let current = st.lock(key).map_err(&fail)?;
    let now = st.now().map_err(&fail)?.ms;
    let Some(current) = current else {
        return Ok(false);
    };
    if !st.delete_pin(key, entity).map_err(&fail)? {
        return Ok(false);
    }
    let t = current.time(now);
    let pins = prune_pins(st, key, t).map_err(&fail)?;
    note_lapse(st, key, &current, now).map_err(&fail)?;
    let (rec, ended) = current.repin(PinRecord::pinned_until(&pins, t), now);
    st.record_event(
        key,
        &EventRecord {
            at_ms: t,
            kind: EventKind::Unpinned,
            holder: rec.holder.clone(),
            epoch: rec.epoch,
            entity: Some(entity.to_owned()),
            detail: None,
        },
    )
    .map_err(&fail)?;
    note_ended(st, key, ended, rec.epoch, t).map_err(&fail)?;
    st.save_same_epoch(key, &rec).map_err(&fail)?;
    st.finish_write(now).map_err(&fail)?;
    Ok(true)
}

/// Logs the lapse of a tenure that new pins ended at `t` (the last pin of a
/// tenure past its expiry removed): at that moment, not at the old expiry.
fn note_ended(
    st: &mut dyn Store,
    key: &Key,
    ended: Option<String>,
    epoch: u64,
    t: i64,
) -> Result<(), StorageError> {
    let Some(holder) = ended else {
        return Ok(());
    };
    tenure_event(st, key, EventKind::Lapsed, holder, epoch, t)
}

/// Deletes pins that have expired by `t`; returns the live ones.
fn prune_pins(st: &mut dyn Store, key: &Key, t: i64) -> Result<Vec<PinRecord>, StorageError> {
    let (live, dead): (Vec<_>, Vec<_>) = st.pins(key)?.into_iter().partition(|p| p.is_live(t));
    for pin in dead {
        st.delete_pin(key, &pin.entity)?;
    }
    Ok(live)
}

/// One lease (see `Engine::lease`).
pub(crate) fn lease(st: &mut dyn Store, key: &Key) -> Result<Option<Lease>> {
    let fail = fail(|| Context::new("read").key(key));
    let rec = st.load(key).map_err(&fail)?;
    let now = st.now().map_err(&fail)?.ms;
    let Some(rec) = rec else {
        return Ok(None);
    };
    let pins = live_pins(&st.pins(key).map_err(&fail)?, rec.time(now));
    Ok(Some(Lease::from_record(key.clone(), &rec, pins, now)))
}

/// Every key of `namespace`, held or vacant (see `Engine::all_leases`).
pub(crate) fn all_leases(st: &mut dyn Store, namespace: &str) -> Result<Vec<Lease>> {
    validate_name("namespace", namespace)?;
    let fail = fail(|| Context::new("list").namespace(namespace));
    let rows = st.list(namespace).map_err(&fail)?;
    let mut pins = st
        .list_pins(namespace)
        .map_err(&fail)?
        .into_iter()
        .peekable();
    let now = st.now().map_err(&fail)?.ms;
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

/// The held leases of `namespace` (see `Engine::leases`).
pub(crate) fn leases(st: &mut dyn Store, namespace: &str) -> Result<Vec<Lease>> {
    let mut all = all_leases(st, namespace)?;
    all.retain(Lease::is_held);
    Ok(all)
}

/// The newest `limit` events of `key` (see `Engine::history`).
pub(crate) fn history(st: &mut dyn Store, key: &Key, limit: usize) -> Result<Vec<Event>> {
    st.history(key, limit)
        .map_err(fail(|| Context::new("history").key(key)))
}

/// Evaluates a guard inside the transaction `st` runs in: the one rule
/// every guard style (a `Txn`, `check_in`, a standalone check) applies.
/// `op` names the op of a `Txn` it belongs to.
pub(crate) fn check_guard(
    st: &mut dyn Store,
    guard: &GuardSpec,
    op: Option<(usize, Option<&str>)>,
) -> Result<()> {
    let fail = fail(|| Context::new("check").key(&guard.key).holder(&guard.holder));
    // The guard itself first (what a guard in your SQL evaluates); the
    // whole row only to say why it failed.
    let (held, now) = st.check_guard(guard).map_err(&fail)?;
    if held {
        return Ok(());
    }
    let rec = st.load(&guard.key).map_err(&fail)?;
    Err(Error::GuardFailed {
        op: op.map(|(i, _)| i),
        label: op.and_then(|(_, l)| l.map(str::to_owned)),
        key: guard.key.clone(),
        holder: guard.holder.clone(),
        expected_epoch: guard.epoch,
        found: rec.map_or(Found::Absent, |r| r.found(now)),
    })
}

/// The detail of a pin event: its reason and expiry.
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

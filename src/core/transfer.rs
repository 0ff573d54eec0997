//! Moving lease state between databases: export and import.
//!
//! What moves is who holds what, in which epoch, and the pins. Times do not:
//! an imported lease gets a fresh guarantee window from the moment of import
//! (lease times from another database mean nothing here), and a pin keeps
//! the time it had left.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::clock::from_ms;
use crate::core::error::{Context, Error, Result, StorageError};
use crate::core::event::{EventKind, EventRecord};
use crate::core::key::{Key, MAX_REASON_LEN, duration_ms, validate_name, validate_text};
use crate::core::lease::{PinRecord, Record};
use crate::core::store::Store;

/// The largest epoch [`Engine::import`](crate::Engine::import) accepts: SQLite stores epochs as
/// signed 64-bit integers, and a key must keep room for new tenures.
pub const MAX_IMPORTED_EPOCH: u64 = 1 << 62;

/// Every lease and pin of a database, from [`Engine::export`](crate::Engine::export).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// When the snapshot was taken (engine time of the source).
    pub taken_at: DateTime<Utc>,
    /// Every key ever claimed or pinned, held or vacant.
    pub leases: Vec<ExportedLease>,
    /// Every live pin.
    pub pins: Vec<ExportedPin>,
}

/// One key in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedLease {
    /// The key.
    pub key: Key,
    /// The holder at export time, if held.
    pub holder: Option<String>,
    /// The key's latest epoch (never lowered by an import).
    pub epoch: u64,
    /// How long the lease had left at export time, if held (informational:
    /// an import grants a fresh window instead).
    pub remaining: Option<Duration>,
}

/// One pin in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedPin {
    /// The pinned key.
    pub key: Key,
    /// Who pinned it.
    pub entity: String,
    /// Why.
    pub reason: String,
    /// How long the pin had left at export time; `None` for no expiry.
    pub remaining: Option<Duration>,
}

/// What an import did, from [`Engine::import`](crate::Engine::import).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportSummary {
    /// Held leases imported as tenures.
    pub tenures: usize,
    /// Vacant keys whose epoch counters were imported.
    pub vacant: usize,
    /// Pins imported.
    pub pins: usize,
}

/// Every lease and live pin, read in the transaction `st` runs in.
pub(crate) fn export(st: &mut dyn Store) -> Result<Snapshot> {
    let fail = |e: StorageError| Error::storage(Context::new("export"), e);
    let now = st.now().map_err(fail)?.ms;
    let mut leases = Vec::new();
    let mut pins = Vec::new();
    for namespace in st.namespaces().map_err(fail)? {
        for (name, rec) in st.list(&namespace).map_err(fail)? {
            let key = Key::new(namespace.clone(), name)?;
            let t = rec.time(now);
            let holder = rec.holder_at(t).map(str::to_owned);
            let remaining = holder
                .as_ref()
                .map(|_| Duration::from_millis((rec.expiry_ms - t).max(0) as u64));
            leases.push(ExportedLease {
                key,
                holder,
                epoch: rec.epoch,
                remaining,
            });
        }
        for (name, pin) in st.list_pins(&namespace).map_err(fail)? {
            if !pin.is_live(now) {
                continue;
            }
            pins.push(ExportedPin {
                key: Key::new(namespace.clone(), name)?,
                entity: pin.entity,
                reason: pin.reason,
                remaining: pin
                    .expires_ms
                    .map(|e| Duration::from_millis((e - now).max(0) as u64)),
            });
        }
    }
    Ok(Snapshot {
        taken_at: from_ms(now),
        leases,
        pins,
    })
}

/// Loads `snapshot` in the transaction `st` runs in, all or nothing (see
/// `Engine::import`); `window_ms` is checked already.
pub(crate) fn import(
    st: &mut dyn Store,
    snapshot: &Snapshot,
    window_ms: i64,
) -> Result<ImportSummary> {
    let fail = |e: StorageError| Error::storage(Context::new("import"), e);
    let now = st.now().map_err(fail)?.ms;
    let mut summary = ImportSummary::default();
    for (index, lease) in snapshot.leases.iter().enumerate() {
        let refuse = |field, reason: String| Error::ImportRefused {
            index,
            field,
            reason,
        };
        if let Some(h) = &lease.holder {
            validate_name("holder", h).map_err(|e| refuse("holder", e.to_string()))?;
        }
        if lease.epoch > MAX_IMPORTED_EPOCH {
            // A key at i64::MAX could never begin another tenure.
            return Err(refuse(
                "epoch",
                format!(
                    "{} is above {MAX_IMPORTED_EPOCH}, the largest epoch an import accepts (room must remain for new tenures)",
                    lease.epoch
                ),
            ));
        }
        let current = st.lock_for_claim(&lease.key).map_err(&fail)?;
        let target_epoch = current.as_ref().map_or(0, |r| r.epoch);
        if lease.epoch < target_epoch {
            return Err(refuse(
                "epoch",
                format!(
                    "{} is lower than this database's epoch {target_epoch} for {}",
                    lease.epoch, lease.key
                ),
            ));
        }
        let mut rec = current.clone().unwrap_or_else(|| Record::vacant(now));
        let t = rec.time(now);
        match &lease.holder {
            Some(holder) => {
                // A re-import of the tenure held here; not of
                // one that lapsed (its tokens must stay dead).
                let same_tenure =
                    lease.epoch == target_epoch && rec.holder_at(t) == Some(holder.as_str());
                if lease.epoch == target_epoch && target_epoch > 0 && !same_tenure {
                    let whose = match rec.holder_at(t) {
                        Some(other) => format!("held here by {other}"),
                        None => {
                            "whose tenure ended (a re-import would revive its tokens)".to_owned()
                        }
                    };
                    return Err(refuse(
                        "epoch",
                        format!(
                            "{} is already this database's epoch for {}, {whose}",
                            lease.epoch, lease.key
                        ),
                    ));
                }
                if lease.epoch == 0 {
                    return Err(refuse(
                        "epoch",
                        "a held lease has an epoch of at least 1".into(),
                    ));
                }
                if let Some(other) = rec.holder_at(t).filter(|h| *h != holder) {
                    return Err(refuse(
                        "holder",
                        format!("{} is held here by {other}", lease.key),
                    ));
                }
                if !same_tenure {
                    rec.started_ms = t;
                    st.record_event(
                        &lease.key,
                        &EventRecord {
                            at_ms: t,
                            kind: EventKind::Claimed,
                            holder: Some(holder.clone()),
                            epoch: lease.epoch,
                            entity: None,
                            detail: Some("imported".into()),
                        },
                    )
                    .map_err(&fail)?;
                }
                rec.holder = Some(holder.clone());
                rec.epoch = lease.epoch;
                rec.expiry_ms = rec.expiry_ms.max(t.saturating_add(window_ms));
                summary.tenures += 1;
            }
            None => {
                if rec.holder_at(t).is_some() && lease.epoch > target_epoch {
                    return Err(refuse(
                        "holder",
                        format!("{} is vacant in the snapshot but held here", lease.key),
                    ));
                }
                rec.epoch = lease.epoch;
                summary.vacant += 1;
            }
        }
        rec.updated_ms = t;
        st.save(&lease.key, &rec).map_err(&fail)?;
    }
    let offset = snapshot.leases.len();
    for (i, pin) in snapshot.pins.iter().enumerate() {
        let refuse = |field, e: Error| Error::ImportRefused {
            index: offset + i,
            field,
            reason: e.to_string(),
        };
        validate_name("entity", &pin.entity).map_err(|e| refuse("entity", e))?;
        validate_text("reason", &pin.reason, MAX_REASON_LEN).map_err(|e| refuse("reason", e))?;
        let left = pin
            .remaining
            .map(|d| duration_ms("pin duration", d))
            .transpose()
            .map_err(|e| refuse("expires_in_ms", e))?;
        let rec = st
            .load(&pin.key)
            .map_err(&fail)?
            .unwrap_or_else(|| Record::vacant(now));
        let t = rec.time(now);
        st.put_pin(
            &pin.key,
            &PinRecord {
                entity: pin.entity.clone(),
                reason: pin.reason.clone(),
                pinned_ms: t,
                expires_ms: left.map(|ms| t.saturating_add(ms)),
            },
        )
        .map_err(&fail)?;
        let pins = st.pins(&pin.key).map_err(&fail)?;
        let (rec, _) = rec.repin(PinRecord::pinned_until(&pins, t), now);
        st.save(&pin.key, &rec).map_err(&fail)?;
        summary.pins += 1;
    }
    Ok(summary)
}

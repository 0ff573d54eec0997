//! Moving lease state between databases: export and import.
//!
//! What moves is who holds what, in which epoch, and the pins. Times do not:
//! an imported lease gets a fresh guarantee window from the moment of import
//! (lease times from another database mean nothing here), and a pin keeps
//! the time it had left.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::clock::from_ms;
use crate::core::error::{Context, Error, Result};
use crate::core::event::{EventKind, EventRecord};
use crate::core::key::{Key, MAX_REASON_LEN, duration_ms, validate_name, validate_text};
use crate::core::lease::{PinRecord, Record};
use crate::engine::Engine;
use crate::store::{SqliteStore, Store};

/// The largest epoch [`Engine::import`] accepts: SQLite stores epochs as
/// signed 64-bit integers, and a key must keep room for new tenures.
pub const MAX_IMPORTED_EPOCH: u64 = 1 << 62;

/// Every lease and pin of a database, from [`Engine::export`].
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

/// What an import did, from [`Engine::import`].
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

impl Engine {
    /// Reads every lease and live pin, in one read transaction.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::lease`].
    pub fn export(&self) -> Result<Snapshot> {
        self.read(
            || Context::new("export"),
            |tx| {
                let now = self.now_ms();
                let fail =
                    |e| crate::sqlite::error::fail(Context::new("export"), e, self.busy_timeout());
                let conn = tx.connection();
                let mut leases = Vec::new();
                let mut pins = Vec::new();
                let store = SqliteStore::new(conn);
                for namespace in namespaces(conn).map_err(fail)? {
                    for (name, rec) in store.list(&namespace).map_err(fail)? {
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
                    for (name, pin) in store.list_pins(&namespace).map_err(fail)? {
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
            },
        )
    }

    /// Loads a snapshot from another database, all or nothing, in one
    /// `BEGIN IMMEDIATE` transaction.
    ///
    /// - A held lease becomes a tenure of the same holder and epoch, held
    ///   for `window` from now.
    /// - A vacant key raises the key's epoch counter to the snapshot's.
    /// - A pin is placed with the time it had left.
    ///
    /// An epoch on this database never goes backwards: a lease whose epoch
    /// is lower than this database's epoch for the key is refused, and so is
    /// a held lease whose epoch equals it unless this database's tenure of
    /// that epoch has the same holder (a re-import).
    ///
    /// # Errors
    ///
    /// [`Error::ImportRefused`] naming the entry (its index in
    /// `leases`, then `pins`) and field (an epoch lower than this
    /// database's, or above [`MAX_IMPORTED_EPOCH`]; a holder or entity that
    /// is not a valid name; …), [`Error::InvalidArgument`] for a bad
    /// window, or storage errors; in every case nothing was written.
    pub fn import(&self, snapshot: &Snapshot, window: Duration) -> Result<ImportSummary> {
        let window_ms = duration_ms("window", window)?;
        self.write(
            || Context::new("import"),
            |tx| {
                let fail = |e| crate::sqlite::error::fail(Context::new("import"), e, self.busy_timeout());
                let store = SqliteStore::new(tx.connection());
                let now = self.now_ms();
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
                    let current = store.load(&lease.key).map_err(fail)?;
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
                            let same_tenure = lease.epoch == target_epoch
                                && rec.holder_at(t) == Some(holder.as_str());
                            if lease.epoch == target_epoch && target_epoch > 0 && !same_tenure {
                                let whose = match rec.holder_at(t) {
                                    Some(other) => format!("held here by {other}"),
                                    None => "whose tenure ended (a re-import would revive its tokens)"
                                        .to_owned(),
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
                                return Err(refuse("epoch", "a held lease has an epoch of at least 1".into()));
                            }
                            if let Some(other) = rec.holder_at(t).filter(|h| *h != holder) {
                                return Err(refuse(
                                    "holder",
                                    format!("{} is held here by {other}", lease.key),
                                ));
                            }
                            if !same_tenure {
                                rec.started_ms = t;
                                store
                                    .record_event(
                                        &lease.key,
                                        &EventRecord {
                                            at_ms: t,
                                            kind: EventKind::Claimed,
                                            holder: Some(holder.clone()),
                                            epoch: lease.epoch,
                                            entity: None,
                                            detail: Some("imported".into()),
                                        },
                                        self.inner.event_retention,
                                    )
                                    .map_err(fail)?;
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
                    store.save(&lease.key, &rec).map_err(fail)?;
                }
                let offset = snapshot.leases.len();
                for (i, pin) in snapshot.pins.iter().enumerate() {
                    let refuse = |field, e: Error| Error::ImportRefused {
                        index: offset + i,
                        field,
                        reason: e.to_string(),
                    };
                    validate_name("entity", &pin.entity).map_err(|e| refuse("entity", e))?;
                    validate_text("reason", &pin.reason, MAX_REASON_LEN)
                        .map_err(|e| refuse("reason", e))?;
                    let left = pin
                        .remaining
                        .map(|d| duration_ms("pin duration", d))
                        .transpose()
                        .map_err(|e| refuse("expires_in_ms", e))?;
                    let rec = store
                        .load(&pin.key)
                        .map_err(fail)?
                        .unwrap_or_else(|| Record::vacant(now));
                    let t = rec.time(now);
                    store
                        .put_pin(
                            &pin.key,
                            &PinRecord {
                                entity: pin.entity.clone(),
                                reason: pin.reason.clone(),
                                pinned_ms: t,
                                expires_ms: left.map(|ms| t.saturating_add(ms)),
                            },
                        )
                        .map_err(fail)?;
                    let pins = store.pins(&pin.key).map_err(fail)?;
                    let (rec, _) = rec.repin(PinRecord::pinned_until(&pins, t), now);
                    store.save(&pin.key, &rec).map_err(fail)?;
                    summary.pins += 1;
                }
                Ok(summary)
            },
        )
    }

    /// Every namespace with at least one key, sorted.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::lease`].
    pub fn namespaces(&self) -> Result<Vec<String>> {
        self.read(
            || Context::new("list namespaces"),
            |tx| {
                namespaces(tx.connection()).map_err(|e| {
                    crate::sqlite::error::fail(
                        Context::new("list namespaces"),
                        e,
                        self.busy_timeout(),
                    )
                })
            },
        )
    }
}

fn namespaces(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT DISTINCT namespace FROM main.leasehold_leases ORDER BY namespace")?
        .query_map([], |r| r.get(0))?
        .collect()
}

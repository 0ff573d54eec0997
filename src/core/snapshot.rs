//! The public snapshots of a lease and its pins, as read at one instant.

use chrono::{DateTime, Utc};

use crate::core::clock::from_ms;
use crate::core::key::Key;
use crate::core::lease::{PinRecord, Record};

/// A snapshot of one lease, as read at [`Lease::as_of`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    key: Key,
    holder: Option<String>,
    epoch: u64,
    started_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    pins: Vec<Pin>,
    as_of: DateTime<Utc>,
}

impl Lease {
    pub(crate) fn from_record(key: Key, rec: &Record, pins: Vec<Pin>, now: i64) -> Lease {
        let t = rec.time(now);
        let holder = rec.holder_at(t).map(str::to_owned);
        let held = holder.is_some();
        Lease {
            key,
            holder,
            epoch: rec.epoch,
            started_at: held.then(|| from_ms(rec.started_ms)),
            expires_at: held.then(|| from_ms(rec.expiry_ms)),
            pins,
            as_of: from_ms(t),
        }
    }

    /// The lease's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Who holds the lease, or `None` if it is vacant (never claimed,
    /// released, revoked, or expired and unpinned).
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// Whether someone holds the lease.
    pub fn is_held(&self) -> bool {
        self.holder.is_some()
    }

    /// The epoch of the current tenure, or of the latest one if vacant (0 if
    /// the key was never held).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the current tenure began.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.started_at
    }

    /// When the current tenure expires unless renewed. A pinned lease is
    /// still held past this instant.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// The live pins on this key, ordered by entity.
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    /// When the lease stops being held unless renewed: the later of the
    /// expiry and the pins' expiries. `None` if vacant or pinned without an
    /// expiry.
    pub fn held_until(&self) -> Option<DateTime<Utc>> {
        let expiry = self.expires_at?;
        let mut until = expiry;
        for pin in &self.pins {
            until = until.max(pin.expires_at?);
        }
        Some(until)
    }

    /// Whether any live pin holds the lease against expiry.
    pub fn is_pinned(&self) -> bool {
        !self.pins.is_empty()
    }

    /// The instant this snapshot describes.
    pub fn as_of(&self) -> DateTime<Utc> {
        self.as_of
    }
}

/// An entity's promise that a lease must not expire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    entity: String,
    reason: String,
    pinned_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

impl Pin {
    /// Who pinned the lease; only this entity's unpin removes the pin.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Why, as given when pinning (may be empty).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When the pin was placed (or last replaced).
    pub fn pinned_at(&self) -> DateTime<Utc> {
        self.pinned_at
    }

    /// When the pin lapses by itself, if ever.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
}

impl PinRecord {
    /// The pin as the public snapshot shows it.
    pub(crate) fn to_pin(&self) -> Pin {
        Pin {
            entity: self.entity.clone(),
            reason: self.reason.clone(),
            pinned_at: from_ms(self.pinned_ms),
            expires_at: self.expires_ms.map(from_ms),
        }
    }
}

/// The live pins among `pins` at `t`, as snapshots.
pub(crate) fn live_pins(pins: &[PinRecord], t: i64) -> Vec<Pin> {
    pins.iter()
        .filter(|p| p.is_live(t))
        .map(PinRecord::to_pin)
        .collect()
}

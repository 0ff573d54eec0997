//! The lease state machine: pure, no I/O, and it imports nothing but errors.
//!
//! Every rule of the lease semantics (the crate docs' "What a lease is") lives in [`Record`]'s methods; the
//! storage layer only loads and saves records, and the engine only supplies
//! the time. Times are integer milliseconds since the Unix epoch.

use crate::core::error::Found;

/// `pinned_until_ms` of a pin that never expires.
pub(crate) const FOREVER_MS: i64 = i64::MAX;

/// One lease row as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Holder of the latest tenure. `None` once released or revoked; a tenure
    /// that merely ran out keeps its holder until the next write settles it.
    pub holder: Option<String>,
    /// Epoch of the latest tenure; 0 if the key was never held.
    pub epoch: u64,
    pub started_ms: i64,
    pub expiry_ms: i64,
    /// The latest expiry among the key's live pins; [`FOREVER_MS`] for a pin
    /// without expiry, 0 when unpinned.
    pub pinned_until_ms: i64,
    /// Engine time of the last write to this row. Decisions about the row use
    /// `max(now, updated_ms)`, so a clock that steps back never sees the row
    /// younger than it was last written.
    pub updated_ms: i64,
}

/// What a successful claim did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// A new tenure began (epoch bumped).
    New,
    /// The holder still held the lease; its expiry moved later or stayed.
    Extended,
}

impl Record {
    /// A row for a key that exists only because it was pinned.
    pub fn vacant(now: i64) -> Record {
        Record {
            holder: None,
            epoch: 0,
            started_ms: now,
            expiry_ms: now,
            pinned_until_ms: 0,
            updated_ms: now,
        }
    }

    /// The instant this row is judged at: never earlier than its last write.
    pub fn time(&self, now: i64) -> i64 {
        now.max(self.updated_ms)
    }

    /// Who holds the key at `now` (already passed through [`Record::time`]).
    pub fn holder_at(&self, t: i64) -> Option<&str> {
        let alive = self.expiry_ms.max(self.pinned_until_ms) > t;
        self.holder.as_deref().filter(|_| alive)
    }

    /// Whether `holder` holds the key at `now`, in tenure `epoch` if given.
    /// This is the predicate every guard evaluates (see `store::GUARD_SQL`).
    pub fn is_held_by(&self, holder: &str, epoch: Option<u64>, now: i64) -> bool {
        self.holder_at(self.time(now)) == Some(holder) && epoch.is_none_or(|e| e == self.epoch)
    }

    /// Describes the row for a failed guard.
    pub fn found(&self, now: i64) -> Found {
        let t = self.time(now);
        match (&self.holder, self.holder_at(t)) {
            (Some(h), Some(_)) => Found::Held {
                holder: h.clone(),
                epoch: self.epoch,
            },
            (Some(h), None) => Found::Lapsed {
                holder: h.clone(),
                epoch: self.epoch,
            },
            (None, _) => Found::Vacant { epoch: self.epoch },
        }
    }

    /// The holder of a tenure that has run out at `now` but is still on
    /// record (no write has settled it yet).
    pub fn lapsed(&self, now: i64) -> Option<&str> {
        let t = self.time(now);
        self.holder
            .as_deref()
            .filter(|_| self.holder_at(t).is_none())
    }

    /// Ends a tenure that ran out, so that every later decision sees the key
    /// vacant.
    fn settle(&mut self, t: i64) {
        if self.holder_at(t).is_none() {
            self.holder = None;
        }
    }

    /// Claims the key (semantics 1–3). On success returns the new row and
    /// whether a new tenure began; on denial returns the current holder.
    pub fn claim(
        current: Option<&Record>,
        holder: &str,
        now: i64,
        duration_ms: i64,
    ) -> Result<(Record, Claimed), String> {
        let mut rec = current.cloned().unwrap_or_else(|| Record::vacant(now));
        let t = rec.time(now);
        rec.settle(t);
        let until = t.saturating_add(duration_ms);
        let claimed = match rec.holder.as_deref() {
            Some(h) if h == holder => {
                rec.expiry_ms = rec.expiry_ms.max(until);
                Claimed::Extended
            }
            Some(other) => return Err(other.to_owned()),
            None => {
                rec.holder = Some(holder.to_owned());
                rec.epoch += 1;
                rec.started_ms = t;
                rec.expiry_ms = until;
                Claimed::New
            }
        };
        rec.updated_ms = t;
        Ok((rec, claimed))
    }

    /// As [`Record::claim`], but only a new tenure: a key held by anyone,
    /// the claimant included, is denied (naming the holder).
    pub fn claim_new(
        current: Option<&Record>,
        holder: &str,
        now: i64,
        duration_ms: i64,
    ) -> Result<Record, String> {
        if let Some(h) = current.and_then(|r| r.holder_at(r.time(now))) {
            return Err(h.to_owned());
        }
        Record::claim(current, holder, now, duration_ms).map(|(rec, _)| rec)
    }

    /// Ends `holder`'s tenure now (semantics 4). On failure returns who holds
    /// the key instead.
    pub fn release(&self, holder: &str, now: i64) -> Result<Record, Option<String>> {
        let t = self.time(now);
        match self.holder_at(t) {
            Some(h) if h == holder => Ok(self.ended(t)),
            other => Err(other.map(str::to_owned)),
        }
    }

    /// Ends whoever's tenure it is (semantics 4). Returns the new row and the
    /// tenure ended, if any was live.
    pub fn revoke(&self, now: i64) -> (Record, Option<(String, u64)>) {
        let t = self.time(now);
        match self.holder_at(t) {
            Some(h) => {
                let ended = (h.to_owned(), self.epoch);
                (self.ended(t), Some(ended))
            }
            None => {
                let mut rec = self.clone();
                rec.settle(t);
                rec.updated_ms = t;
                (rec, None)
            }
        }
    }

    fn ended(&self, t: i64) -> Record {
        Record {
            holder: None,
            expiry_ms: t,
            updated_ms: t,
            ..self.clone()
        }
    }

    /// Applies a new set of live pins (semantics 5): a tenure that had run
    /// out is settled first, so that pinning never revives it. Returns the
    /// new row and the holder whose tenure the new pins end now (the last
    /// pin of a tenure past its expiry removed), if any.
    pub fn repin(&self, pinned_until_ms: i64, now: i64) -> (Record, Option<String>) {
        let mut rec = self.clone();
        let t = rec.time(now);
        rec.settle(t);
        rec.pinned_until_ms = pinned_until_ms;
        rec.updated_ms = t;
        let ended = rec.holder.clone().filter(|_| rec.holder_at(t).is_none());
        rec.settle(t);
        (rec, ended)
    }
}

/// A pin as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRecord {
    pub entity: String,
    pub reason: String,
    pub pinned_ms: i64,
    pub expires_ms: Option<i64>,
}

impl PinRecord {
    pub fn is_live(&self, t: i64) -> bool {
        self.expires_ms.is_none_or(|e| e > t)
    }

    /// The `pinned_until_ms` that a set of pins gives at time `t`.
    pub fn pinned_until(pins: &[PinRecord], t: i64) -> i64 {
        pins.iter()
            .filter(|p| p.is_live(t))
            .map(|p| p.expires_ms.unwrap_or(FOREVER_MS))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(rec: Option<&Record>, holder: &str, now: i64, d: i64) -> (Record, Claimed) {
        Record::claim(rec, holder, now, d).expect("claim")
    }

    #[test]
    fn first_claim_starts_epoch_one() {
        let (rec, how) = claim(None, "a", 1000, 500);
        assert_eq!(how, Claimed::New);
        assert_eq!((rec.epoch, rec.expiry_ms, rec.started_ms), (1, 1500, 1000));
        assert_eq!(rec.holder_at(1499), Some("a"));
        assert_eq!(rec.holder_at(1500), None);
    }

    #[test]
    fn extension_keeps_epoch_and_never_shortens() {
        let (rec, _) = claim(None, "a", 0, 1000);
        let (rec, how) = claim(Some(&rec), "a", 100, 100);
        assert_eq!(how, Claimed::Extended);
        assert_eq!((rec.epoch, rec.expiry_ms), (1, 1000));
        let (rec, _) = claim(Some(&rec), "a", 900, 1000);
        assert_eq!((rec.epoch, rec.expiry_ms, rec.started_ms), (1, 1900, 0));
    }

    #[test]
    fn others_are_denied_until_expiry() {
        let (rec, _) = claim(None, "a", 0, 1000);
        assert_eq!(Record::claim(Some(&rec), "b", 999, 10), Err("a".to_owned()));
        let (rec, how) = claim(Some(&rec), "b", 1000, 10);
        assert_eq!(
            (how, rec.epoch, rec.holder.as_deref()),
            (Claimed::New, 2, Some("b"))
        );
    }

    #[test]
    fn reclaim_after_lapse_is_a_new_tenure() {
        let (rec, _) = claim(None, "a", 0, 1000);
        let (rec, how) = claim(Some(&rec), "a", 1000, 1000);
        assert_eq!((how, rec.epoch, rec.started_ms), (Claimed::New, 2, 1000));
    }

    #[test]
    fn release_and_revoke_keep_the_epoch_counter() {
        let (rec, _) = claim(None, "a", 0, 1000);
        assert_eq!(rec.release("b", 10), Err(Some("a".to_owned())));
        let released = rec.release("a", 10).expect("release");
        assert_eq!(released.holder_at(10), None);
        assert_eq!(released.release("a", 11), Err(None));
        let (rec, _) = claim(Some(&released), "b", 11, 1000);
        assert_eq!(rec.epoch, 2);
        let (revoked, ended) = rec.revoke(12);
        assert_eq!(ended, Some(("b".to_owned(), 2)));
        assert_eq!(revoked.revoke(13).1, None);
        assert_eq!(claim(Some(&revoked), "a", 14, 1).0.epoch, 3);
    }

    #[test]
    fn pins_hold_against_expiry_but_not_against_release() {
        let (rec, _) = claim(None, "a", 0, 1000);
        let pinned = rec.repin(FOREVER_MS, 500).0;
        assert_eq!(pinned.holder_at(1_000_000), Some("a"));
        assert!(Record::claim(Some(&pinned), "b", 1_000_000, 1).is_err());
        let (ext, how) = claim(Some(&pinned), "a", 1_000_000, 1);
        assert_eq!((how, ext.epoch), (Claimed::Extended, 1));
        let (unpinned, ended) = pinned.repin(0, 1_000_000);
        assert_eq!(ended.as_deref(), Some("a"), "the unpin ended a's tenure");
        assert_eq!(unpinned.holder_at(1_000_000), None);
        assert_eq!(claim(Some(&unpinned), "b", 1_000_000, 1).0.epoch, 2);
    }

    #[test]
    fn pinning_a_lapsed_tenure_does_not_revive_it() {
        let (rec, _) = claim(None, "a", 0, 1000);
        let (pinned, ended) = rec.repin(FOREVER_MS, 2000);
        assert_eq!(ended, None, "it had ended already");
        assert_eq!(pinned.holder_at(2000), None);
        assert!(!pinned.is_held_by("a", Some(1), 2000));
        let (next, _) = claim(Some(&pinned), "b", 2001, 1);
        assert_eq!((next.epoch, next.holder_at(9_999_999)), (2, Some("b")));
    }

    #[test]
    fn a_clock_stepping_back_neither_revives_nor_lengthens() {
        let (rec, _) = claim(None, "a", 10_000, 1000);
        // Settled as expired at 20s, then the clock steps back to 5s.
        let (rec, _) = claim(Some(&rec), "b", 20_000, 1000);
        assert_eq!(rec.time(5_000), 20_000);
        assert!(!rec.is_held_by("a", None, 5_000));
        assert!(Record::claim(Some(&rec), "a", 5_000, 100_000).is_err());
        // An extension measured from the stepped-back clock is not shorter.
        let (ext, _) = claim(Some(&rec), "b", 5_000, 10);
        assert_eq!(ext.expiry_ms, 21_000);
    }

    #[test]
    fn pins_until() {
        let pin = |expires_ms| PinRecord {
            entity: "e".into(),
            reason: String::new(),
            pinned_ms: 0,
            expires_ms,
        };
        assert_eq!(PinRecord::pinned_until(&[], 0), 0);
        assert_eq!(
            PinRecord::pinned_until(&[pin(Some(50)), pin(Some(70))], 60),
            70
        );
        assert_eq!(PinRecord::pinned_until(&[pin(Some(50))], 60), 0);
        assert_eq!(
            PinRecord::pinned_until(&[pin(Some(50)), pin(None)], 0),
            FOREVER_MS
        );
    }
}

//! The history of each key: tenure transitions and pin changes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::core::clock::from_ms;
use crate::core::key::Key;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A new tenure began.
    Claimed,
    /// The holder released its tenure.
    Released,
    /// An administrator revoked the tenure.
    Revoked,
    /// The tenure ran out without renewal (logged when next noticed by a
    /// write; its time is the expiry).
    Lapsed,
    /// An entity pinned the key.
    Pinned,
    /// An entity removed its pin.
    Unpinned,
}

impl EventKind {
    /// The name stored in the database and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Claimed => "claimed",
            EventKind::Released => "released",
            EventKind::Revoked => "revoked",
            EventKind::Lapsed => "lapsed",
            EventKind::Pinned => "pinned",
            EventKind::Unpinned => "unpinned",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EventKind, String> {
        Ok(match s {
            "claimed" => EventKind::Claimed,
            "released" => EventKind::Released,
            "revoked" => EventKind::Revoked,
            "lapsed" => EventKind::Lapsed,
            "pinned" => EventKind::Pinned,
            "unpinned" => EventKind::Unpinned,
            other => return Err(format!("unknown event kind {other:?}")),
        })
    }
}

/// One entry of a key's history, from [`Engine::history`](crate::Engine::history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    id: i64,
    at: DateTime<Utc>,
    kind: EventKind,
    holder: Option<String>,
    epoch: u64,
    entity: Option<String>,
    detail: Option<String>,
}

impl Event {
    /// An event as a backend read it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: i64,
        at_ms: i64,
        kind: EventKind,
        holder: Option<String>,
        epoch: u64,
        entity: Option<String>,
        detail: Option<String>,
    ) -> Event {
        Event {
            id,
            at: from_ms(at_ms),
            kind,
            holder,
            epoch,
            entity,
            detail,
        }
    }

    /// Position in the database's history; increases with commit order.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// When it happened (for a lapse: the expiry instant).
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// What happened.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The tenure's holder (for pins: the holder at the time, if any).
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// The tenure's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// For pins: the pinning entity.
    pub fn entity(&self) -> Option<&str> {
        self.entity.as_deref()
    }

    /// For pins: the reason and expiry given.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

/// What [`Engine::wait_for_events`](crate::Engine::wait_for_events) read:
/// the events, whether some the caller asked for are gone, and where to
/// go on from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    events: Vec<(Key, Event)>,
    gap: Option<Gap>,
    cursor: i64,
}

impl Events {
    pub(crate) fn new(events: Vec<(Key, Event)>, gap: Option<Gap>, cursor: i64) -> Events {
        Events {
            events,
            gap,
            cursor,
        }
    }

    /// The events read, oldest first.
    pub fn events(&self) -> &[(Key, Event)] {
        &self.events
    }

    /// The events read, oldest first, by value.
    pub fn into_events(self) -> Vec<(Key, Event)> {
        self.events
    }

    /// Whether no event was read (a gap may still be reported).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many events were read.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Events that happened after the caller's position but are no longer
    /// in the history, if any: every key may have changed meanwhile, so
    /// read the leases you follow again. (From position 0, events trimmed
    /// from the start of the history count as missed too.)
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// The position to pass as `after` next time: the last event read, or
    /// past events of other namespaces that were skipped.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }
}

impl IntoIterator for Events {
    type Item = (Key, Event);
    type IntoIter = std::vec::IntoIter<(Key, Event)>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// Events a reader of the history missed, in [`Events::gap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gap {
    /// The events with ids `from..to` were removed from the history before
    /// they were read: trimmed past the engine's
    /// [event retention](crate::EngineBuilder::event_retention), or deleted
    /// by hand. They may concern any key.
    Missed {
        /// The first id missing.
        from: i64,
        /// The first id present again.
        to: i64,
    },
    /// Ids went backwards: rows were deleted by hand and the history's ids
    /// started again below the caller's position. The events returned start
    /// over from the oldest kept; what happened in between is unknown.
    Restarted,
    /// Events after the caller's position were trimmed from the history
    /// (past the retention) before they were read; how many is not known
    /// (a backend whose positions are not event ids: PostgreSQL).
    Trimmed,
}

impl Gap {
    /// How many events were missed, when known.
    pub fn missed(&self) -> Option<u64> {
        match *self {
            Gap::Missed { from, to } => u64::try_from(to - from).ok(),
            Gap::Restarted | Gap::Trimmed => None,
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Gap::Missed { from, to } => write!(
                f,
                "{} events (ids {from} to {}) left the history before they were read",
                to - from,
                to - 1
            ),
            Gap::Restarted => f.write_str(
                "the history was cut by hand and its ids started again; events in between are unknown",
            ),
            Gap::Trimmed => f.write_str(
                "events left the history (past its retention) before they were read",
            ),
        }
    }
}

/// Where a read of events after position `after` starts, and the gap it
/// reports, from the newest id in the history and the first id after
/// `after`: ids below the caller's position mean the history was cut by
/// hand and restarted (read from the start); a first id past `after + 1`
/// means events in between are gone.
pub(crate) fn gap_after(after: i64, newest: Option<i64>) -> (i64, Option<Gap>) {
    match newest {
        Some(newest) if newest >= after => (after, None),
        None if after <= 0 => (after, None),
        _ => (0, Some(Gap::Restarted)),
    }
}

/// The gap between `after` and `first`, the first id found after it.
pub(crate) fn missed_before(after: i64, first: Option<i64>) -> Option<Gap> {
    first.filter(|&f| f > after + 1).map(|to| Gap::Missed {
        from: after + 1,
        to,
    })
}

/// The position after a read that returned `events` of at most `limit`: a
/// full page ends at its last event; otherwise every event up to the newest
/// was read or skipped as another namespace's.
pub(crate) fn cursor_after(
    events: &[(Key, Event)],
    limit: usize,
    newest: Option<i64>,
    after: i64,
) -> i64 {
    match events.last() {
        Some((_, e)) if events.len() >= limit => e.id,
        _ => newest.unwrap_or(0).max(after),
    }
}

/// A lease transition to keep in the history, as an operation writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub at_ms: i64,
    pub kind: EventKind,
    pub holder: Option<String>,
    pub epoch: u64,
    pub entity: Option<String>,
    pub detail: Option<String>,
}

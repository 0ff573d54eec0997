//! The history of each key: tenure transitions and pin changes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::clock::from_ms;
use crate::key::Key;

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

/// The newest `limit` events of `key`, oldest first.
pub(crate) fn history(conn: &Connection, key: &Key, limit: usize) -> rusqlite::Result<Vec<Event>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut events: Vec<Event> = conn
        .prepare_cached(
            "SELECT id, at_ms, kind, holder, epoch, entity, detail FROM main.leasehold_events
             WHERE namespace = ?1 AND name = ?2 ORDER BY id DESC LIMIT ?3",
        )?
        .query_map((key.namespace(), key.name(), limit), |r| {
            let kind: String = r.get(2)?;
            Ok(Event {
                id: r.get(0)?,
                at: from_ms(r.get(1)?),
                kind: kind.parse().map_err(|e: String| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?,
                holder: r.get(3)?,
                epoch: r.get(4)?,
                entity: r.get(5)?,
                detail: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    events.reverse();
    Ok(events)
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
}

impl Gap {
    /// How many events were missed, when known.
    pub fn missed(&self) -> Option<u64> {
        match *self {
            Gap::Missed { from, to } => u64::try_from(to - from).ok(),
            Gap::Restarted => None,
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
        }
    }
}

/// Events of every key (or of one namespace) with ids after `after`, oldest
/// first, at most `limit`, and whether events after `after` are missing.
/// Runs inside a read transaction, so that its reads agree.
pub(crate) fn events_after(
    conn: &Connection,
    namespace: Option<&str>,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Events> {
    let newest: Option<i64> = conn
        .prepare_cached("SELECT max(id) FROM main.leasehold_events")?
        .query_row([], |r| r.get(0))?;
    let (after, mut gap) = match newest {
        Some(newest) if newest >= after => (after, None),
        None if after <= 0 => (after, None),
        // Ids below the caller's position: the history was cut by hand.
        _ => (0, Some(Gap::Restarted)),
    };
    if gap.is_none() {
        let first: Option<i64> = conn
            .prepare_cached("SELECT min(id) FROM main.leasehold_events WHERE id > ?1")?
            .query_row([after], |r| r.get(0))?;
        if let Some(first) = first.filter(|&f| f > after + 1) {
            gap = Some(Gap::Missed {
                from: after + 1,
                to: first,
            });
        }
    }
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let events: Vec<(Key, Event)> = conn
        .prepare_cached(
            "SELECT id, at_ms, kind, holder, epoch, entity, detail, namespace, name
             FROM main.leasehold_events
             WHERE id > ?1 AND (?2 IS NULL OR namespace = ?2) ORDER BY id LIMIT ?3",
        )?
        .query_map((after, namespace, limit_sql), |r| {
            let kind: String = r.get(2)?;
            let key = Key::new(r.get::<_, String>(7)?, r.get::<_, String>(8)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
            })?;
            Ok((
                key,
                Event {
                    id: r.get(0)?,
                    at: from_ms(r.get(1)?),
                    kind: kind.parse().map_err(|e: String| {
                        rusqlite::Error::FromSqlConversionFailure(
                            2,
                            rusqlite::types::Type::Text,
                            e.into(),
                        )
                    })?,
                    holder: r.get(3)?,
                    epoch: r.get(4)?,
                    entity: r.get(5)?,
                    detail: r.get(6)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    // A full page ends at its last event; otherwise every event up to the
    // newest was read or skipped as another namespace's.
    let cursor = match events.last() {
        Some((_, e)) if events.len() >= limit => e.id,
        _ => newest.unwrap_or(0).max(after),
    };
    Ok(Events {
        events,
        gap,
        cursor,
    })
}

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

/// Events of every key (or of one namespace) with ids after `after`, oldest
/// first, at most `limit`.
pub(crate) fn events_after(
    conn: &Connection,
    namespace: Option<&str>,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(Key, Event)>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT id, at_ms, kind, holder, epoch, entity, detail, namespace, name
         FROM main.leasehold_events
         WHERE id > ?1 AND (?2 IS NULL OR namespace = ?2) ORDER BY id LIMIT ?3",
    )?
    .query_map((after, namespace, limit), |r| {
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
    .collect()
}

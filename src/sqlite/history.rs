//! Reading the history (`leasehold_events`) on SQLite.

use rusqlite::Connection;

use crate::core::event::{Event, EventKind, Events, cursor_after, gap_after, missed_before};
use crate::core::key::Key;

/// The kind column as an [`EventKind`], refused as a conversion failure of
/// column `at` if unknown.
fn kind_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<EventKind> {
    let kind: String = r.get(at)?;
    kind.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(at, rusqlite::types::Type::Text, e.into())
    })
}

/// The event of a row `id, at_ms, kind, holder, epoch, entity, detail`.
fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event::new(
        r.get(0)?,
        r.get(1)?,
        kind_at(r, 2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

/// The newest `limit` events of `key`, oldest first.
pub(crate) fn history(conn: &Connection, key: &Key, limit: usize) -> rusqlite::Result<Vec<Event>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut events: Vec<Event> = conn
        .prepare_cached(
            "SELECT id, at_ms, kind, holder, epoch, entity, detail FROM main.leasehold_events
             WHERE namespace = ?1 AND name = ?2 ORDER BY id DESC LIMIT ?3",
        )?
        .query_map((key.namespace(), key.name(), limit), event_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    events.reverse();
    Ok(events)
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
    let (after, mut gap) = gap_after(after, newest);
    if gap.is_none() {
        let first: Option<i64> = conn
            .prepare_cached("SELECT min(id) FROM main.leasehold_events WHERE id > ?1")?
            .query_row([after], |r| r.get(0))?;
        gap = missed_before(after, first);
    }
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let events: Vec<(Key, Event)> = conn
        .prepare_cached(
            "SELECT id, at_ms, kind, holder, epoch, entity, detail, namespace, name
             FROM main.leasehold_events
             WHERE id > ?1 AND (?2 IS NULL OR namespace = ?2) ORDER BY id LIMIT ?3",
        )?
        .query_map((after, namespace, limit_sql), |r| {
            let key = Key::new(r.get::<_, String>(7)?, r.get::<_, String>(8)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
            })?;
            Ok((key, event_from_row(r)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let cursor = cursor_after(&events, limit, newest, after);
    Ok(Events::new(events, gap, cursor))
}

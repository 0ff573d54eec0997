//! What other connections changed: `PRAGMA data_version` says whether
//! anything did, and the event log which keys.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::core::backend::{ChangeFeed, Changes};
use crate::core::error::{Context, Error};
use crate::core::key::Key;
use crate::sqlite::open::Anchor;

/// The change feed of a SQLite database: the background thread's own
/// connection, for `PRAGMA data_version` and the event log.
pub(crate) struct SqliteFeed {
    path: PathBuf,
    read_only: bool,
    busy_timeout: Duration,
    conn: Option<Connection>,
    data_version: Option<i64>,
    /// The newest event read, as read; `Some(None)` when the log was empty.
    last_event: Option<Option<Seen>>,
    /// The engine's anchor, kept until this feed's connection has closed
    /// (declared after it), so that the anchor closes last.
    _anchor: Arc<Anchor>,
}

/// An event as the watch last read it: its id and enough of its content to
/// tell it from another event given the same id after rows were deleted by
/// hand (SQLite then reuses ids).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    id: i64,
    at_ms: i64,
    namespace: String,
    name: String,
    kind: String,
    epoch: i64,
}

impl Seen {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Seen> {
        Ok(Seen {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            namespace: r.get(2)?,
            name: r.get(3)?,
            kind: r.get(4)?,
            epoch: r.get(5)?,
        })
    }
}

/// The columns [`Seen::from_row`] reads.
const SEEN_COLUMNS: &str = "id, at_ms, namespace, name, kind, epoch";

impl SqliteFeed {
    pub(crate) fn new(
        path: PathBuf,
        read_only: bool,
        busy_timeout: Duration,
        anchor: Arc<Anchor>,
    ) -> SqliteFeed {
        SqliteFeed {
            path,
            read_only,
            busy_timeout,
            conn: None,
            data_version: None,
            last_event: None,
            _anchor: anchor,
        }
    }
}

impl ChangeFeed for SqliteFeed {
    fn changes(&mut self) -> Result<Changes, Error> {
        let fail = |e| crate::sqlite::error::fail(Context::new("watch"), e, self.busy_timeout);
        if self.conn.is_none() {
            let flags = if self.read_only {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            } else {
                OpenFlags::SQLITE_OPEN_READ_WRITE
            };
            let conn =
                Connection::open_with_flags(&self.path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .map_err(fail)?;
            conn.busy_timeout(self.busy_timeout).map_err(fail)?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref().expect("just opened");
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(fail)?;
        if self.data_version == Some(version) {
            return Ok(Changes::None);
        }
        // One read transaction for the look, so that the rows agree.
        conn.prepare_cached("BEGIN")
            .and_then(|mut s| s.execute([]))
            .map_err(fail)?;
        let looked = look(&mut self.last_event, conn);
        let _ = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        let changes = looked.map_err(fail)?;
        // The version is taken as seen only once the events are read: after
        // a failed read, the next look must still see a change.
        self.data_version = Some(version);
        Ok(changes)
    }
}

/// Reads the events logged since the last look.
fn look(last_event: &mut Option<Option<Seen>>, conn: &Connection) -> rusqlite::Result<Changes> {
    const LIMIT: usize = 10_000;
    let newest = || -> rusqlite::Result<Option<Seen>> {
        conn.prepare_cached(&format!(
            "SELECT {SEEN_COLUMNS} FROM main.leasehold_events ORDER BY id DESC LIMIT 1"
        ))?
        .query_row([], Seen::from_row)
        .optional()
    };
    let Some(last) = last_event.clone() else {
        *last_event = Some(newest()?);
        // Waiters that read a lease before the watch began may have
        // missed a change: have them read again.
        return Ok(Changes::All);
    };
    // From the last event seen (which must still be there, unchanged)
    // onwards; or, if the log was empty, from the first id.
    let from = last.as_ref().map_or(1, |l| l.id);
    let rows: Vec<Seen> = conn
        .prepare_cached(&format!(
            "SELECT {SEEN_COLUMNS} FROM main.leasehold_events WHERE id >= ?1 ORDER BY id LIMIT ?2"
        ))?
        .query_map((from, LIMIT as i64 + 1), Seen::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let new = match &last {
        Some(l) => match rows.split_first() {
            Some((first, rest)) if first == l => rest,
            // The last event seen is gone or is another one: trimmed
            // past it, or rows deleted by hand and ids reused. Anything
            // may have changed.
            _ => {
                *last_event = Some(newest()?);
                return Ok(Changes::All);
            }
        },
        None => &rows[..],
    };
    let Some(latest) = new.last() else {
        return Ok(Changes::None);
    };
    let contiguous = new
        .first()
        .is_some_and(|f| f.id == from + i64::from(last.is_some()))
        && new.len() < LIMIT;
    *last_event = Some(Some(latest.clone()));
    if !contiguous {
        return Ok(Changes::All);
    }
    Ok(Changes::Keys(
        new.iter()
            .filter_map(|e| Key::new(e.namespace.clone(), e.name.clone()).ok())
            .collect(),
    ))
}

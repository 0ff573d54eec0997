//! Keeping the WAL bounded.
//!
//! SQLite's automatic checkpoints run a `PASSIVE` checkpoint after every
//! commit once the WAL passes 1,000 frames. With several processes
//! committing flat out those checkpoints fight over the checkpoint lock,
//! none of them can reset the WAL, and it grows by hundreds of MB in seconds
//! (the `contention` bench). So the engine's connections turn them off and
//! install this WAL hook instead, which sees every commit made on them —
//! the engine's own and the application's transactions on
//! [`Engine::connection`](crate::Engine::connection) alike:
//!
//! - past 1,000 frames, a `PASSIVE` checkpoint at most every
//!   [`CHECK_EVERY`] commits (in this process), so that contending writers
//!   do not all checkpoint at once;
//! - past the size limit, a `RESTART` checkpoint every quarter of that,
//!   which waits (with the connection's busy handler) for the write lock and
//!   for readers to move past the old frames, so that the WAL starts over.
//!   The file is then truncated to the limit (`journal_size_limit`).
//!
//! A single writer thus checkpoints about as often as SQLite would.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rusqlite::Connection;
use rusqlite::hooks::{CheckpointMode, Wal};

/// The WAL size, in frames, from which the hook checkpoints (SQLite's
/// automatic checkpoint threshold).
const PASSIVE_FROM: c_int = 1000;

/// Every how many large-WAL commits a checkpoint is tried.
const CHECK_EVERY: u64 = 64;

/// The smallest size limit, in frames, of the engines of this process. The
/// hook is a plain function, with no engine to ask, so one limit serves
/// them all.
static LIMIT_FRAMES: AtomicI64 = AtomicI64::new(i64::MAX);

/// Commits seen with a WAL past [`PASSIVE_FROM`], in this process.
static LARGE: AtomicU64 = AtomicU64::new(0);

/// Lowers the process's WAL size limit to `bytes` (in frames of
/// `page_size`).
pub(crate) fn limit(bytes: u64, page_size: u64) {
    let frames = i64::try_from(bytes / page_size.max(512)).unwrap_or(i64::MAX);
    LIMIT_FRAMES.fetch_min(frames.max(i64::from(PASSIVE_FROM)), Ordering::Relaxed);
}

/// Replaces SQLite's automatic checkpoints on `conn` with [`after_commit`],
/// and truncates the WAL file to `limit_bytes` after a reset.
pub(crate) fn install(conn: &Connection, limit_bytes: u64) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_size_limit", limit_bytes as i64)?;
    // The pragma installs SQLite's own hook; ours must come after it.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.wal_hook(Some(after_commit));
    Ok(())
}

/// The WAL hook: runs after each commit on an engine connection, with the
/// WAL's size in frames. Its errors would be reported as the committing
/// statement's, although the commit happened; so a checkpoint that could
/// not finish (busy) is left to a later commit.
fn after_commit(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    if frames < PASSIVE_FROM {
        return Ok(());
    }
    let n = LARGE.fetch_add(1, Ordering::Relaxed);
    let mode =
        if i64::from(frames) > LIMIT_FRAMES.load(Ordering::Relaxed) && n % (CHECK_EVERY / 4) == 0 {
            CheckpointMode::RESTART
        } else if n % CHECK_EVERY == 0 {
            CheckpointMode::PASSIVE
        } else {
            return Ok(());
        };
    let _ = wal.checkpoint_v2(mode);
    Ok(())
}

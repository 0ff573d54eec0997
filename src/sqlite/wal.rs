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
//!   which waits for the write lock and for readers to move past the old
//!   frames, so that the WAL starts over. The file is then truncated to the
//!   limit (`journal_size_limit`). It holds the write lock while it waits,
//!   so it waits at most [`RESTART_WAIT`] (through [`LockWait::Fair`]'s
//!   handler, capped). If it could not finish, the next try comes after
//!   [`RESTART_PAUSE`], doubled at each further failure up to
//!   [`RESTART_PAUSE_MAX`]: contention alone rarely fails twice, while a
//!   long reader (even one on the committing thread) soon costs writers
//!   about one per cent of their time, not the busy timeout at each commit. SQLite's own handler
//!   ([`LockWait::SqliteDefault`]) cannot be capped, so its connections
//!   get `PASSIVE` checkpoints only.
//!
//! A single writer thus checkpoints about as often as SQLite would.

use std::ffi::c_int;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::{CheckpointMode, Wal};

#[cfg(doc)]
use crate::LockWait;

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

/// How long a `RESTART` checkpoint may wait for the lock and for readers.
pub(crate) const RESTART_WAIT: Duration = Duration::from_millis(10);

/// After a `RESTART` that could not finish, how long until the next try;
/// doubled after each further failure, up to [`RESTART_PAUSE_MAX`].
pub(crate) const RESTART_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between `RESTART` tries.
pub(crate) const RESTART_PAUSE_MAX: Duration = Duration::from_secs(1);

/// `RESTART` tries that failed in a row (this process).
static RESTART_FAILURES: AtomicU64 = AtomicU64::new(0);

/// When (in ms since [`epoch`]) the next `RESTART` may be tried.
static RESTART_AFTER_MS: AtomicU64 = AtomicU64::new(0);

/// The process's reference instant for [`RESTART_AFTER_MS`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Lowers the process's WAL size limit to `bytes` (in frames of
/// `page_size`).
pub(crate) fn limit(bytes: u64, page_size: u64) {
    let frames = i64::try_from(bytes / page_size.max(512)).unwrap_or(i64::MAX);
    LIMIT_FRAMES.fetch_min(frames.max(i64::from(PASSIVE_FROM)), Ordering::Relaxed);
}

/// Replaces SQLite's automatic checkpoints on `conn` with [`after_commit`]
/// (with `restart`; else [`after_commit_passive`]), and truncates the WAL
/// file to `limit_bytes` after a reset.
pub(crate) fn install(conn: &Connection, limit_bytes: u64, restart: bool) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_size_limit", limit_bytes as i64)?;
    // The pragma installs SQLite's own hook; ours must come after it.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.wal_hook(Some(if restart {
        after_commit
    } else {
        after_commit_passive
    }));
    Ok(())
}

/// The WAL hook: runs after each commit on an engine connection, with the
/// WAL's size in frames. Its errors would be reported as the committing
/// statement's, although the commit happened; so a checkpoint that could
/// not finish (busy) is left to a later commit.
fn after_commit(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    checkpoint(wal, frames, true);
    Ok(())
}

/// [`after_commit`] without `RESTART`: for connections whose busy handler
/// cannot be capped.
fn after_commit_passive(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    checkpoint(wal, frames, false);
    Ok(())
}

/// The checkpoint, if any, due after a commit that left `frames` in the
/// WAL: `RESTART` (when `restart`) past the size limit, else `PASSIVE`.
fn checkpoint(wal: &Wal, frames: c_int, restart: bool) {
    if frames < PASSIVE_FROM {
        return;
    }
    let n = LARGE.fetch_add(1, Ordering::Relaxed);
    if restart
        && i64::from(frames) > LIMIT_FRAMES.load(Ordering::Relaxed)
        && n.is_multiple_of(CHECK_EVERY / 4)
        && millis_since_epoch() >= RESTART_AFTER_MS.load(Ordering::Relaxed)
    {
        let done = crate::sqlite::busy::capped(RESTART_WAIT, || {
            wal.checkpoint_v2(CheckpointMode::RESTART)
        });
        if done.is_ok() {
            RESTART_FAILURES.store(0, Ordering::Relaxed);
        } else {
            let failures = RESTART_FAILURES.fetch_add(1, Ordering::Relaxed).min(16);
            let pause = (RESTART_PAUSE * (1 << failures)).min(RESTART_PAUSE_MAX);
            let pause = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
            RESTART_AFTER_MS.store(millis_since_epoch() + pause, Ordering::Relaxed);
        }
    } else if n.is_multiple_of(CHECK_EVERY) {
        let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
    }
}

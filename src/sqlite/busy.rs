//! Waiting for SQLite's write lock.
//!
//! SQLite's own busy handler (`busy_timeout`) sleeps between attempts with a
//! growing back-off (1, 2, 5, 10, … up to 100 ms). Under contention a waiter
//! is asleep most of the time the lock is free, and loses it to whoever is
//! running: measured with 8 processes writing flat out, single transactions
//! waited 0.6–2.5 s and the least-served process got a tenth of the busiest
//! one's commits. A leader renewing its lease cannot wait that long.
//!
//! [`LockWait::Fair`] replaces it with two rules of ours:
//!
//! - **Waiters poll briefly, the oldest most often, and say so.** The busy
//!   handler looks again after 20–40 µs once (most waits are for one short
//!   transaction), then pauses 100–200 µs while a wait is young, 50–100 µs
//!   after 1 ms and 20–40 µs after 3 ms (jittered, so waiters do not move
//!   in step), so when the lock comes free, the waiters that have waited
//!   longest are the likeliest to take it. After 50 ms it looks at the WAL
//!   file as well: while commits still go by (the lock passes round, the
//!   waiter is merely unlucky) it keeps looking every 20–40 µs; when none
//!   has for 50 ms (someone holds the lock) every 0.5–1 ms, so that a held
//!   lock burns no CPU; never past the busy timeout. While it
//!   waits it touches a small signal file next to the database
//!   (`<db>-lhwait`, its modification time) at most once a millisecond.
//! - **Writers take turns.** A process on the engine's write path may commit
//!   back to back for a turn of [`TURN`] or [`TURN_COMMITS_MAX`] commits,
//!   whichever ends first; then it looks at the signal file (one `fstat`,
//!   at most once per turn) and, if someone waited in the last few
//!   milliseconds, steps back for 100–200 µs so that a waiter takes the
//!   lock. Without the rule the process that happens to hold the CPU keeps
//!   re-taking the lock it just released.
//!
//! Waiting is therefore bounded by about (processes − 1) turns, and a single
//! writer pays nothing but a clock read per commit. The `contention` bench
//! (8 processes on 2 cores, 10 s) measured p99.9 waits of 6.4–8.5 ms
//! (worst 18–40 ms) and a least-served process at 0.82–0.90 of the busiest,
//! at 0.73–0.90× the throughput of SQLite's handler, which gave p99.9
//! 5–18 ms, worst 1.2–1.9 s, and 0.18–0.68.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How the engine's connections wait for SQLite's write lock; see
/// [`EngineBuilder::lock_wait`](crate::EngineBuilder::lock_wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockWait {
    /// leasehold's bounded, fair waiting (the default): short jittered
    /// pauses up to the busy timeout, and writers taking turns.
    #[default]
    Fair,
    /// SQLite's own `busy_timeout` handler (growing sleeps up to 100 ms).
    SqliteDefault,
}

/// How long a writer may keep the lock to itself while others wait. Chosen
/// with the `contention` bench (8 processes, 2 cores): 0.5 ms served the
/// processes most evenly (least share 0.81–0.85) but cost throughput (0.6×
/// SQLite's handler); 1 ms gave 0.72× at 0.76; 0.7 ms sits between.
pub(crate) const TURN: Duration = Duration::from_micros(700);

/// A turn also ends after this many commits, so that a process slowed down
/// (by the CPU scheduler, say) does not get fewer commits per turn.
const TURN_COMMITS_MAX: u32 = 32;

/// A wait longer than this is not turn-taking: the lock is held.
const LONG_WAIT: Duration = Duration::from_millis(50);

/// A waiter refreshes the signal at most this often.
const TOUCH_EVERY: Duration = Duration::from_millis(1);

/// A signal this recent means someone is (still) waiting.
const RECENT: Duration = Duration::from_millis(3);

/// The per-database file whose modification time says "someone is waiting
/// for the write lock".
#[derive(Debug)]
pub(crate) struct Signal {
    file: File,
    /// The database's WAL file, whose changes show commits going by.
    wal: PathBuf,
}

impl Signal {
    /// Opens (creating) `<db>-lhwait`; `None` if that is impossible (a
    /// read-only directory): waiting then works without turns.
    pub fn open(db: &Path) -> Option<Arc<Signal>> {
        let mut name = db.as_os_str().to_owned();
        let mut wal = name.clone();
        wal.push("-wal");
        name.push("-lhwait");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(name)
            .ok()?;
        Some(Arc::new(Signal {
            file,
            wal: wal.into(),
        }))
    }

    fn touch(&self) {
        let _ = self.file.set_modified(SystemTime::now());
    }

    /// The WAL file's length and modification time: they change with every
    /// commit (the time at the kernel's clock tick, a few ms).
    fn wal_state(&self) -> Option<(u64, SystemTime)> {
        let m = std::fs::metadata(&self.wal).ok()?;
        Some((m.len(), m.modified().ok()?))
    }

    fn recent(&self) -> bool {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < RECENT))
    }
}

thread_local! {
    /// When the current wait began, and how long it may last.
    static WAIT: Cell<(Option<Instant>, Duration)> = const { Cell::new((None, Duration::from_secs(5))) };
    /// The signal of the database this thread is working on.
    static SIGNAL: RefCell<Option<Arc<Signal>>> = const { RefCell::new(None) };
    /// When this thread last touched the signal.
    static TOUCHED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// When this thread's current turn began.
    static TURN_BEGAN: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Commits in this thread's current turn.
    static TURN_COMMITS: Cell<u32> = const { Cell::new(0) };
    /// A shorter limit for the waits of a checkpoint (see [`capped`]).
    static CAP: Cell<Option<Duration>> = const { Cell::new(None) };
    /// In a long wait: the WAL's state last seen, and when it last changed.
    static PROGRESS: Cell<Option<((u64, SystemTime), Instant)>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's lock waits limited to `cap`: for the
/// checkpoints run after a commit, which hold the write lock while they
/// wait for readers and must not keep every writer out for long.
pub(crate) fn capped<T>(cap: Duration, f: impl FnOnce() -> T) -> T {
    let before = CAP.with(|c| c.replace(Some(cap)));
    let out = f();
    CAP.with(|c| c.set(before));
    out
}

/// Sets this thread's context for lock waits (the engine's busy timeout and
/// signal); called before each engine operation.
pub(crate) fn set_context(budget: Duration, signal: Option<&Arc<Signal>>) {
    WAIT.with(|w| w.set((None, budget)));
    SIGNAL.with(|s| {
        let mut s = s.borrow_mut();
        let same = match (&*s, signal) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            *s = signal.cloned();
        }
    });
}

/// After a commit on the engine's write path: at the end of a turn, step
/// back if others are waiting.
pub(crate) fn after_commit() {
    let now = Instant::now();
    let began = TURN_BEGAN.with(|t| {
        let began = t.get().unwrap_or(now);
        t.set(Some(began));
        began
    });
    let commits = TURN_COMMITS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    if now.duration_since(began) < TURN && commits < TURN_COMMITS_MAX {
        return;
    }
    TURN_BEGAN.with(|t| t.set(None));
    TURN_COMMITS.with(|c| c.set(0));
    let waiting = SIGNAL.with(|s| s.borrow().as_ref().is_some_and(|s| s.recent()));
    if waiting {
        std::thread::sleep(jittered(100));
    }
}

/// A pause of `base` to 2 × `base` microseconds.
fn jittered(base: u64) -> Duration {
    // Cheap pseudo-randomness from the clock: enough to break lockstep.
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_micros(base + u64::from(nanos) % (base + 1))
}

/// The pause before retry `count` (0-based) of a waiter that has waited
/// `waited` so far, `circulating` if commits went by in the last
/// [`LONG_WAIT`]. After a first quick look, the longer it has waited, the
/// more often it looks: when the lock comes free, the oldest
/// waiters are the likeliest to take it. (SQLite's handler does the
/// opposite, which is what starves them.) Past [`LONG_WAIT`] with no commit
/// going by, the lock is not passing round but held (a long transaction, a
/// checkpoint): looking so often would only burn CPU (a timed wake-up costs
/// about 18 µs of it on a small VM), so the waiter then looks every
/// 0.5–1 ms. Measured with the `contention` bench (8 processes on 2 cores):
/// pausing longer leaves the lock idle while waiters sleep, pausing shorter
/// burns CPU on wake-ups.
fn pause(count: i32, waited: Duration, circulating: bool) -> Duration {
    jittered(if count == 0 {
        // Most waits are for one short transaction: look again soon once.
        20
    } else if waited < Duration::from_millis(1) {
        100
    } else if waited < Duration::from_millis(3) {
        50
    } else if waited < LONG_WAIT || circulating {
        20
    } else {
        500
    })
}

/// The busy handler installed on the engine's connections for
/// [`LockWait::Fair`].
pub(crate) fn fair_handler(count: i32) -> bool {
    WAIT.with(|w| {
        let (started, full_budget) = w.get();
        let budget = CAP
            .with(Cell::get)
            .map_or(full_budget, |cap| cap.min(full_budget));
        let now = Instant::now();
        let started = match (count, started) {
            (0, _) | (_, None) => {
                w.set((Some(now), full_budget));
                now
            }
            (_, Some(s)) => s,
        };
        let waited = now.duration_since(started);
        if waited >= budget {
            w.set((None, full_budget));
            return false;
        }
        let due = TOUCHED.with(|t| {
            t.get()
                .is_none_or(|at| now.duration_since(at) >= TOUCH_EVERY)
        });
        if due {
            TOUCHED.with(|t| t.set(Some(now)));
            SIGNAL.with(|s| {
                if let Some(s) = &*s.borrow() {
                    s.touch();
                }
            });
        }
        // Having waited, this thread starts a fresh turn once it gets in.
        TURN_BEGAN.with(|t| t.set(None));
        TURN_COMMITS.with(|c| c.set(0));
        let circulating = waited >= LONG_WAIT && circulating(now);
        if count == 0 {
            PROGRESS.with(|p| p.set(None));
        }
        std::thread::sleep(pause(count, waited, circulating).min(budget - waited));
        true
    })
}

/// Whether commits went by in the last [`LONG_WAIT`], judged by the WAL file
/// (during a long wait only: one `stat` per look).
fn circulating(now: Instant) -> bool {
    let Some(state) = SIGNAL.with(|s| s.borrow().as_ref().and_then(|s| s.wal_state())) else {
        return false;
    };
    PROGRESS.with(|p| {
        let changed_at = match p.get() {
            Some((seen, at)) if seen == state => at,
            // The first look of a long wait counts as a change: the wait
            // began while commits went by (or it would not have been
            // turn-taking up to here).
            _ => now,
        };
        p.set(Some((state, changed_at)));
        now.duration_since(changed_at) < LONG_WAIT
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_wait_backs_off_only_when_no_commit_goes_by() {
        let long = LONG_WAIT * 2;
        assert!(pause(5, long, true) <= Duration::from_micros(40));
        assert!(pause(5, long, false) >= Duration::from_micros(500));
        assert!(pause(5, Duration::from_millis(10), false) <= Duration::from_micros(40));
        assert!(pause(0, long, false) <= Duration::from_micros(40));
    }

    #[test]
    fn a_capped_wait_gives_up_at_the_cap_and_the_cap_ends_with_its_scope() {
        set_context(Duration::from_secs(60), None);
        let gave_up = capped(Duration::from_millis(2), || {
            let mut count = 0;
            while fair_handler(count) {
                count += 1;
            }
            count
        });
        // It gave up long before the 60 s budget: at the cap.
        assert!(gave_up > 0);
        assert_eq!(CAP.with(Cell::get), None);
        assert_eq!(WAIT.with(Cell::get).1, Duration::from_secs(60));
    }
}

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
//!   longest are the likeliest to take it; after 50 ms (someone is holding the lock, not
//!   passing it round) every 0.5–1 ms, until the busy timeout. While it
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
use std::path::Path;
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
}

impl Signal {
    /// Opens (creating) `<db>-lhwait`; `None` if that is impossible (a
    /// read-only directory): waiting then works without turns.
    pub fn open(db: &Path) -> Option<Arc<Signal>> {
        let mut name = db.as_os_str().to_owned();
        name.push("-lhwait");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(name)
            .ok()?;
        Some(Arc::new(Signal { file }))
    }

    fn touch(&self) {
        let _ = self.file.set_modified(SystemTime::now());
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
/// `waited` so far. After a first quick look, the longer it has waited, the
/// more often it looks: when the lock comes free, the oldest
/// waiters are the likeliest to take it. (SQLite's handler does the
/// opposite, which is what starves them.) Past [`LONG_WAIT`] the lock is not
/// passing round but held (a long transaction, a checkpoint): looking so
/// often would only burn CPU (a timed wake-up costs about 18 µs of it on a
/// small VM), so the waiter then looks every 0.5–1 ms. Measured with the
/// `contention` bench (8 processes on 2 cores): pausing longer leaves the
/// lock idle while waiters sleep, pausing shorter burns CPU on wake-ups.
fn pause(count: i32, waited: Duration) -> Duration {
    jittered(if count == 0 {
        // Most waits are for one short transaction: look again soon once.
        20
    } else if waited < Duration::from_millis(1) {
        100
    } else if waited < Duration::from_millis(3) {
        50
    } else if waited < LONG_WAIT {
        20
    } else {
        500
    })
}

/// The busy handler installed on the engine's connections for
/// [`LockWait::Fair`].
pub(crate) fn fair_handler(count: i32) -> bool {
    WAIT.with(|w| {
        let (started, budget) = w.get();
        let now = Instant::now();
        let started = match (count, started) {
            (0, _) | (_, None) => {
                w.set((Some(now), budget));
                now
            }
            (_, Some(s)) => s,
        };
        if now.duration_since(started) >= budget {
            w.set((None, budget));
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
        std::thread::sleep(pause(count, now.duration_since(started)));
        true
    })
}

//! Waiting for SQLite's write lock.
//!
//! SQLite's own busy handler (`busy_timeout`) sleeps between attempts with a
//! growing back-off (1, 2, 5, 10, … up to 100 ms). Under contention a waiter
//! is asleep most of the time the lock is free, and loses it to whoever is
//! running: measured with 8 processes writing flat out, single transactions
//! waited 0.6–2.5 s and the least-served process got 0.4 of the busiest
//! one's commits. A leader renewing its lease cannot wait that long.
//!
//! [`LockWait::Fair`] replaces it with a handler of ours: short pauses that
//! stay short (a few hundred microseconds, jittered so that waiters do not
//! move in step) until the engine's busy timeout, and a courtesy rule on the
//! engine's own write path (see `engine.rs`): a process that has just
//! committed while others wait steps back briefly before its next write, so
//! the lock passes round instead of staying with whoever holds the CPU.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How the engine's connections wait for SQLite's write lock; see
/// [`EngineBuilder::lock_wait`](crate::EngineBuilder::lock_wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockWait {
    /// leasehold's bounded, fair waiting (the default): short jittered
    /// pauses up to the busy timeout.
    #[default]
    Fair,
    /// SQLite's own `busy_timeout` handler (growing sleeps up to 100 ms).
    SqliteDefault,
}

thread_local! {
    /// When the current wait began, and how long it may last.
    static WAIT: Cell<(Option<Instant>, Duration)> = const { Cell::new((None, Duration::from_secs(5))) };
    /// Whether this thread waited for the lock since its last commit.
    static CONTENDED: Cell<bool> = const { Cell::new(false) };
}

/// After a commit on the engine's write path: if this thread had to wait
/// for the lock (so others are likely waiting too), pause for a moment
/// before its next write, so that a waiter gets the lock instead of the
/// process that happens to be running.
pub(crate) fn after_commit() {
    if CONTENDED.with(|c| c.replace(false)) {
        std::thread::sleep(pause(3));
    }
    // (pause(3) is 100–200 µs: about one waiter's polling period.)
}

/// Sets the budget for lock waits on this thread (the engine's busy
/// timeout); called before each engine operation.
pub(crate) fn set_budget(budget: Duration) {
    WAIT.with(|w| w.set((None, budget)));
}

/// The pause before retry number `count` (0-based).
fn pause(count: i32) -> Duration {
    // Cheap pseudo-randomness from the clock: enough to break lockstep.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Measured with the `contention` bench (8 processes on 2 cores): longer
    // pauses leave the lock idle while waiters sleep (less throughput),
    // shorter ones burn CPU on wake-ups (about 18 µs each on a small VM).
    let base: u64 = match count {
        0 => 20,
        1 => 50,
        _ => 100,
    };
    Duration::from_micros(base + u64::from(nanos) % (base + 1))
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
        CONTENDED.with(|c| c.set(true));
        std::thread::sleep(pause(count));
        true
    })
}

//! The time source: a trait, the system clock, and a manual clock for tests.
//!
//! The engine reads time only through [`Clock`]. It never trusts a reading to
//! move forward: each engine keeps a high-water mark of the instants it has
//! used (and persists it, see `ARCHITECTURE.md`), so a clock that steps
//! backwards cannot revive an expired lease or lengthen a tenure.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current time.
///
/// Implement it to run the engine on another notion of time; use
/// [`ManualClock`] in tests. Implementations must be cheap to call: the
/// engine reads the clock once per operation.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Registers a callback to run whenever this clock is moved by hand.
    ///
    /// Engines register one so that their background work re-evaluates
    /// deadlines at once when a test advances a [`ManualClock`]. The callback
    /// returns `false` once it is no longer needed, and the clock may then
    /// drop it. Clocks that only move on their own (the system clock) need not
    /// do anything; that is the default.
    fn on_change(&self, callback: Box<dyn Fn() -> bool + Send + Sync>) {
        drop(callback);
    }
}

/// The operating system's wall clock (`Utc::now()`); the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

type Callbacks = Vec<Box<dyn Fn() -> bool + Send + Sync>>;

/// A clock that moves only when told to; clones share one time.
///
/// ```
/// use std::time::Duration;
/// use leasehold::{Clock, ManualClock};
///
/// let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH);
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now().timestamp(), 90);
/// clock.step_back(Duration::from_secs(30)); // an NTP correction
/// assert_eq!(clock.now().timestamp(), 60);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: Mutex<DateTime<Utc>>,
    callbacks: Mutex<Callbacks>,
}

impl ManualClock {
    /// A clock reading `start` until moved.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            inner: Arc::new(ManualInner {
                now: Mutex::new(start),
                callbacks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Moves the clock forward.
    ///
    /// # Panics
    ///
    /// If the new time is out of chrono's range.
    pub fn advance(&self, by: Duration) {
        let delta = TimeDelta::from_std(by).expect("duration out of range");
        self.update(|now| *now += delta);
    }

    /// Moves the clock backward, as an NTP step would.
    ///
    /// # Panics
    ///
    /// If the new time is out of chrono's range.
    pub fn step_back(&self, by: Duration) {
        let delta = TimeDelta::from_std(by).expect("duration out of range");
        self.update(|now| *now -= delta);
    }

    /// Sets the clock to `to`, forward or backward.
    pub fn set(&self, to: DateTime<Utc>) {
        self.update(|now| *now = to);
    }

    fn update(&self, f: impl FnOnce(&mut DateTime<Utc>)) {
        f(&mut self.inner.now.lock().unwrap_or_else(|e| e.into_inner()));
        let mut callbacks = self
            .inner
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        callbacks.retain(|callback| callback());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.inner.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_change(&self, callback: Box<dyn Fn() -> bool + Send + Sync>) {
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(callback);
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

/// Engine time for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
    /// Whether the instant lies after that millisecond began (a claim's
    /// guarantee counts from the instant, so its expiry rounds up).
    pub fraction: bool,
}

impl Now {
    /// A whole millisecond.
    pub fn at(ms: i64) -> Now {
        Now {
            ms,
            fraction: false,
        }
    }
}

/// How often (in engine time) a write transaction also persists the
/// high-water mark.
const HIGH_WATER_PERSIST_MS: i64 = 1000;

/// A clock reading this far (ms) behind the high-water mark counts as the
/// clock stepping back (less is two threads reading it in turn).
const STEP_BACK_MS: i64 = 100;

/// Engine time kept by one process: the clock's reading, but never earlier
/// than any instant already used (the high-water mark), and what is known
/// of that mark's persistence in the database (for backends whose time is
/// the process's own; a server backend's time is its server's).
pub(crate) struct LocalTime {
    clock: Arc<dyn Clock>,
    /// The latest engine time handed out; engine time never goes back.
    high_water: AtomicI64,
    /// The latest engine time known to be persisted.
    persisted: AtomicI64,
    /// The latest engine time written in a caller's transaction, which may
    /// yet roll back.
    unconfirmed: AtomicI64,
    /// The high-water mark when the clock was last seen stepping back (0:
    /// never): to persist at the next chance, so that a process opened
    /// later does not start behind it.
    stepped_back_to: AtomicI64,
}

impl LocalTime {
    /// Time from `clock`, never behind `persisted`, the mark found in the
    /// database.
    pub(crate) fn new(clock: Arc<dyn Clock>, persisted: i64) -> LocalTime {
        LocalTime {
            clock,
            high_water: AtomicI64::new(persisted),
            persisted: AtomicI64::new(persisted),
            unconfirmed: AtomicI64::new(persisted),
            stepped_back_to: AtomicI64::new(0),
        }
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Engine time now, and whether the instant it stands for lies after
    /// that millisecond began.
    pub(crate) fn reading(&self) -> Now {
        let clock = self.clock.now();
        let read = to_ms(clock);
        let fraction = !clock.timestamp_subsec_nanos().is_multiple_of(1_000_000);
        let before = self.high_water.fetch_max(read, Ordering::AcqRel);
        if before > read {
            if before - read > STEP_BACK_MS {
                // The clock stepped back past what was already used: have
                // it persisted at once (a rare write).
                self.stepped_back_to.fetch_max(before, Ordering::AcqRel);
            }
            Now::at(before)
        } else {
            Now { ms: read, fraction }
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.reading().ms
    }

    /// The latest engine time used.
    pub(crate) fn high_water(&self) -> i64 {
        self.high_water.load(Ordering::Acquire)
    }

    /// Whether a write transaction at engine time `now` should also persist
    /// the high-water mark: about once a second, and at once after a step
    /// back. The engine's own transactions go by what is known to be
    /// committed; callers' transactions (`owned` false) also by what other
    /// callers' transactions wrote, so that their commits do not each
    /// write the mark, while a caller's rollback cannot stop the engine's
    /// writes persisting it.
    pub(crate) fn persist_due(&self, now: i64, owned: bool) -> bool {
        let mut last = self.persisted.load(Ordering::Acquire);
        if !owned {
            last = last.max(self.unconfirmed.load(Ordering::Acquire));
        }
        now - last >= HIGH_WATER_PERSIST_MS || self.stepped_back_to.load(Ordering::Acquire) > last
    }

    /// Notes that a caller's transaction wrote `ms` (it may roll back).
    pub(crate) fn written_unconfirmed(&self, ms: i64) {
        self.unconfirmed.fetch_max(ms, Ordering::AcqRel);
    }

    /// Notes that `ms` is persisted (after the commit that wrote it).
    pub(crate) fn persisted(&self, ms: i64) {
        self.persisted.fetch_max(ms, Ordering::AcqRel);
    }

    /// Whether a step back was seen since the mark was last persisted.
    pub(crate) fn step_back_pending(&self) -> bool {
        self.stepped_back_to.load(Ordering::Acquire) > self.persisted.load(Ordering::Acquire)
    }

    /// The mark to persist on closing, if any was used beyond the persisted.
    pub(crate) fn unpersisted(&self) -> Option<i64> {
        let now = self.high_water();
        (now > self.persisted.load(Ordering::Acquire)).then_some(now)
    }
}

impl fmt::Debug for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTime")
            .field("clock", &self.clock)
            .field("high_water", &self.high_water())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch, the unit stored in the database.
pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`to_ms`]; saturates at chrono's range.
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn manual_clock_moves_only_when_told_and_calls_back() {
        let clock = ManualClock::new(DateTime::UNIX_EPOCH);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        clock.on_change(Box::new(move || seen.fetch_add(1, Ordering::SeqCst) < 1));
        assert_eq!(clock.now(), DateTime::UNIX_EPOCH);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(to_ms(clock.now()), 1500);
        clock.step_back(Duration::from_millis(500));
        assert_eq!(to_ms(clock.now()), 1000);
        clock.set(from_ms(7));
        assert_eq!(to_ms(clock.now()), 7);
        // The callback asked to be dropped after its second call.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn millisecond_conversion_saturates() {
        assert_eq!(from_ms(i64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(from_ms(i64::MIN), DateTime::<Utc>::MIN_UTC);
        assert_eq!(to_ms(from_ms(123_456)), 123_456);
    }
}

//! The time source: a trait, the system clock, and a manual clock for tests.
//!
//! The engine reads time only through [`Clock`]. It never trusts a reading to
//! move forward: each engine keeps a high-water mark of the instants it has
//! used (and persists it, see `ARCHITECTURE.md`), so a clock that steps
//! backwards cannot revive an expired lease or lengthen a tenure.

use std::fmt;
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

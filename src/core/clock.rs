//! The time source: a trait, the system clock, and a manual clock for tests.
//!
//! The engine reads time only through [`Clock`]. It never trusts a reading to
//! move forward: engine time is the clock's reading plus an offset that only
//! grows. Each engine keeps a high-water mark of the instants it has used;
//! when its clock reads behind it (a step back), the offset grows by the
//! difference, so that time goes on from the mark at the clock's rate — it
//! never goes back, and it never stands still waiting for the clock to
//! catch up. The mark and the offset are persisted in the database (see
//! `ARCHITECTURE.md`), and an engine opened later starts from them, so a
//! clock that steps backwards cannot revive an expired lease or lengthen a
//! tenure, in this engine or in later ones.

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

/// Once the offset has grown by more than this (ms) since it was last
/// persisted (the clock stepped back that far), the mark and the offset are
/// persisted at once; less is persisted with the next regular write of the
/// mark.
const STEP_BACK_MS: i64 = 100;

/// Engine time kept by one process (for backends whose time is the
/// process's own; a server backend's time is its server's): the clock's
/// reading plus an offset, and what is known of their persistence in the
/// database.
///
/// The offset starts at the larger of the offset persisted in the database
/// and what it takes for the first reading to reach the persisted mark
/// (the latest engine time any engine persisted); it only grows. Whenever
/// the clock, plus the offset, reads behind the latest instant already
/// handed out (the high-water mark), the offset grows by the difference
/// and the mark is handed out instead. So engine time never goes back, a
/// step back of the clock by X adds X to the offset, and from there time
/// moves at the clock's rate: a lease lapses after its duration as the
/// clock measures it, even right after a clock far ahead wrote the mark.
/// The offset stays (engine time stays ahead of the clock by the steps
/// back seen), since taking it back would move engine time backwards.
///
/// Readings and the state they update are taken under one lock, so that
/// two threads reading the clock in turn are never mistaken for a step
/// back (which would grow the offset, and engine time would run ahead).
pub(crate) struct LocalTime {
    clock: Arc<dyn Clock>,
    /// The offset and the latest engine time handed out.
    state: Mutex<TimeState>,
    /// The latest engine time handed out, as `state` has it (for reads
    /// that need no reading of the clock).
    high_water: AtomicI64,
    /// The offset, as `state` has it.
    offset: AtomicI64,
    /// The latest engine time known to be persisted.
    persisted: AtomicI64,
    /// The largest offset known to be persisted.
    persisted_offset: AtomicI64,
    /// The latest engine time written in a caller's transaction, which may
    /// yet roll back.
    unconfirmed: AtomicI64,
    /// The largest offset written in a caller's transaction, which may yet
    /// roll back.
    unconfirmed_offset: AtomicI64,
}

/// What [`LocalTime`]'s lock guards.
#[derive(Debug)]
struct TimeState {
    /// Added to the clock's readings; never negative, never lowered.
    offset: i64,
    /// The latest engine time handed out; engine time never goes back.
    high_water: i64,
}

impl LocalTime {
    /// Time from `clock` plus an offset of at least `offset`, never behind
    /// `mark`: the mark and offset found in the database.
    pub(crate) fn resume(clock: Arc<dyn Clock>, mark: i64, offset: i64) -> LocalTime {
        let offset = offset.max(0);
        LocalTime {
            clock,
            state: Mutex::new(TimeState {
                offset,
                high_water: mark,
            }),
            high_water: AtomicI64::new(mark),
            offset: AtomicI64::new(offset),
            persisted: AtomicI64::new(mark),
            persisted_offset: AtomicI64::new(offset),
            unconfirmed: AtomicI64::new(mark),
            unconfirmed_offset: AtomicI64::new(offset),
        }
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Engine time now, and whether the instant it stands for lies after
    /// that millisecond began.
    pub(crate) fn reading(&self) -> Now {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let clock = self.clock.now();
        let read = to_ms(clock);
        let fraction = !clock.timestamp_subsec_nanos().is_multiple_of(1_000_000);
        let at = read.saturating_add(st.offset);
        if at < st.high_water {
            // The clock reads behind what was already used: it stepped
            // back (readings are taken in turn under the lock). Time goes
            // on from the mark, at the clock's rate from now on.
            // A grown offset is persisted at once if it grew by more than
            // `STEP_BACK_MS` (see `persist_due`).
            st.offset = st.offset.saturating_add(st.high_water - at);
            self.offset.store(st.offset, Ordering::Release);
            return Now::at(st.high_water);
        }
        st.high_water = at;
        self.high_water.store(at, Ordering::Release);
        Now { ms: at, fraction }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.reading().ms
    }

    /// The latest engine time used.
    pub(crate) fn high_water(&self) -> i64 {
        self.high_water.load(Ordering::Acquire)
    }

    /// The offset added to the clock's readings now.
    pub(crate) fn offset(&self) -> i64 {
        self.offset.load(Ordering::Acquire)
    }

    /// Whether a write transaction at engine time `now` should also persist
    /// the high-water mark and the offset: about once a second, and at once
    /// after a step back. The engine's own transactions go by what is known to be
    /// committed; callers' transactions (`owned` false) also by what other
    /// callers' transactions wrote, so that their commits do not each
    /// write the mark, while a caller's rollback cannot stop the engine's
    /// writes persisting it.
    pub(crate) fn persist_due(&self, now: i64, owned: bool) -> bool {
        let mut last = self.persisted.load(Ordering::Acquire);
        let mut last_offset = self.persisted_offset.load(Ordering::Acquire);
        if !owned {
            last = last.max(self.unconfirmed.load(Ordering::Acquire));
            last_offset = last_offset.max(self.unconfirmed_offset.load(Ordering::Acquire));
        }
        now - last >= HIGH_WATER_PERSIST_MS || self.offset() - last_offset > STEP_BACK_MS
    }

    /// Notes that a caller's transaction wrote the mark `ms` and the offset
    /// `offset` (it may roll back).
    pub(crate) fn written_unconfirmed(&self, ms: i64, offset: i64) {
        self.unconfirmed_offset.fetch_max(offset, Ordering::AcqRel);
        self.unconfirmed.fetch_max(ms, Ordering::AcqRel);
    }

    /// Notes that the mark `ms` and the offset `offset` are persisted
    /// (after the commit that wrote them).
    pub(crate) fn persisted(&self, ms: i64, offset: i64) {
        self.persisted_offset.fetch_max(offset, Ordering::AcqRel);
        self.persisted.fetch_max(ms, Ordering::AcqRel);
    }

    /// Whether the clock was seen stepping back, by more than
    /// [`STEP_BACK_MS`] in all, since the offset was last persisted.
    pub(crate) fn step_back_pending(&self) -> bool {
        self.offset() - self.persisted_offset.load(Ordering::Acquire) > STEP_BACK_MS
    }

    /// The mark and offset to persist on closing, if either is beyond what
    /// is persisted.
    pub(crate) fn unpersisted(&self) -> Option<(i64, i64)> {
        let (now, offset) = (self.high_water(), self.offset());
        (now > self.persisted.load(Ordering::Acquire)
            || offset > self.persisted_offset.load(Ordering::Acquire))
        .then_some((now, offset))
    }
}

impl fmt::Debug for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTime")
            .field("clock", &self.clock)
            .field("high_water", &self.high_water())
            .field("offset", &self.offset())
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
    fn after_a_step_back_time_goes_on_from_the_mark_at_the_clocks_rate() {
        let clock = ManualClock::new(from_ms(10_000));
        let time = LocalTime::resume(Arc::new(clock.clone()), 0, 0);
        assert_eq!(time.now_ms(), 10_000);
        clock.step_back(Duration::from_millis(3_000));
        // Never back: the offset takes up the step.
        assert_eq!(time.now_ms(), 10_000);
        assert_eq!(time.offset(), 3_000);
        assert!(time.step_back_pending(), "persisted at once");
        // Not standing still either: on at the clock's rate.
        clock.advance(Duration::from_millis(500));
        assert_eq!(time.now_ms(), 10_500);
        time.persisted(10_500, 3_000);
        assert!(!time.step_back_pending());
        // A small step back grows the offset as much, persisted with the
        // next regular write of the mark.
        clock.step_back(Duration::from_millis(50));
        assert_eq!(time.now_ms(), 10_500);
        assert_eq!(time.offset(), 3_050);
        assert!(!time.step_back_pending());
        assert!(!time.persist_due(10_500, true));
        assert!(time.persist_due(11_500, true));
        assert_eq!(time.unpersisted(), Some((10_500, 3_050)));
    }

    #[test]
    fn an_engine_resumes_from_the_persisted_mark_and_offset() {
        // A mark an hour ahead of this clock, no offset persisted: time
        // starts at the mark and goes on at the clock's rate; the offset
        // is to be persisted at once.
        let clock = ManualClock::new(from_ms(1_000));
        let time = LocalTime::resume(Arc::new(clock.clone()), 3_601_000, 0);
        assert_eq!(time.now_ms(), 3_601_000);
        assert_eq!(time.offset(), 3_600_000);
        assert!(time.step_back_pending());
        clock.advance(Duration::from_secs(1));
        assert_eq!(time.now_ms(), 3_602_000);
        // With the offset persisted, the time that passed since counts.
        let later = ManualClock::new(from_ms(5_000));
        let time = LocalTime::resume(Arc::new(later), 3_602_000, 3_600_000);
        assert_eq!(time.now_ms(), 3_605_000);
        assert!(!time.step_back_pending());
        assert_eq!(time.unpersisted(), Some((3_605_000, 3_600_000)));
    }

    #[test]
    fn threads_reading_the_clock_in_turn_never_grow_the_offset() {
        let time = Arc::new(LocalTime::resume(Arc::new(SystemClock), 0, 0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let time = Arc::clone(&time);
                std::thread::spawn(move || {
                    let mut last = i64::MIN;
                    for _ in 0..20_000 {
                        let now = time.now_ms();
                        assert!(now >= last, "{now} after {last}");
                        last = now;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(time.offset(), 0, "the system clock did not step back");
    }

    #[test]
    fn millisecond_conversion_saturates() {
        assert_eq!(from_ms(i64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(from_ms(i64::MIN), DateTime::<Utc>::MIN_UTC);
        assert_eq!(to_ms(from_ms(123_456)), 123_456);
    }
}

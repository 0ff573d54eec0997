//! The per-engine background thread: it watches the database for changes
//! made by other connections and processes, and drives every tracker.
//!
//! One thread serves all of an engine's trackers and waiters. Each pass it:
//!
//! 1. polls `PRAGMA data_version` on a connection of its own (every
//!    `watch_interval` while anyone watches, at once when poked) and, if the
//!    database changed, reads the new rows of `leasehold_events` to learn
//!    which keys changed hands; waiters are woken and trackers of those keys
//!    marked for a look;
//! 2. plans the trackers' work under the lock: renewals that are due (and all
//!    others due within a coalescing window, so they share a transaction),
//!    claims, checks, releases on stop;
//! 3. does the I/O without the lock: one read transaction for the checks,
//!    write transactions of up to [`BATCH`] claims each;
//! 4. applies the outcomes under the lock, resolving tickets.
//!
//! The thread holds only a `Weak` reference to the engine, so dropping the
//! last engine handle (and tracker) ends it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::core::error::{Context, Error};
use crate::core::key::Key;
use crate::core::lease::Record;
use crate::core::ticket::{DeferWakes, LeaseTicket};
use crate::engine::{Engine, Inner};
use crate::store::{SqliteStore, Store};

/// The most claims or releases in one write transaction, so that a large
/// round does not hold the write lock for long.
pub(crate) const BATCH: usize = 512;

/// The longest the thread sleeps when nothing is due and nobody watches.
const IDLE: Duration = Duration::from_secs(60);

/// With file-system events, how often the thread still looks at
/// `data_version` while watching, in case an event was missed.
const BACKSTOP: Duration = Duration::from_millis(250);

/// A commit's file-system event comes when its frames reach the WAL, a
/// moment before the WAL index (and so `data_version`) shows the commit;
/// with `synchronous=FULL` an fsync lies between. A nudged look that finds
/// no change therefore looks again after this, then after twice that, and
/// so on up to [`RECHECK_LAST`].
const RECHECK_FIRST: Duration = Duration::from_micros(250);

/// The longest pause between looks again after a nudge.
const RECHECK_LAST: Duration = Duration::from_millis(64);

/// How often, at most, a pass checks that the database file is still the
/// one the engine opened.
const REPLACED_CHECK: Duration = Duration::from_millis(200);

/// Receives errors from background work, which has no caller to return them
/// to (a failed renewal, a failed release on stop). Set with
/// [`EngineBuilder::error_handler`](crate::EngineBuilder::error_handler).
pub trait HandleError: Send + Sync + 'static {
    /// Called once per error, on the engine's background thread. Keep it
    /// quick.
    fn handle_error(&self, error: &Error);
}

/// The default [`HandleError`]: logs each error at `warn` level through the
/// `log` crate.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogErrors;

impl HandleError for LogErrors {
    fn handle_error(&self, error: &Error) {
        log::warn!("leasehold: {error}");
    }
}

/// Counters of an engine's background work, from
/// [`Engine::background_stats`](crate::Engine::background_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackgroundStats {
    /// Passes of the background thread.
    pub passes: u64,
    /// Write transactions it ran (each renews, claims or releases up to 512
    /// leases).
    pub write_transactions: u64,
    /// Claims (renewals included) it attempted.
    pub claims: u64,
    /// Releases it made for stopped trackers.
    pub releases: u64,
}

pub(crate) struct Driver {
    state: Mutex<State>,
    /// Whether the thread was ever started (read without the lock).
    started: std::sync::atomic::AtomicBool,
    /// The driver thread sleeps here.
    wake: Condvar,
    /// Threads blocked in a wait (and `shutdown`) sleep here.
    changed: Condvar,
    /// Threads in `settle` sleep here.
    passed: Condvar,
    watch_interval: Duration,
    file_events: bool,
    errors: Box<dyn HandleError>,
}

#[derive(Default)]
struct State {
    thread: Option<ThreadId>,
    /// The engine is shutting down: stop every tracker, then exit.
    stopping: bool,
    exited: bool,
    /// Something in this process committed or moved the clock: look now.
    poked: bool,
    /// The database files were written (by any process): look soon.
    nudged: bool,
    /// After a nudge that found no change: when to look again, and the
    /// pause that led there.
    recheck: Option<(std::time::Instant, Duration)>,
    /// Whether file-system events nudge this driver (else it polls).
    fs_events: bool,
    /// When the latest pass ended.
    last_pass: Option<std::time::Instant>,
    /// Bumped whenever a key may have become vacant; waiters re-read.
    generation: u64,
    waiters: usize,
    trackers: HashMap<u64, Track>,
    by_key: HashMap<Key, Vec<u64>>,
    timers: BinaryHeap<Reverse<(i64, u64)>>,
    /// Trackers to look at in the next pass whatever their timers say.
    attention: HashSet<u64>,
    next_id: u64,
    in_pass: bool,
    stats: BackgroundStats,
    /// The number of the latest pass that found nothing to do.
    idle_pass: u64,
    /// Threads blocked in `settle`.
    settlers: usize,
    /// The database file was deleted or replaced (reported once).
    file_lost: bool,
    /// Engine handles kept alive by stop requests, dropped outside the lock
    /// (dropping the last one stops the driver, which takes the lock).
    graveyard: Vec<Engine>,
}

/// A tracker's state, owned by the driver.
pub(crate) struct Track {
    key: Key,
    holder: String,
    guarantee_ms: i64,
    margin_ms: i64,
    release_on_stop: bool,
    /// Whether to claim again after losing leadership (else it stays a
    /// minion for good).
    reclaim: bool,
    /// Whether it has ever led.
    has_led: bool,
    role: Role,
    claim_tickets: Vec<LeaseTicket>,
    leader_tickets: Vec<LeaseTicket>,
    minion_tickets: Vec<LeaseTicket>,
    stop: Option<StopRequest>,
    /// Another connection changed the key: verify or inspect it.
    dirty: bool,
    /// After an error: no new attempt before this instant.
    retry_at: i64,
    backoff_ms: i64,
    last_error: Option<String>,
}

struct StopRequest {
    done: LeaseTicket,
    /// Keeps the engine alive until the stop (and its release) is done.
    keepalive: Option<Engine>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Must claim as soon as possible (a new tracker, or a vacancy seen).
    Claiming,
    /// Holds the lease in tenure `epoch`, guaranteed until `until`.
    Leader {
        epoch: u64,
        until: i64,
        renew_at: i64,
        minion_at: i64,
    },
    /// Someone else holds it; look again at `recheck_at` (its expiry) or
    /// when the key changes.
    Minion { recheck_at: Option<i64> },
}

/// What a tracker is configured with.
pub(crate) struct TrackSpec {
    pub key: Key,
    pub holder: String,
    pub guarantee_ms: i64,
    pub margin_ms: i64,
    pub release_on_stop: bool,
    pub reclaim: bool,
}

/// A snapshot of a tracker, for its handle.
pub(crate) struct TrackStatus {
    pub leader_epoch: Option<u64>,
    /// While leading: until when (engine ms) the lease is guaranteed.
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Clone, Copy)]
enum Question {
    Claim,
    Leader,
    Minion,
}

/// One planned claim: (tracker, key, holder, duration, the tenure to extend
/// if leading).
type ClaimItem = (u64, Key, String, i64, Option<u64>);

/// Claims (or, for leaders, renews) `items` in one write transaction bounded
/// by `budget`.
fn claim_batch(
    engine: &Engine,
    items: &[&ClaimItem],
    started: i64,
    budget: Duration,
) -> Result<Vec<(u64, i64, Outcome)>, Error> {
    let only = match items {
        [(_, key, holder, ..)] => Some((key, holder.as_str())),
        _ => None,
    };
    engine.write_within(
        budget,
        || batch_context("renew", only),
        |tx| {
            let mut done = Vec::with_capacity(items.len());
            for (id, key, holder, duration_ms, epoch) in items.iter().copied() {
                let d = Duration::from_millis(*duration_ms as u64);
                let outcome = match *epoch {
                    // A leader renews its own tenure in one statement.
                    Some(epoch) => match tx.extend_epoch(key, holder, epoch, d) {
                        Ok(_) => Outcome::Won(epoch),
                        Err(Error::NotHeld { .. }) => Outcome::Lost,
                        Err(e) => return Err(e),
                    },
                    None => match tx.claim(key, holder, d) {
                        Ok(t) => Outcome::Won(t.epoch()),
                        Err(Error::ClaimDenied { .. }) => Outcome::Denied,
                        Err(e) => return Err(e),
                    },
                };
                done.push((*id, started, outcome));
            }
            Ok(done)
        },
    )
}

/// The context of a batch's own transaction (beginning, committing): the
/// key and holder when the batch holds only one, as it usually does.
fn batch_context(operation: &'static str, only: Option<(&Key, &str)>) -> Context {
    match only {
        Some((key, holder)) => Context::new(operation).key(key).holder(holder),
        None => Context::new(operation),
    }
}

/// The outcome of one planned write.
enum Outcome {
    Won(u64),
    Denied,
    /// A renewal found its tenure gone.
    Lost,
    Released,
    Failed(String),
}

/// Work planned for one pass.
#[derive(Default)]
struct Plan {
    /// Leaders whose key changed: are they still the holder?
    verify: Vec<(u64, Key, String, u64)>,
    /// Minions: is the key vacant?
    inspect: Vec<(u64, Key)>,
    /// (tracker, key, holder, duration, the tenure to extend if leading).
    claims: Vec<ClaimItem>,
    releases: Vec<(u64, Key, String)>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.verify.is_empty()
            && self.inspect.is_empty()
            && self.claims.is_empty()
            && self.releases.is_empty()
    }
}

impl Driver {
    pub fn new(
        watch_interval: Duration,
        file_events: bool,
        errors: Box<dyn HandleError>,
    ) -> Driver {
        Driver {
            state: Mutex::new(State::default()),
            started: std::sync::atomic::AtomicBool::new(false),
            wake: Condvar::new(),
            changed: Condvar::new(),
            passed: Condvar::new(),
            watch_interval,
            file_events,
            errors,
        }
    }

    /// Locks the state. Tickets resolved meanwhile wake their wakers once
    /// it is unlocked (see [`DeferWakes`]).
    fn lock(&self) -> Locked<'_> {
        let wakes = DeferWakes::begin();
        Locked {
            guard: self.raw_lock(),
            _wakes: wakes,
        }
    }

    /// Locks the state for a condition-variable wait (nothing resolved).
    fn raw_lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the thread if it is not running.
    fn ensure_thread(self: &Arc<Driver>, st: &mut State, engine: &Engine) {
        if st.thread.is_some() || st.exited {
            return;
        }
        let driver = Arc::clone(self);
        let weak = Arc::downgrade(&engine.inner);
        st.fs_events = self.file_events
            && crate::sqlite::fswatch::subscribe(&engine.watch_path(), Arc::downgrade(self));
        // Like std::thread::spawn, fail loudly if the OS cannot give us a
        // thread: nothing would renew the trackers' leases.
        let handle = std::thread::Builder::new()
            .name("leasehold-driver".into())
            .spawn(move || driver.run(weak))
            .expect("failed to spawn the leasehold-driver thread");
        st.thread = Some(handle.thread().id());
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Something in this process committed, or the clock moved: wake
    /// waiters and have the thread look at once. Free when nothing in this
    /// process waits or tracks (the thread was never started).
    pub fn poke(&self) {
        if !self.started.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        st.poked = true;
        st.generation += 1;
        drop(st);
        self.wake.notify_one();
        self.changed.notify_all();
    }

    /// The database files were written, perhaps by another process: have
    /// the thread look, at most once per watch interval.
    pub fn nudge(&self) {
        let mut st = self.lock();
        if !st.nudged {
            st.nudged = true;
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Stops every tracker (releasing leases as configured), wakes every
    /// waiter, and ends the thread. With `wait`, blocks until the thread has
    /// finished (unless called on it).
    pub fn shutdown(&self, wait: bool) {
        let mut st = self.raw_lock();
        st.stopping = true;
        st.generation += 1;
        self.wake.notify_one();
        self.changed.notify_all();
        let on_driver = st.thread == Some(std::thread::current().id());
        if wait && !on_driver {
            while st.thread.is_some() && !st.exited {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Whether the engine is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    // Waiters.

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Registers a blocked waiter, so that the thread watches for changes by
    /// other processes while it waits.
    pub fn add_waiter(self: &Arc<Driver>, engine: &Engine) {
        let mut st = self.lock();
        st.waiters += 1;
        self.ensure_thread(&mut st, engine);
        drop(st);
        self.wake.notify_one();
    }

    pub fn remove_waiter(&self) {
        self.lock().waiters -= 1;
    }

    /// Sleeps until the generation moves past `seen`, the engine stops, or
    /// `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: Duration) {
        let st = self.raw_lock();
        let _unused = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.generation == seen && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
    }

    // Trackers.

    pub fn add_tracker(self: &Arc<Driver>, engine: &Engine, spec: TrackSpec) -> Option<u64> {
        let mut st = self.lock();
        if st.stopping {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.by_key.entry(spec.key.clone()).or_default().push(id);
        st.trackers.insert(
            id,
            Track {
                key: spec.key,
                holder: spec.holder,
                guarantee_ms: spec.guarantee_ms,
                margin_ms: spec.margin_ms,
                release_on_stop: spec.release_on_stop,
                reclaim: spec.reclaim,
                has_led: false,
                role: Role::Claiming,
                claim_tickets: Vec::new(),
                leader_tickets: Vec::new(),
                minion_tickets: Vec::new(),
                stop: None,
                dirty: false,
                retry_at: i64::MIN,
                backoff_ms: 0,
                last_error: None,
            },
        );
        st.attention.insert(id);
        self.ensure_thread(&mut st, engine);
        drop(st);
        self.wake.notify_one();
        Some(id)
    }

    fn ticket(&self, id: u64, now: i64, question: Question) -> LeaseTicket {
        let mut st = self.lock();
        let Some(track) = st.trackers.get_mut(&id).filter(|t| t.stop.is_none()) else {
            return LeaseTicket::resolved(false);
        };
        let leading = track.is_leading(now);
        match question {
            Question::Leader if leading => LeaseTicket::resolved(true),
            // Time alone says it can no longer lead, whatever the thread
            // has had time to do.
            Question::Minion if !leading => LeaseTicket::resolved(true),
            Question::Claim if matches!(track.role, Role::Minion { .. }) => {
                LeaseTicket::resolved(false)
            }
            Question::Claim if track.guaranteed_for(now) >= track.guarantee_ms => {
                LeaseTicket::resolved(true)
            }
            _ => {
                let ticket = LeaseTicket::pending();
                let list = match question {
                    Question::Claim => &mut track.claim_tickets,
                    Question::Leader => &mut track.leader_tickets,
                    Question::Minion => &mut track.minion_tickets,
                };
                // Forget tickets nobody holds any more.
                list.retain(LeaseTicket::is_held_elsewhere);
                list.push(ticket.clone());
                if matches!(question, Question::Claim) {
                    st.attention.insert(id);
                    drop(st);
                    self.wake.notify_one();
                }
                ticket
            }
        }
    }

    pub fn claim_ticket(&self, id: u64, now: i64) -> LeaseTicket {
        self.ticket(id, now, Question::Claim)
    }

    pub fn leader_ticket(&self, id: u64, now: i64) -> LeaseTicket {
        self.ticket(id, now, Question::Leader)
    }

    pub fn minion_ticket(&self, id: u64, now: i64) -> LeaseTicket {
        self.ticket(id, now, Question::Minion)
    }

    /// The current tenure's epoch and a ticket that fires when it is lost,
    /// taken atomically; `None` unless leading.
    pub fn leading(&self, id: u64, now: i64) -> Option<(u64, LeaseTicket)> {
        let mut st = self.lock();
        let track = st.trackers.get_mut(&id).filter(|t| t.stop.is_none())?;
        match track.role {
            Role::Leader { epoch, .. } if track.is_leading(now) => {
                let lost = LeaseTicket::pending();
                track.minion_tickets.retain(LeaseTicket::is_held_elsewhere);
                track.minion_tickets.push(lost.clone());
                Some((epoch, lost))
            }
            _ => None,
        }
    }

    pub fn status(&self, id: u64, now: i64) -> TrackStatus {
        let st = self.lock();
        match st.trackers.get(&id) {
            Some(track) => TrackStatus {
                leader_epoch: match track.role {
                    Role::Leader { epoch, .. } if track.is_leading(now) => Some(epoch),
                    _ => None,
                },
                lease_until: match track.role {
                    Role::Leader { until, .. } if track.is_leading(now) => Some(until),
                    _ => None,
                },
                last_error: track.last_error.clone(),
            },
            None => TrackStatus {
                leader_epoch: None,
                lease_until: None,
                last_error: None,
            },
        }
    }

    /// Asks the thread to stop tracker `id`; the returned ticket resolves
    /// once it has (after releasing the lease, if configured).
    pub fn stop_tracker(&self, id: u64, keepalive: Option<Engine>) -> LeaseTicket {
        let mut st = self.lock();
        let running = st.thread.is_some() && !st.exited;
        let Some(track) = st.trackers.get_mut(&id) else {
            return LeaseTicket::resolved(true);
        };
        if let Some(stop) = &track.stop {
            return stop.done.clone();
        }
        let done = LeaseTicket::pending();
        if !running {
            st.finish_stop(id);
            done.resolve(true);
            return done;
        }
        track.stop = Some(StopRequest {
            done: done.clone(),
            keepalive,
        });
        st.attention.insert(id);
        drop(st);
        self.wake.notify_one();
        done
    }

    // The thread.

    fn run(self: Arc<Driver>, weak: Weak<Inner>) {
        /// Ends the thread's work however the thread ends (a panic
        /// included), so that stops and shutdowns waiting for it return.
        struct Exit<'a>(&'a Driver);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                let driver = self.0;
                let mut st = driver.lock();
                for id in st.trackers.keys().copied().collect::<Vec<_>>() {
                    st.finish_stop(id);
                }
                st.exited = true;
                let graveyard = mem::take(&mut st.graveyard);
                drop(st);
                driver.changed.notify_all();
                driver.passed.notify_all();
                drop(graveyard);
            }
        }
        let _exit = Exit(&self);
        let mut watch = Watch::default();
        loop {
            let Some(inner) = weak.upgrade() else { break };
            let engine = Engine { inner };
            let exit = self.pass(&engine, &mut watch);
            drop(engine);
            let graveyard = mem::take(&mut self.lock().graveyard);
            drop(graveyard);
            if exit {
                break;
            }
            self.sleep(&weak);
        }
    }

    /// Hands an error of background work to the error handler; a handler
    /// that panics is logged, and the thread goes on.
    fn report(&self, e: &Error) {
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.errors.handle_error(e);
        }));
        if handled.is_err() {
            log::error!("leasehold: the error handler panicked on: {e}");
        }
    }

    /// Sleeps until the next timer, the next watch poll, or a poke.
    fn sleep(&self, weak: &Weak<Inner>) {
        let Some(inner) = weak.upgrade() else { return };
        let now = Engine { inner }.now_ms();
        let st = self.raw_lock();
        if st.poked || st.stopping || !st.attention.is_empty() {
            return;
        }
        let watching = st.waiters > 0 || !st.trackers.is_empty();
        let mut timeout = match (watching, st.fs_events) {
            (false, _) => IDLE,
            (true, true) => BACKSTOP,
            (true, false) => self.watch_interval,
        };
        if st.nudged {
            // Look at most once per watch interval, however fast others
            // commit.
            let since = st.last_pass.map_or(self.watch_interval, |t| t.elapsed());
            timeout = timeout.min(self.watch_interval.saturating_sub(since));
        }
        if let Some(Reverse((at, _))) = st.timers.peek() {
            let until = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
            timeout = timeout.min(until);
        }
        if let Some((at, _)) = st.recheck {
            timeout = timeout.min(at.saturating_duration_since(std::time::Instant::now()));
        }
        if timeout.is_zero() {
            return;
        }
        let _unused = self
            .wake
            .wait_timeout(st, timeout)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// One pass; returns whether the thread should exit.
    fn pass(&self, engine: &Engine, watch: &mut Watch) -> bool {
        let (watching, stopping, nudged, recheck) = {
            let mut st = self.lock();
            st.poked = false;
            st.in_pass = true;
            let recheck = st
                .recheck
                .filter(|(at, _)| *at <= std::time::Instant::now())
                .map(|(_, pause)| pause);
            (
                st.waiters > 0 || !st.trackers.is_empty(),
                st.stopping,
                mem::take(&mut st.nudged),
                recheck,
            )
        };
        if watching {
            let found = match watch.changes(engine) {
                Ok(Changes::None) => false,
                Ok(changes) => {
                    self.mark_changed(&changes);
                    true
                }
                Err(e) => {
                    self.report(&e);
                    false
                }
            };
            let mut st = self.lock();
            if found {
                st.recheck = None;
            } else if nudged || recheck.is_some() {
                let pause = recheck.map_or(RECHECK_FIRST, |p| p * 2);
                st.recheck =
                    (pause <= RECHECK_LAST).then(|| (std::time::Instant::now() + pause, pause));
            }
        } else {
            self.lock().recheck = None;
        }
        if engine.file_replaced(REPLACED_CHECK) {
            self.file_lost(engine);
        } else {
            engine.persist_after_step_back();
        }
        let now = engine.now_ms();
        let mut plan = self.plan(now);
        let worked = !plan.is_empty();
        if worked {
            self.inspect(engine, &mut plan);
            let outcomes = self.execute(engine, &plan);
            self.apply(engine, outcomes);
        }
        let mut st = self.lock();
        st.in_pass = false;
        st.last_pass = Some(std::time::Instant::now());
        st.stats.passes += 1;
        if !worked && st.attention.is_empty() && !st.poked {
            st.idle_pass = st.stats.passes;
        }
        let exit = stopping && st.trackers.is_empty();
        let settlers = st.settlers > 0;
        drop(st);
        if settlers {
            self.passed.notify_all();
        }
        exit
    }

    /// Blocks until the thread has completed a pass that began after this
    /// call and found nothing to do.
    pub fn settle(&self) {
        let mut st = self.raw_lock();
        if st.thread.is_none() || st.exited {
            return;
        }
        let target = st.stats.passes + 1 + u64::from(st.in_pass);
        st.poked = true;
        st.settlers += 1;
        self.wake.notify_one();
        while st.idle_pass < target && !st.exited {
            st = self.passed.wait(st).unwrap_or_else(|e| e.into_inner());
            if st.idle_pass < target && !st.poked && !st.in_pass {
                // A busy pass ended; ask for another.
                st.poked = true;
                self.wake.notify_one();
            }
        }
        st.settlers -= 1;
    }

    pub fn stats(&self) -> BackgroundStats {
        self.lock().stats
    }

    /// The database file was deleted or replaced: every tracker counts its
    /// tenure as lost and stays a minion (nothing it could claim would be
    /// seen by anyone), and waiters wake to fail. Reported once.
    fn file_lost(&self, engine: &Engine) {
        let mut st = self.lock();
        if !st.file_lost {
            st.file_lost = true;
            let e = Error::DatabaseReplaced {
                path: engine.path().to_path_buf(),
            };
            drop(st);
            self.report(&e);
            st = self.lock();
        }
        st.generation += 1;
        let state = &mut *st;
        for track in state.trackers.values_mut() {
            track.become_minion(None);
            track.role = Role::Minion { recheck_at: None };
            track.dirty = false;
            track.last_error = Some("the database file was deleted or replaced".into());
        }
        state.attention.retain(|id| {
            state
                .trackers
                .get(id)
                .is_some_and(|t| t.stop.is_some() || state.stopping)
        });
        drop(st);
        self.changed.notify_all();
    }

    fn mark_changed(&self, changes: &Changes) {
        let mut st = self.lock();
        st.generation += 1;
        let ids: Vec<u64> = match changes {
            Changes::None => Vec::new(),
            Changes::Keys(keys) => keys
                .iter()
                .filter_map(|k| st.by_key.get(k))
                .flatten()
                .copied()
                .collect(),
            Changes::All => st.trackers.keys().copied().collect(),
        };
        for id in ids {
            if let Some(track) = st.trackers.get_mut(&id) {
                track.dirty = true;
                st.attention.insert(id);
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Decides what each tracker needing attention must do now.
    fn plan(&self, now: i64) -> Plan {
        let mut st = self.lock();
        let st = &mut *st;
        let mut due: HashSet<u64> = mem::take(&mut st.attention);
        while let Some(&Reverse((at, id))) = st.timers.peek() {
            if at > now {
                break;
            }
            st.timers.pop();
            due.insert(id);
        }
        if st.stopping {
            due.extend(st.trackers.keys().copied());
        }
        let mut plan = Plan::default();
        let mut renewing = false;
        for id in due {
            let stopping = st.stopping;
            let Some(track) = st.trackers.get_mut(&id) else {
                continue;
            };
            if track.stop.is_some() || stopping {
                if track.is_leading(now) && track.release_on_stop {
                    plan.releases
                        .push((id, track.key.clone(), track.holder.clone()));
                } else {
                    st.finish_stop(id);
                }
                continue;
            }
            if let Role::Leader { minion_at, .. } = track.role
                && now >= minion_at
            {
                // The guarantee can no longer be kept: step down while
                // the lease is still formally held.
                track.become_minion(None);
                track.dirty = true;
            }
            if now < track.retry_at {
                st.schedule_next(id);
                continue;
            }
            let dirty = mem::take(&mut track.dirty);
            match track.role {
                Role::Leader {
                    epoch, renew_at, ..
                } => {
                    track.answer_claims(now);
                    if dirty {
                        plan.verify
                            .push((id, track.key.clone(), track.holder.clone(), epoch));
                    }
                    if now >= renew_at || !track.claim_tickets.is_empty() {
                        renewing = true;
                    }
                }
                Role::Minion { recheck_at } => {
                    if dirty || recheck_at.is_some_and(|at| now >= at) {
                        plan.inspect.push((id, track.key.clone()));
                    }
                }
                Role::Claiming => {
                    plan.claims.push((
                        id,
                        track.key.clone(),
                        track.holder.clone(),
                        2 * track.guarantee_ms,
                        None,
                    ));
                }
            }
            st.schedule_next(id);
        }
        if renewing {
            // Renew every leader due within a coalescing window of an eighth
            // of its guarantee, so that renewals falling due together share
            // transactions.
            for (&id, track) in &st.trackers {
                if let Role::Leader {
                    renew_at, epoch, ..
                } = track.role
                {
                    let window = track.guarantee_ms / 8;
                    let asked = !track.claim_tickets.is_empty();
                    if track.stop.is_none()
                        && (asked || now >= renew_at - window)
                        && now >= track.retry_at
                    {
                        plan.claims.push((
                            id,
                            track.key.clone(),
                            track.holder.clone(),
                            2 * track.guarantee_ms,
                            Some(epoch),
                        ));
                    }
                }
            }
        }
        plan
    }

    /// How long the next piece of I/O may wait for the database: never past
    /// the earliest moment a leader must step down (so that it steps down
    /// on time even when the database is slow), nor past the busy timeout.
    fn io_budget(&self, engine: &Engine, now: i64) -> Duration {
        let st = self.lock();
        let earliest = st
            .trackers
            .values()
            .filter_map(|t| match t.role {
                Role::Leader { minion_at, .. } if t.stop.is_none() => Some(minion_at),
                _ => None,
            })
            .min();
        let budget = engine.busy_timeout();
        match earliest {
            Some(at) => budget.min(Duration::from_millis((at - now).max(1) as u64)),
            None => budget,
        }
    }

    /// Steps down every leader whose guarantee can no longer be kept.
    fn step_down_overdue(&self, now: i64) {
        let mut st = self.lock();
        let st = &mut *st;
        for (&id, track) in st.trackers.iter_mut() {
            if let Role::Leader { minion_at, .. } = track.role
                && now >= minion_at
            {
                track.become_minion(None);
                track.dirty = true;
                st.attention.insert(id);
            }
        }
    }

    /// Reads the keys of trackers that need a look; vacancies become claims.
    fn inspect(&self, engine: &Engine, plan: &mut Plan) {
        if plan.verify.is_empty() && plan.inspect.is_empty() {
            return;
        }
        let now = engine.now_ms();
        let budget = self.io_budget(engine, now);
        let result = engine.read_within(
            budget,
            || Context::new("watch"),
            |tx| {
                let now = engine.now_ms();
                let store = SqliteStore::new(tx.connection());
                let load = |key: &Key| {
                    store.load(key).map_err(|e| {
                        crate::sqlite::error::fail(
                            Context::new("watch").key(key),
                            e,
                            engine.busy_timeout(),
                        )
                    })
                };
                let mut lost = Vec::new();
                for (id, key, holder, epoch) in &plan.verify {
                    let still = load(key)?.is_some_and(|r| r.is_held_by(holder, Some(*epoch), now));
                    if !still {
                        lost.push(*id);
                    }
                }
                let mut looks = Vec::new();
                for (id, key) in &plan.inspect {
                    looks.push((*id, load(key)?.map(|r| held_until(&r, now))));
                }
                Ok((lost, looks))
            },
        );
        let (lost, looks) = match result {
            Ok(found) => found,
            Err(e) => {
                self.report(&e);
                // Look again after a pause.
                let mut st = self.lock();
                for (id, ..) in plan
                    .verify
                    .iter()
                    .map(|v| (v.0, ()))
                    .chain(plan.inspect.iter().map(|i| (i.0, ())))
                {
                    if let Some(t) = st.trackers.get_mut(&id) {
                        t.dirty = true;
                    }
                    st.timers.push(Reverse((engine.now_ms() + 10, id)));
                }
                plan.verify.clear();
                plan.inspect.clear();
                return;
            }
        };
        let mut st = self.lock();
        for id in lost {
            if let Some(track) = st.trackers.get_mut(&id) {
                track.become_minion(None);
                // Look at the key's new state in the next pass.
                track.dirty = true;
                st.attention.insert(id);
            }
        }
        for (id, held) in looks {
            let Some(track) = st.trackers.get_mut(&id) else {
                continue;
            };
            if track.stop.is_some() || !matches!(track.role, Role::Minion { .. }) {
                continue;
            }
            if track.has_led && !track.reclaim {
                // Retired: it led once and must not lead again.
                track.role = Role::Minion { recheck_at: None };
                continue;
            }
            match held.unwrap_or(Hold::Vacant) {
                Hold::Vacant => plan.claims.push((
                    id,
                    track.key.clone(),
                    track.holder.clone(),
                    2 * track.guarantee_ms,
                    None,
                )),
                Hold::Until(at) => {
                    track.role = Role::Minion {
                        recheck_at: Some(at),
                    };
                    st.schedule_next(id);
                }
                Hold::Pinned => {
                    track.role = Role::Minion { recheck_at: None };
                }
            }
        }
        plan.verify.clear();
        plan.inspect.clear();
    }

    /// Runs the planned claims and releases in batches.
    fn execute(&self, engine: &Engine, plan: &Plan) -> Vec<(u64, i64, Outcome)> {
        let mut outcomes = Vec::with_capacity(plan.claims.len() + plan.releases.len());
        let mut seen = HashSet::new();
        let claims: Vec<_> = plan.claims.iter().filter(|c| seen.insert(c.0)).collect();
        for chunk in claims.chunks(BATCH) {
            let started = engine.now_ms();
            let budget = self.io_budget(engine, started);
            let result = claim_batch(engine, chunk, started, budget);
            {
                let mut st = self.lock();
                st.stats.write_transactions += 1;
                st.stats.claims += chunk.len() as u64;
            }
            match result {
                Ok(done) => outcomes.extend(done),
                Err(e) if chunk.len() > 1 && !e.is_transient() => {
                    // One key's failure must not fail the rest: take them
                    // one by one.
                    for item in chunk {
                        let started = engine.now_ms();
                        let budget = self.io_budget(engine, started);
                        match claim_batch(engine, std::slice::from_ref(item), started, budget) {
                            Ok(done) => outcomes.extend(done),
                            Err(e) => {
                                self.report(&e);
                                outcomes.push((item.0, started, Outcome::Failed(e.to_string())));
                            }
                        }
                    }
                }
                Err(e) => {
                    self.report(&e);
                    let why = e.to_string();
                    outcomes.extend(
                        chunk
                            .iter()
                            .map(|c| (c.0, started, Outcome::Failed(why.clone()))),
                    );
                }
            }
            // Leaders whose guarantee ran out while this chunk waited step
            // down now, not after the whole round.
            self.step_down_overdue(engine.now_ms());
        }
        for chunk in plan.releases.chunks(BATCH) {
            let started = engine.now_ms();
            // Up to the busy timeout in all, but in steps that end when a
            // leader must step down, so that it does so on time.
            let give_up = std::time::Instant::now() + engine.busy_timeout();
            let result = loop {
                let left = give_up.saturating_duration_since(std::time::Instant::now());
                let budget = self.io_budget(engine, engine.now_ms()).min(left);
                let only = match chunk {
                    [(_, key, holder)] => Some((key, holder.as_str())),
                    _ => None,
                };
                let result = engine.write_within(
                    budget,
                    || batch_context("release on stop", only),
                    |tx| {
                        for (_, key, holder) in chunk {
                            match tx.release(key, holder) {
                                Ok(()) | Err(Error::NotHeld { .. }) => {}
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(())
                    },
                );
                self.step_down_overdue(engine.now_ms());
                match result {
                    Err(e) if e.is_transient() && std::time::Instant::now() < give_up => {}
                    result => break result,
                }
            };
            if let Err(e) = result {
                self.report(&e);
            }
            {
                let mut st = self.lock();
                st.stats.write_transactions += 1;
                st.stats.releases += chunk.len() as u64;
            }
            outcomes.extend(chunk.iter().map(|r| (r.0, started, Outcome::Released)));
        }
        outcomes
    }

    fn apply(&self, engine: &Engine, outcomes: Vec<(u64, i64, Outcome)>) {
        let now = engine.now_ms();
        let mut st = self.lock();
        for (id, started, outcome) in outcomes {
            let Some(track) = st.trackers.get_mut(&id) else {
                continue;
            };
            match outcome {
                Outcome::Released => {
                    st.finish_stop(id);
                    continue;
                }
                Outcome::Won(_)
                    if track.has_led
                        && !track.reclaim
                        && !matches!(track.role, Role::Leader { .. }) =>
                {
                    // Lost in the meantime: a retired tracker does not take a
                    // new tenure (a renewal of its own tenure keeps Role::Leader).
                    track.role = Role::Minion { recheck_at: None };
                }
                Outcome::Won(epoch) => {
                    track.has_led = true;
                    let until = started + 2 * track.guarantee_ms;
                    let was = track.role;
                    track.role = Role::Leader {
                        epoch,
                        until,
                        renew_at: started + track.guarantee_ms,
                        minion_at: until - track.margin_ms,
                    };
                    track.backoff_ms = 0;
                    track.retry_at = i64::MIN;
                    let new_tenure = !matches!(was, Role::Leader { epoch: e, .. } if e == epoch);
                    if matches!(was, Role::Leader { .. }) && new_tenure {
                        // The tenure we thought we had ended unseen (revoked,
                        // or lapsed while paused); this is a new one.
                        for t in track.minion_tickets.drain(..) {
                            t.resolve(true);
                        }
                    }
                    // Also on a renewal: a ticket asked just past the old
                    // `minion_at`, before the renewal was applied, waits for
                    // leadership the tracker now has.
                    if new_tenure || track.is_leading(now) {
                        for t in track.leader_tickets.drain(..) {
                            t.resolve(true);
                        }
                    }
                    track.answer_claims(now);
                }
                Outcome::Denied => {
                    let was_minion = matches!(track.role, Role::Minion { .. });
                    if !was_minion {
                        track.become_minion(None);
                    }
                    for t in track.claim_tickets.drain(..) {
                        t.resolve(false);
                    }
                    // Learn the new holder's expiry on the next pass.
                    track.role = Role::Minion {
                        recheck_at: Some(now),
                    };
                }
                Outcome::Lost => {
                    // Its own tenure was gone when it came to renew: a
                    // leader never claims afresh from a renewal.
                    track.become_minion(None);
                    track.dirty = true;
                }
                Outcome::Failed(why) => {
                    if !matches!(track.role, Role::Leader { .. }) {
                        // Look again (and perhaps claim) after the backoff.
                        track.dirty = true;
                    }
                    track.last_error = Some(why);
                    track.backoff_ms =
                        (track.backoff_ms * 2).clamp(10, (track.guarantee_ms / 4).max(10));
                    track.retry_at = now + track.backoff_ms;
                    for t in track.claim_tickets.drain(..) {
                        t.resolve(false);
                    }
                }
            }
            st.schedule_next(id);
        }
    }
}

impl State {
    fn finish_stop(&mut self, id: u64) {
        let Some(mut track) = self.trackers.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_key.get_mut(&track.key) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_key.remove(&track.key);
            }
        }
        for t in track
            .claim_tickets
            .drain(..)
            .chain(track.leader_tickets.drain(..))
            .chain(track.minion_tickets.drain(..))
        {
            t.resolve(false);
        }
        if let Some(stop) = track.stop.take() {
            stop.done.resolve(true);
            self.graveyard.extend(stop.keepalive);
        }
    }

    /// Queues the tracker's next deadline.
    fn schedule_next(&mut self, id: u64) {
        let Some(track) = self.trackers.get(&id) else {
            return;
        };
        let next = match track.role {
            Role::Claiming => Some(track.retry_at.max(i64::MIN + 1)),
            Role::Leader {
                renew_at,
                minion_at,
                ..
            } => Some(renew_at.max(track.retry_at).min(minion_at)),
            Role::Minion { recheck_at } => match (recheck_at, track.dirty) {
                (Some(at), _) => Some(at.max(track.retry_at)),
                // It must look at the key again, after any backoff.
                (None, true) => Some(track.retry_at.max(i64::MIN + 1)),
                (None, false) => None,
            },
        };
        if let Some(at) = next {
            self.timers.push(Reverse((at, id)));
        }
    }
}

impl Track {
    /// Leading and still able to honour the guarantee at `now`.
    fn is_leading(&self, now: i64) -> bool {
        matches!(self.role, Role::Leader { minion_at, .. } if now < minion_at)
    }

    /// How long leadership is still guaranteed from `now`.
    fn guaranteed_for(&self, now: i64) -> i64 {
        match self.role {
            Role::Leader {
                until, minion_at, ..
            } if now < minion_at => until - now,
            _ => 0,
        }
    }

    /// Answers pending claim tickets that the current tenure satisfies.
    fn answer_claims(&mut self, now: i64) {
        if self.guaranteed_for(now) >= self.guarantee_ms {
            for t in self.claim_tickets.drain(..) {
                t.resolve(true);
            }
        }
    }

    fn become_minion(&mut self, recheck_at: Option<i64>) {
        let was_minion = matches!(self.role, Role::Minion { .. });
        self.role = Role::Minion { recheck_at };
        if !was_minion {
            for t in self.minion_tickets.drain(..) {
                t.resolve(true);
            }
            for t in self.claim_tickets.drain(..) {
                t.resolve(false);
            }
        }
    }
}

/// How long a key stays held, as seen by a minion.
enum Hold {
    Vacant,
    Until(i64),
    Pinned,
}

fn held_until(rec: &Record, now: i64) -> Hold {
    let t = rec.time(now);
    match rec.holder_at(t) {
        None => Hold::Vacant,
        Some(_) if rec.pinned_until_ms == crate::core::lease::FOREVER_MS => Hold::Pinned,
        Some(_) => Hold::Until(rec.expiry_ms.max(rec.pinned_until_ms)),
    }
}

/// The driver's state, locked; see [`Driver::lock`]. The guard is dropped
/// (unlocking) before the wakers run.
struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    _wakes: DeferWakes,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

/// What changed in the database since the last look.
enum Changes {
    None,
    Keys(HashSet<Key>),
    /// Too much to tell (the history was trimmed in between): assume every
    /// key changed.
    All,
}

/// The thread's own connection, for `PRAGMA data_version` and the event log.
#[derive(Default)]
struct Watch {
    conn: Option<Connection>,
    data_version: Option<i64>,
    /// The newest event read, as read; `Some(None)` when the log was empty.
    last_event: Option<Option<Seen>>,
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

impl Watch {
    fn changes(&mut self, engine: &Engine) -> Result<Changes, Error> {
        let fail = |e| crate::sqlite::error::fail(Context::new("watch"), e, engine.busy_timeout());
        if self.conn.is_none() {
            let flags = if engine.is_read_only() {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            } else {
                OpenFlags::SQLITE_OPEN_READ_WRITE
            };
            let conn =
                Connection::open_with_flags(engine.path(), flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .map_err(fail)?;
            conn.busy_timeout(engine.busy_timeout()).map_err(fail)?;
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
        let looked = Watch::look(&mut self.last_event, conn);
        let _ = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        let changes = looked.map_err(fail)?;
        // The version is taken as seen only once the events are read: after
        // a failed read, the next look must still see a change.
        self.data_version = Some(version);
        Ok(changes)
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
}

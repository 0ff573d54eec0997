//! The per-engine background thread: it watches the database for changes
//! made by other connections and processes, and drives every tracker.
//!
//! One thread serves all of an engine's trackers and waiters. Each pass it:
//!
//! 1. asks the backend's change feed what other connections changed
//!    (while anyone watches: every `watch_interval`, or when the backend
//!    nudges, or at once when poked); waiters are woken and trackers of the
//!    keys that changed marked for a look;
//! 2. plans the trackers' work under the lock (`plan.rs`, pure): renewals
//!    that are due (and all others due within a coalescing window, so they
//!    share a transaction), claims, checks, releases on stop;
//! 3. does the I/O without the lock, through the engine's [`Host`]: one read
//!    transaction for the checks, write transactions of up to [`BATCH`]
//!    claims each;
//! 4. applies the outcomes under the lock, resolving tickets.
//!
//! The thread holds only a `Weak` reference to its host (the engine), so
//! dropping the last engine handle (and tracker) ends it. The driver never
//! names the engine or a backend: it reaches them through [`Host`].

mod plan;

use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use crate::core::backend::{ChangeFeed, Changes, Nudge};
use crate::core::error::Error;
use crate::core::key::Key;
use crate::core::lease::Record;
use crate::core::ticket::{DeferWakes, LeaseTicket};

use plan::Board;
pub(crate) use plan::{
    ClaimItem, Hold, Keepalive, Outcome, Plan, Question, ReleaseItem, TrackSpec, TrackStatus,
};

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

/// How often, at most, a pass checks that the database is still the one
/// the engine opened (its file not deleted or replaced).
const USABLE_CHECK: Duration = Duration::from_millis(200);

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

/// What the driver needs of the engine it serves: time, I/O on the
/// database, and its change feed. Implemented by the engine for each
/// backend; the driver holds it by a `Weak` reference.
pub(crate) trait Host: Send + Sync {
    /// Engine time as this process knows it.
    fn now_ms(&self) -> i64;
    /// How long I/O may wait for locks at most.
    fn busy_timeout(&self) -> Duration;
    /// Claims (or, for leaders, renews) `items` in one write transaction
    /// bounded by `budget`; each item's outcome, in order.
    ///
    /// # Errors
    ///
    /// The transaction failed; nothing was written.
    fn claim_batch(&self, items: &[ClaimItem], budget: Duration) -> Result<Vec<Outcome>, Error>;
    /// Releases `items` (those not held are skipped) in one write
    /// transaction bounded by `budget`.
    ///
    /// # Errors
    ///
    /// The transaction failed; nothing was written.
    fn release_batch(&self, items: &[ReleaseItem], budget: Duration) -> Result<(), Error>;
    /// Reads the rows of `keys` in one read transaction bounded by
    /// `budget`, with the engine time of the read.
    ///
    /// # Errors
    ///
    /// The rows could not be read.
    fn read_rows(
        &self,
        keys: &[&Key],
        budget: Duration,
    ) -> Result<(i64, Vec<Option<Record>>), Error>;
    /// The backend's change feed.
    ///
    /// # Errors
    ///
    /// It could not be opened.
    fn feed(&self) -> Result<Box<dyn ChangeFeed>, Error>;
    /// Asks for `nudge` when others may have changed the database; whether
    /// that will happen.
    fn subscribe(&self, nudge: Weak<dyn Nudge>) -> bool;
    /// Fails once the database can no longer serve (its file deleted or
    /// replaced), checked at most once per `every`.
    ///
    /// # Errors
    ///
    /// The database is gone.
    fn ensure_usable(&self, every: Duration) -> Result<(), Error>;
    /// The backend's chores, each pass.
    fn maintain(&self);
    /// Whether I/O may block past its budget (see `Backend::IO_MAY_HANG`).
    fn io_may_hang(&self) -> bool;
    /// Whether a transient error naming a key says that key's row was
    /// waited for (see `Backend::LOCKS_ROWS`).
    fn locks_rows(&self) -> bool;
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
    errors: Box<dyn HandleError>,
    /// The helper thread that runs I/O for backends whose calls may hang.
    offload: Mutex<Option<Offload>>,
}

/// Runs the background thread's I/O on a helper thread, so that the
/// background thread stops waiting at the budget even when a call hangs (a
/// server behind a cut network: a socket read waits for the TCP
/// timeouts). A call it gave up on is not retried: the helper skips work
/// whose deadline passed before it could start (a queued release must not
/// run after a new tenure began), and what a late call did is found by the
/// next look.
struct Offload {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// A piece of I/O for the helper, which sends its own result back.
type Work = Box<dyn FnOnce(&dyn Host) + Send>;

struct Job {
    deadline: std::time::Instant,
    work: Work,
}

impl Offload {
    fn start(host: Weak<dyn Host>) -> Option<Offload> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("leasehold-io".into())
            .spawn(move || {
                while let Ok(job) = inbox.recv() {
                    if std::time::Instant::now() >= job.deadline {
                        continue; // given up on; dropping it says so
                    }
                    let Some(host) = host.upgrade() else { return };
                    (job.work)(&*host);
                }
            })
            .ok()?;
        Some(Offload { jobs })
    }
}

#[derive(Default)]
struct State {
    thread: Option<ThreadId>,
    /// The engine is shutting down: stop every tracker, then exit.
    stopping: bool,
    exited: bool,
    /// Something in this process committed or moved the clock: look now.
    poked: bool,
    /// The backend said others may have written: look soon.
    nudged: bool,
    /// After a nudge that found no change: when to look again, and the
    /// pause that led there.
    recheck: Option<(std::time::Instant, Duration)>,
    /// Whether the backend nudges this driver (else it polls).
    pushed: bool,
    /// When the latest pass ended.
    last_pass: Option<std::time::Instant>,
    /// Bumped whenever a key may have become vacant; waiters re-read.
    generation: u64,
    waiters: usize,
    board: Board,
    in_pass: bool,
    stats: BackgroundStats,
    /// The number of the latest pass that found nothing to do.
    idle_pass: u64,
    /// Threads blocked in `settle`.
    settlers: usize,
    /// The database is gone (reported once).
    lost: bool,
}

impl State {
    fn watching(&self) -> bool {
        self.waiters > 0 || !self.board.is_empty()
    }
}

/// The key a transient failure waited for, when the backend named it (a
/// server's row lock; SQLite's lock is the whole file's).
fn blocked_key(e: &Error) -> Option<&Key> {
    match e {
        Error::Busy { context, .. } | Error::Storage { context, .. } => context.lease_key(),
        _ => None,
    }
}

/// The context of a batch's own transaction (beginning, committing): the
/// key and holder when the batch holds only one, as it usually does.
pub(crate) fn batch_context(
    operation: &'static str,
    only: Option<(&Key, &str)>,
) -> crate::core::error::Context {
    use crate::core::error::Context;
    match only {
        Some((key, holder)) => Context::new(operation).key(key).holder(holder),
        None => Context::new(operation),
    }
}

impl Nudge for Driver {
    fn nudge(&self) {
        let mut st = self.lock();
        if !st.nudged {
            st.nudged = true;
            drop(st);
            self.wake.notify_one();
        }
    }
}

impl Driver {
    pub fn new(watch_interval: Duration, errors: Box<dyn HandleError>) -> Driver {
        Driver {
            state: Mutex::new(State::default()),
            started: std::sync::atomic::AtomicBool::new(false),
            wake: Condvar::new(),
            changed: Condvar::new(),
            passed: Condvar::new(),
            watch_interval,
            errors,
            offload: Mutex::new(None),
        }
    }

    /// Runs `work` on the I/O helper when the backend's calls may hang,
    /// waiting at most `budget`; else here. A call given up on fails as
    /// busy.
    fn io<T: Send + 'static>(
        &self,
        host: &dyn Host,
        budget: Duration,
        context: impl FnOnce() -> crate::core::error::Context,
        work: impl FnOnce(&dyn Host) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        if !host.io_may_hang() {
            return work(host);
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let job = Job {
            deadline: std::time::Instant::now() + budget,
            work: Box::new(move |host| {
                let _ = reply.send(work(host));
            }),
        };
        let sent = self
            .offload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|o| o.jobs.send(job).is_ok());
        if !sent {
            return Err(Error::Stopped { context: context() });
        }
        match answer.recv_timeout(budget) {
            Ok(result) => result,
            Err(_) => Err(Error::Busy {
                context: context(),
                waited: budget,
            }),
        }
    }

    /// Claims `items` in one transaction the backend bounds by `budget`;
    /// where I/O runs on the helper thread, waits for it up to `wait` (at
    /// least `budget`): a little more than the backend's own bound lets its
    /// error, which names the key it waited for, arrive first.
    fn claim_batch(
        &self,
        host: &dyn Host,
        items: &[ClaimItem],
        budget: Duration,
        wait: Duration,
    ) -> Result<Vec<Outcome>, Error> {
        let only = match items {
            [item] => Some((item.key.clone(), item.holder.clone())),
            _ => None,
        };
        let items = items.to_vec();
        self.io(
            host,
            wait.max(budget),
            || batch_context("renew", only.as_ref().map(|(k, h)| (k, h.as_str()))),
            move |host| host.claim_batch(&items, budget),
        )
    }

    fn release_batch(
        &self,
        host: &dyn Host,
        items: &[ReleaseItem],
        budget: Duration,
    ) -> Result<(), Error> {
        let items = items.to_vec();
        self.io(
            host,
            budget,
            || batch_context("release", None),
            move |host| host.release_batch(&items, budget),
        )
    }

    fn read_rows(
        &self,
        host: &dyn Host,
        keys: &[&Key],
        budget: Duration,
    ) -> Result<(i64, Vec<Option<Record>>), Error> {
        let keys: Vec<Key> = keys.iter().map(|&k| k.clone()).collect();
        self.io(
            host,
            budget,
            || crate::core::error::Context::new("watch"),
            move |host| host.read_rows(&keys.iter().collect::<Vec<_>>(), budget),
        )
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
    fn ensure_thread(self: &Arc<Driver>, st: &mut State, host: Weak<dyn Host>) {
        if st.thread.is_some() || st.exited {
            return;
        }
        let driver = Arc::clone(self);
        let nudge: Weak<dyn Nudge> = Arc::downgrade(self) as Weak<Driver>;
        st.pushed = host.upgrade().is_some_and(|h| h.subscribe(nudge));
        // Like std::thread::spawn, fail loudly if the OS cannot give us a
        // thread: nothing would renew the trackers' leases.
        let handle = std::thread::Builder::new()
            .name("leasehold-driver".into())
            .spawn(move || driver.run(host))
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
    pub fn add_waiter(self: &Arc<Driver>, host: Weak<dyn Host>) {
        let mut st = self.lock();
        st.waiters += 1;
        self.ensure_thread(&mut st, host);
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

    pub fn add_tracker(self: &Arc<Driver>, host: Weak<dyn Host>, spec: TrackSpec) -> Option<u64> {
        let mut st = self.lock();
        if st.stopping {
            return None;
        }
        let id = st.board.add(spec);
        self.ensure_thread(&mut st, host);
        drop(st);
        self.wake.notify_one();
        Some(id)
    }

    pub fn ticket(&self, id: u64, now: i64, question: Question) -> LeaseTicket {
        let mut st = self.lock();
        let (ticket, wake) = st.board.ticket(id, now, question);
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        ticket
    }

    /// The current tenure's epoch and a ticket that fires when it is lost,
    /// taken atomically; `None` unless leading.
    pub fn leading(&self, id: u64, now: i64) -> Option<(u64, LeaseTicket)> {
        self.lock().board.leading(id, now)
    }

    pub fn status(&self, id: u64, now: i64) -> TrackStatus {
        self.lock().board.status(id, now)
    }

    /// Asks the thread to stop tracker `id`; the returned ticket resolves
    /// once it has (after releasing the lease, if configured).
    pub fn stop_tracker(&self, id: u64, keepalive: Option<Keepalive>) -> LeaseTicket {
        let mut st = self.lock();
        let running = st.thread.is_some() && !st.exited;
        let (done, wake) = st.board.stop(id, keepalive, running);
        let graveyard = mem::take(&mut st.board.graveyard);
        drop(st);
        drop(graveyard);
        if wake {
            self.wake.notify_one();
        }
        done
    }

    // The thread.

    fn run(self: Arc<Driver>, host: Weak<dyn Host>) {
        /// Ends the thread's work however the thread ends (a panic
        /// included), so that stops and shutdowns waiting for it return.
        struct Exit<'a>(&'a Driver);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                let driver = self.0;
                // The I/O helper ends once its queue is dropped.
                drop(
                    driver
                        .offload
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take(),
                );
                let mut st = driver.lock();
                st.board.finish_all();
                st.exited = true;
                let graveyard = mem::take(&mut st.board.graveyard);
                drop(st);
                driver.changed.notify_all();
                driver.passed.notify_all();
                drop(graveyard);
            }
        }
        let _exit = Exit(&self);
        if host.upgrade().is_some_and(|h| h.io_may_hang()) {
            *self.offload.lock().unwrap_or_else(|e| e.into_inner()) = Offload::start(host.clone());
        }
        let mut feed: Option<Box<dyn ChangeFeed>> = None;
        loop {
            let Some(strong) = host.upgrade() else { break };
            let exit = self.pass(&*strong, &mut feed);
            drop(strong);
            let graveyard = mem::take(&mut self.lock().board.graveyard);
            drop(graveyard);
            if exit {
                break;
            }
            self.sleep(&host);
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
    fn sleep(&self, host: &Weak<dyn Host>) {
        let Some(strong) = host.upgrade() else { return };
        let now = strong.now_ms();
        drop(strong);
        let st = self.raw_lock();
        if st.poked || st.stopping || st.board.wants_attention() {
            return;
        }
        let mut timeout = match (st.watching(), st.pushed) {
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
        if let Some(at) = st.board.next_timer() {
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

    /// Asks the change feed what changed; whether anything did.
    fn look(&self, host: &dyn Host, feed: &mut Option<Box<dyn ChangeFeed>>) -> bool {
        let changes = match feed {
            Some(feed) => feed.changes(),
            None => match host.feed() {
                Ok(opened) => feed.insert(opened).changes(),
                Err(e) => Err(e),
            },
        };
        match changes {
            Ok(Changes::None) => false,
            Ok(changes) => {
                let mut st = self.lock();
                st.generation += 1;
                st.board.mark_changed(&changes);
                drop(st);
                self.changed.notify_all();
                true
            }
            Err(e) => {
                self.report(&e);
                false
            }
        }
    }

    /// One pass; returns whether the thread should exit.
    fn pass(&self, host: &dyn Host, feed: &mut Option<Box<dyn ChangeFeed>>) -> bool {
        let (watching, stopping, nudged, recheck) = {
            let mut st = self.lock();
            st.poked = false;
            st.in_pass = true;
            let recheck = st
                .recheck
                .filter(|(at, _)| *at <= std::time::Instant::now())
                .map(|(_, pause)| pause);
            (
                st.watching(),
                st.stopping,
                mem::take(&mut st.nudged),
                recheck,
            )
        };
        if watching {
            let found = self.look(host, feed);
            let mut st = self.lock();
            if found {
                st.recheck = None;
            } else if nudged || recheck.is_some() {
                // A backend's notice may come a moment before the change
                // is visible (SQLite: a WAL write precedes its index
                // update): look again soon, then less and less often.
                let pause = recheck.map_or(RECHECK_FIRST, |p| p * 2);
                st.recheck =
                    (pause <= RECHECK_LAST).then(|| (std::time::Instant::now() + pause, pause));
            }
        } else {
            self.lock().recheck = None;
        }
        match host.ensure_usable(USABLE_CHECK) {
            Ok(()) => host.maintain(),
            Err(e) => self.database_lost(&e),
        }
        let now = host.now_ms();
        let mut plan = {
            let mut st = self.lock();
            let stopping = st.stopping;
            st.board.plan(now, stopping)
        };
        let worked = !plan.is_empty();
        if worked {
            self.inspect(host, &mut plan);
            let outcomes = self.execute(host, &plan);
            let now = host.now_ms();
            self.lock().board.apply(outcomes, now);
        }
        let mut st = self.lock();
        st.in_pass = false;
        st.last_pass = Some(std::time::Instant::now());
        st.stats.passes += 1;
        if !worked && !st.board.wants_attention() && !st.poked {
            st.idle_pass = st.stats.passes;
        }
        let exit = stopping && st.board.is_empty();
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

    /// The database is gone: every tracker counts its tenure as lost and
    /// stays a minion, and waiters wake to fail. Reported once.
    fn database_lost(&self, e: &Error) {
        let mut st = self.lock();
        let first = !mem::replace(&mut st.lost, true);
        st.generation += 1;
        st.board.database_lost();
        drop(st);
        if first {
            self.report(e);
        }
        self.changed.notify_all();
    }

    /// How long the next piece of I/O may wait for the database: never past
    /// the earliest moment a leader must step down (so that it steps down
    /// on time even when the database is slow), nor past the busy timeout.
    fn io_budget(&self, host: &dyn Host, now: i64) -> Duration {
        let earliest = self.lock().board.earliest_step_down();
        let budget = host.busy_timeout();
        match earliest {
            Some(at) => budget.min(Duration::from_millis((at - now).max(1) as u64)),
            None => budget,
        }
    }

    /// Steps down every leader whose guarantee can no longer be kept.
    fn step_down_overdue(&self, now: i64) {
        self.lock().board.step_down_overdue(now);
    }

    /// Reads the keys of trackers that need a look; vacancies become claims.
    fn inspect(&self, host: &dyn Host, plan: &mut Plan) {
        if plan.verify.is_empty() && plan.inspect.is_empty() {
            return;
        }
        let budget = self.io_budget(host, host.now_ms());
        let keys: Vec<&Key> = plan
            .verify
            .iter()
            .map(|v| &v.key)
            .chain(plan.inspect.iter().map(|(_, k)| k))
            .collect();
        let result = self.read_rows(host, &keys, budget);
        let (now, rows) = match result {
            Ok(found) => found,
            Err(e) => {
                self.report(&e);
                // Look again after a pause.
                let now = host.now_ms();
                self.lock().board.inspection_failed(plan, now);
                return;
            }
        };
        let (verified, inspected) = rows.split_at(plan.verify.len());
        let lost: Vec<u64> = plan
            .verify
            .iter()
            .zip(verified)
            .filter(|(v, rec)| {
                !rec.as_ref()
                    .is_some_and(|r| r.is_held_by(&v.holder, Some(v.epoch), now))
            })
            .map(|(v, _)| v.tracker)
            .collect();
        let looks: Vec<(u64, Option<Hold>)> = plan
            .inspect
            .iter()
            .zip(inspected)
            .map(|((id, _), rec)| (*id, rec.as_ref().map(|r| Hold::of(r, now))))
            .collect();
        self.lock().board.apply_inspection(plan, &lost, &looks);
    }

    /// Claims (and renews) `chunk` in one transaction, keeping one key's
    /// trouble from failing the others:
    ///
    /// - a key whose row cannot be locked in time fails alone, and keeps
    ///   the driver (one thread, serving every tracker) waiting for a
    ///   quarter of the time allowed at most. The first attempt gets that
    ///   quarter; if it fails waiting for a key the backend names (a
    ///   server's row lock: SQLite waits for the whole file and names
    ///   none), that key fails this round (its tracker tries again after
    ///   its backoff) and the rest go on without it, with half of what time
    ///   is left (all of it once one key is left). A wait that names no key
    ///   gets the rest of the time, once: on SQLite, the whole time in two
    ///   attempts, as before;
    /// - a key that fails for good (not transient) is found by taking the
    ///   keys one by one.
    fn claim_chunk(
        &self,
        host: &dyn Host,
        chunk: &[ClaimItem],
        outcomes: &mut Vec<(u64, i64, Outcome)>,
    ) {
        let started = host.now_ms();
        let deadline = std::time::Instant::now() + self.io_budget(host, started);
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        let share = |n: usize, divisor: u32| if n > 1 { left() / divisor } else { left() };
        let mut items: Vec<ClaimItem> = chunk.to_vec();
        // A quarter of the time allowed, even for one key: the driver is
        // one thread, and a key waited on for the whole time would keep
        // every other tracker's renewal waiting behind it.
        let mut budget = left() / 4;
        let mut waited_for_none = false;
        loop {
            // Waiting a little past the backend's bound, within the time
            // allowed.
            let wait = (budget + (budget / 4).min(Duration::from_millis(100))).min(left());
            let result = self.claim_batch(host, &items, budget, wait);
            {
                let mut st = self.lock();
                st.stats.write_transactions += 1;
                st.stats.claims += items.len() as u64;
            }
            let e = match result {
                Ok(done) => {
                    outcomes.extend(
                        items
                            .iter()
                            .zip(done)
                            .map(|(item, outcome)| (item.tracker, started, outcome)),
                    );
                    return;
                }
                Err(e) => e,
            };
            if items.len() > 1 && !e.is_transient() {
                // One key's failure must not fail the rest: take them one
                // by one.
                for item in &items {
                    let started = host.now_ms();
                    let budget = self.io_budget(host, started);
                    match self.claim_batch(host, std::slice::from_ref(item), budget, budget) {
                        Ok(done) => {
                            outcomes.extend(done.into_iter().map(|o| (item.tracker, started, o)));
                        }
                        Err(e) => {
                            self.report(&e);
                            outcomes.push((item.tracker, started, Outcome::Failed(e.to_string())));
                        }
                    }
                }
                return;
            }
            let why = e.to_string();
            if e.is_transient() && !left().is_zero() {
                // On SQLite the error names the key of a batch of one
                // whatever it waited for (the whole file's lock): only a
                // backend that locks rows says which key it waited for.
                let blocked = blocked_key(&e)
                    .filter(|_| host.locks_rows())
                    .filter(|k| items.iter().any(|i| &i.key == *k));
                match blocked {
                    Some(key) if items.len() > 1 => {
                        self.report(&e);
                        let key = key.clone();
                        for item in items.iter().filter(|i| i.key == key) {
                            outcomes.push((item.tracker, started, Outcome::Failed(why.clone())));
                        }
                        items.retain(|i| i.key != key);
                        budget = share(items.len(), 2);
                        continue;
                    }
                    // Not reported: a wait the next attempt may end well
                    // (as one longer wait did, which said nothing).
                    None if !waited_for_none => {
                        waited_for_none = true;
                        budget = left();
                        continue;
                    }
                    _ => {}
                }
            }
            self.report(&e);
            outcomes.extend(
                items
                    .iter()
                    .map(|c| (c.tracker, started, Outcome::Failed(why.clone()))),
            );
            return;
        }
    }

    /// Runs the planned claims and releases in batches.
    fn execute(&self, host: &dyn Host, plan: &Plan) -> Vec<(u64, i64, Outcome)> {
        let mut outcomes = Vec::with_capacity(plan.claims.len() + plan.releases.len());
        for chunk in plan.claims.chunks(BATCH) {
            self.claim_chunk(host, chunk, &mut outcomes);
            // Leaders whose guarantee ran out while this chunk waited step
            // down now, not after the whole round.
            self.step_down_overdue(host.now_ms());
        }
        for chunk in plan.releases.chunks(BATCH) {
            let started = host.now_ms();
            // Up to the busy timeout in all, but in steps that end when a
            // leader must step down, so that it does so on time.
            let give_up = std::time::Instant::now() + host.busy_timeout();
            let result = loop {
                let left = give_up.saturating_duration_since(std::time::Instant::now());
                let budget = self.io_budget(host, host.now_ms()).min(left);
                let result = self.release_batch(host, chunk, budget);
                self.step_down_overdue(host.now_ms());
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
            outcomes.extend(
                chunk
                    .iter()
                    .map(|r| (r.tracker, started, Outcome::Released)),
            );
        }
        outcomes
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

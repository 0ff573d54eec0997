//! Trackers: keep claiming a lease in the background and answer with tickets.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::backend::Backend;
use crate::core::error::{Context, Error, Result};
use crate::core::key::{Key, duration_ms, validate_name};
use crate::core::ticket::LeaseTicket;
use crate::driver::{Question, TrackSpec};
use crate::engine::Engine;
use crate::engine::LeaseToken;

/// Configures a [`LeaseTracker`]; from [`Engine::tracker`].
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct TrackerBuilder<B: Backend> {
    engine: Engine<B>,
    key: Key,
    holder: String,
    guarantee: Duration,
    safety_margin: Option<Duration>,
    release_on_stop: bool,
    reclaim: bool,
}

impl<B: Backend> TrackerBuilder<B> {
    /// How long a `true` [`LeaseTracker::claim_leader`] ticket guarantees
    /// leadership from the moment it was asked for. The tracker claims twice
    /// this and renews when half is left, as Juju's does. Default: 30 s.
    pub fn guarantee(mut self, guarantee: Duration) -> TrackerBuilder<B> {
        self.guarantee = guarantee;
        self
    }

    /// How long before its lease would expire a tracker that could not renew
    /// gives up leadership: it resolves its `wait_minion` tickets then, while
    /// the lease is still formally held, so that the application stops
    /// leading before any successor can begin. It must cover how late the
    /// application may act on the ticket (scheduling, a pause) and how far
    /// the clocks of the processes sharing the database may disagree (a
    /// successor's clock ahead of ours sees the lease expire early).
    /// Default: a fifth of the guarantee (at least 1 ms).
    pub fn safety_margin(mut self, margin: Duration) -> TrackerBuilder<B> {
        self.safety_margin = Some(margin);
        self
    }

    /// Whether stopping or dropping the tracker releases a lease it holds, so
    /// that a successor takes over at once (`true`, the default) or leaves it
    /// to expire (`false`).
    pub fn release_on_stop(mut self, release: bool) -> TrackerBuilder<B> {
        self.release_on_stop = release;
        self
    }

    /// Whether, after losing leadership, the tracker waits for the lease to
    /// be free and claims it again (`true`, the default, as Juju's does), or
    /// stays a minion for good (`false`: for a job that must not resume
    /// under a new tenure once it was stopped, like `leasehold run`).
    pub fn reclaim(mut self, reclaim: bool) -> TrackerBuilder<B> {
        self.reclaim = reclaim;
        self
    }

    /// Starts the tracker: it claims at once, on the engine's background
    /// thread.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad holder, if the guarantee is zero
    /// or twice it exceeds [`MAX_DURATION`](crate::MAX_DURATION), or the
    /// margin is under 1 ms or not shorter than the guarantee;
    /// [`Error::Stopped`] after
    /// [`Engine::shutdown`].
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the engine's background thread,
    /// which the first tracker or waiter of an engine starts (as
    /// `std::thread::spawn` panics).
    pub fn build(self) -> Result<LeaseTracker<B>> {
        validate_name("holder", &self.holder)?;
        let guarantee_ms = duration_ms("guarantee", self.guarantee)?;
        duration_ms("guarantee", self.guarantee.saturating_mul(2))?;
        let margin_ms = match self.safety_margin {
            Some(m) if m < Duration::from_millis(1) || m >= self.guarantee => {
                return Err(Error::invalid(
                    "safety margin",
                    &format!("{m:?}"),
                    format!(
                        "must be at least 1ms and shorter than the guarantee ({:?})",
                        self.guarantee
                    ),
                ));
            }
            Some(m) => m.as_millis() as i64,
            None => (guarantee_ms / 5).max(1),
        };
        let ctx = || Context::new("track").key(&self.key).holder(&self.holder);
        self.engine.ensure_running(&ctx)?;
        let spec = TrackSpec {
            key: self.key.clone(),
            holder: self.holder.clone(),
            guarantee_ms,
            margin_ms,
            release_on_stop: self.release_on_stop,
            reclaim: self.reclaim,
        };
        let id = self
            .engine
            .driver()
            .add_tracker(self.engine.host(), spec)
            .ok_or_else(|| Error::Stopped { context: ctx() })?;
        Ok(LeaseTracker {
            engine: self.engine,
            id,
            key: self.key,
            holder: self.holder,
            guarantee: self.guarantee,
            stopped: AtomicBool::new(false),
        })
    }
}

/// Keeps claiming one lease for one holder, in the background, and tells the
/// application whether it leads through tickets (Juju's `Tracker`).
///
/// - It claims twice the [guarantee](TrackerBuilder::guarantee) and renews
///   when half is left, so a leader always has at least the guarantee ahead.
/// - Denied, it becomes a minion, waits for the lease to be released, revoked
///   or to expire — noticing another process's release within the engine's
///   watch interval — and claims again.
/// - If it cannot renew (storage errors are retried with backoff and
///   reported to the engine's error handler), it gives up leadership a
///   [safety margin](TrackerBuilder::safety_margin) before the lease expires.
/// - Stopping or dropping it ends its work, resolves pending tickets `false`
///   and, by default, releases the lease.
///
/// Trackers are cheap: all of an engine's trackers share its one background
/// thread, and renewals that fall due together share a transaction.
///
/// Tickets say what the tracker believes; writes are protected by tokens.
/// Use [`LeaseTracker::while_leading`] to get both.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// use std::time::Duration;
/// use leasehold::{Engine, Key};
///
/// let engine = Engine::open(dir.path().join("app.db"))?;
/// let tracker = engine
///     .tracker(&Key::new("app", "scheduler")?, "replica-a")
///     .guarantee(Duration::from_secs(10))
///     .build()?;
/// assert!(tracker.wait_leader().wait());
/// assert!(tracker.claim_leader().wait());
/// tracker.stop(); // releases the lease
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LeaseTracker<B: Backend> {
    engine: Engine<B>,
    id: u64,
    key: Key,
    holder: String,
    guarantee: Duration,
    stopped: AtomicBool,
}

impl<B: Backend> LeaseTracker<B> {
    /// The lease tracked.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The holder it claims for.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The guarantee a `true` claim ticket carries.
    pub fn claim_duration(&self) -> Duration {
        self.guarantee
    }

    /// A ticket that resolves `true` if leadership is guaranteed for at least
    /// [`LeaseTracker::claim_duration`] from now: at once if the current
    /// tenure already covers it, else after an immediate renewal. `false` if
    /// another holder leads or the renewal fails.
    pub fn claim_leader(&self) -> LeaseTicket {
        self.engine
            .driver()
            .ticket(self.id, self.engine.now_ms(), Question::Claim)
    }

    /// A ticket that resolves `true` once the tracker leads (at once if it
    /// does), or `false` if it stops first.
    pub fn wait_leader(&self) -> LeaseTicket {
        self.engine
            .driver()
            .ticket(self.id, self.engine.now_ms(), Question::Leader)
    }

    /// A ticket that resolves `true` once the tracker's leadership can no
    /// longer be guaranteed (at once if it is not leading), or `false` if it
    /// stops first.
    pub fn wait_minion(&self) -> LeaseTicket {
        self.engine
            .driver()
            .ticket(self.id, self.engine.now_ms(), Question::Minion)
    }

    /// Whether the tracker leads now (a snapshot).
    pub fn is_leader(&self) -> bool {
        self.epoch().is_some()
    }

    /// The epoch of the tenure the tracker leads in, if it leads.
    pub fn epoch(&self) -> Option<u64> {
        self.engine
            .driver()
            .status(self.id, self.engine.now_ms())
            .leader_epoch
    }

    /// While the tracker leads: the instant, in engine time (see
    /// [`Engine::now`]), until which its lease is guaranteed held — the
    /// start of its latest successful claim or renewal plus the duration it
    /// claimed (twice the guarantee). The tracker steps down a safety margin
    /// before it. `None` unless leading.
    ///
    /// For a supervisor that must stop work before the lease could lapse
    /// even if this process freezes (what `leasehold run` hands its watcher).
    pub fn lease_until(&self) -> Option<DateTime<Utc>> {
        self.engine
            .driver()
            .status(self.id, self.engine.now_ms())
            .lease_until
            .map(crate::core::clock::from_ms)
    }

    /// A token fixed to the current tenure, if the tracker leads.
    pub fn token(&self) -> Option<LeaseToken<B>> {
        self.epoch().map(|epoch| self.token_for(epoch))
    }

    fn token_for(&self, epoch: u64) -> LeaseToken<B> {
        LeaseToken::new(
            self.engine.clone(),
            self.key.clone(),
            self.holder.clone(),
            Some(epoch),
        )
    }

    /// The latest error of background work for this tracker, if any.
    pub fn last_error(&self) -> Option<String> {
        self.engine
            .driver()
            .status(self.id, self.engine.now_ms())
            .last_error
    }

    /// Blocks until the tracker leads, then runs `f` with a [`Leading`]: the
    /// token of this tenure (to guard every write) and a ticket that fires as
    /// soon as leadership is lost. `f` should stop leading when it fires;
    /// writes guarded by the token are refused from the moment another
    /// tenure begins, whatever `f` does.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the tracker stops before leading.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # use std::time::Duration;
    /// # use leasehold::{Engine, Key, Txn};
    /// # let engine = Engine::open(dir.path().join("app.db"))?;
    /// # engine.connection()?.execute_batch("CREATE TABLE runs (epoch INTEGER)")?;
    /// let tracker = engine.tracker(&Key::new("jobs", "compactor")?, "node-1").build()?;
    /// tracker.while_leading(|leading| {
    ///     while !leading.is_lost() {
    ///         let mut txn = Txn::new();
    ///         leading.token().add_to(&mut txn);
    ///         txn.execute("INSERT INTO runs VALUES (?)", [leading.epoch()]);
    ///         engine.commit(&txn)?;
    ///         break; // a real job would loop until done or lost
    ///     }
    ///     Ok::<_, leasehold::Error>(())
    /// })??;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn while_leading<R>(&self, f: impl FnOnce(&Leading<B>) -> R) -> Result<R> {
        loop {
            if !self.wait_leader().wait() {
                return Err(Error::Stopped {
                    context: Context::new("wait for leadership")
                        .key(&self.key)
                        .holder(&self.holder),
                });
            }
            let now = self.engine.now_ms();
            if let Some((epoch, lost)) = self.engine.driver().leading(self.id, now) {
                let leading = Leading {
                    token: self.token_for(epoch),
                    lost,
                };
                return Ok(f(&leading));
            }
            // Lost again between the two looks: wait for the next tenure.
        }
    }

    /// Stops the tracker: releases its lease if it holds one (unless built
    /// with `release_on_stop(false)`) and resolves pending tickets `false`;
    /// later tickets resolve `false` at once. Blocks until done; release
    /// errors go to the engine's error handler. Stopping again does nothing.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.engine.driver().stop_tracker(self.id, None).wait();
    }
}

impl<B: Backend> Drop for LeaseTracker<B> {
    /// Like [`LeaseTracker::stop`], without waiting: the background thread
    /// finishes the stop (keeping the engine alive until it has).
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::Acquire) {
            let keepalive: Option<crate::driver::Keepalive> = Some(Box::new(self.engine.clone()));
            self.engine.driver().stop_tracker(self.id, keepalive);
        }
    }
}

impl<B: Backend> fmt::Debug for LeaseTracker<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseTracker")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("guarantee", &self.guarantee)
            .finish_non_exhaustive()
    }
}

/// Leadership in hand, for the closure of [`LeaseTracker::while_leading`].
pub struct Leading<B: Backend> {
    token: LeaseToken<B>,
    lost: LeaseTicket,
}

impl<B: Backend> std::fmt::Debug for Leading<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leading")
            .field("token", &self.token)
            .field("lost", &self.lost)
            .finish()
    }
}

impl<B: Backend> Leading<B> {
    /// The token of this tenure: guard every write with it.
    pub fn token(&self) -> &LeaseToken<B> {
        &self.token
    }

    /// The tenure's epoch.
    pub fn epoch(&self) -> u64 {
        self.token.epoch().unwrap_or_default()
    }

    /// A ticket that resolves `true` when leadership is lost (`false` if the
    /// tracker stops); wait on it, poll it, or `.await` it.
    pub fn lost(&self) -> &LeaseTicket {
        &self.lost
    }

    /// Whether leadership has been lost (or the tracker stopped).
    pub fn is_lost(&self) -> bool {
        self.lost.try_wait().is_some()
    }
}

impl<B: Backend> Engine<B> {
    /// A builder for a tracker that keeps claiming `key` for `holder`; an
    /// invalid holder is reported by [`TrackerBuilder::build`].
    pub fn tracker(&self, key: &Key, holder: &str) -> TrackerBuilder<B> {
        TrackerBuilder {
            engine: self.clone(),
            key: key.clone(),
            holder: holder.to_owned(),
            guarantee: Duration::from_secs(30),
            safety_margin: None,
            release_on_stop: true,
            reclaim: true,
        }
    }
}

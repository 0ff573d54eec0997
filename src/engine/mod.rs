//! The lease engine, generic over its [`Backend`]: every operation of the
//! lease API, engine time, the background thread's host, and what the
//! engine remembers of its own tenures. It names no backend; each backend
//! adds its own face (opening, connections, guards in a caller's
//! transaction) in its own module.

mod tenure;
mod tracker;
mod wait;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::backend::{Backend, ChangeFeed, Nudge};
use crate::core::clock::from_ms;
use crate::core::error::{Context, Error, Result};
use crate::core::event::Event;
use crate::core::key::{Key, duration_ms, validate_name};
use crate::core::lease::Record;
use crate::core::ops::{self, TenureRow};
use crate::core::snapshot::Lease;
use crate::core::store::{Known, Now, Store};
use crate::core::transfer::{self, ImportSummary, Snapshot};
use crate::driver::{
    BackgroundStats, ClaimItem, Driver, HandleError, Host, Outcome, ReleaseItem, batch_context,
};

pub use tenure::{LeaseToken, Tenure};
pub use tracker::{Leading, LeaseTracker, TrackerBuilder};

/// How often an operation checks that the database is still the one the
/// engine opened (its file not deleted or replaced).
const USABLE_CHECK: Duration = Duration::from_secs(1);

/// A lease engine on one database, generic over its backend. Use the
/// backend's own alias: [`leasehold::Engine`](crate::Engine) for SQLite.
///
/// Cheap to clone (clones share one connection pool and one background
/// thread) and `Send + Sync`. Every operation runs in a transaction of its
/// own, committed before it returns.
///
/// # Stopping
///
/// [`Engine::shutdown`] stops the engine for every clone: later operations
/// and every blocked waiter fail with [`Error::Stopped`]. Dropping the last
/// clone stops its background thread.
pub struct Engine<B: Backend> {
    pub(crate) inner: Arc<Shared<B>>,
}

impl<B: Backend> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Engine {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What the clones of an engine share.
pub(crate) struct Shared<B: Backend> {
    pub(crate) backend: B,
    pub(crate) driver: Arc<Driver>,
    stopped: AtomicBool,
    /// The latest tenure of each key claimed through [`Engine::claim`] (and
    /// committed), so that claiming it again, an extension, can take the
    /// one-statement path of [`Engine::extend`]. Only a hint: the statement
    /// checks holder, epoch, start and expiry against the row, and a miss
    /// takes the full path. Cleared when it reaches [`KNOWN_TENURES_MAX`]
    /// keys.
    known_tenures: Mutex<HashMap<Key, KnownTenure>>,
}

/// A tenure this engine claimed; see `Shared::known_tenures`.
struct KnownTenure {
    holder: String,
    known: Known,
    /// Released or revoked through this engine since.
    ended: bool,
}

/// The most keys `Shared::known_tenures` remembers.
const KNOWN_TENURES_MAX: usize = 4096;

impl<B: Backend> Drop for Shared<B> {
    fn drop(&mut self) {
        self.driver.shutdown(false);
        if !self.stopped.load(Ordering::Acquire) {
            self.backend.close();
        }
    }
}

impl<B: Backend> Engine<B> {
    /// An engine on `backend`, its background thread (not started yet)
    /// polling at most every `watch_interval` and reporting to `errors`.
    pub(crate) fn from_backend(
        backend: B,
        watch_interval: Duration,
        errors: Box<dyn HandleError>,
    ) -> Engine<B> {
        let engine = Engine {
            inner: Arc::new(Shared {
                backend,
                driver: Arc::new(Driver::new(watch_interval, errors)),
                stopped: AtomicBool::new(false),
                known_tenures: Mutex::new(HashMap::new()),
            }),
        };
        // Moving a manual clock wakes waiters and trackers at once.
        let weak = Arc::downgrade(&engine.inner);
        engine
            .inner
            .backend
            .clock()
            .on_change(Box::new(move || match weak.upgrade() {
                Some(inner) => {
                    inner.driver.poke();
                    true
                }
                None => false,
            }));
        engine
    }

    /// The backend underneath.
    pub(crate) fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The engine as the background thread's host.
    pub(crate) fn host(&self) -> Weak<dyn Host> {
        let weak: Weak<Shared<B>> = Arc::downgrade(&self.inner);
        weak
    }

    /// The engine's current time: the clock's reading (the server's, for a
    /// server backend), but never earlier than any instant this engine has
    /// already used.
    pub fn now(&self) -> DateTime<Utc> {
        from_ms(self.now_ms())
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.backend.now_ms()
    }

    pub(crate) fn busy_timeout(&self) -> Duration {
        self.inner.backend.busy_timeout()
    }

    pub(crate) fn driver(&self) -> &Arc<Driver> {
        &self.inner.driver
    }

    pub(crate) fn ensure_running(&self, ctx: &impl Fn() -> Context) -> Result<()> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(Error::Stopped { context: ctx() });
        }
        self.inner.backend.ensure_usable(USABLE_CHECK)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Stops the engine, for every clone: every tracker stops (releasing its
    /// lease unless configured not to) and its pending tickets resolve
    /// `false`; then later operations fail with [`Error::Stopped`], and so
    /// does every thread blocked in a wait. Other committed leases stay as
    /// they are. Blocks until the background thread has finished.
    pub fn shutdown(&self) {
        self.inner.driver.shutdown(true);
        if !self.inner.stopped.swap(true, Ordering::AcqRel) {
            self.inner.backend.close();
        }
        self.inner.driver.poke();
    }

    /// Runs `f` in a write transaction of the backend's, committing if it
    /// returns `Ok` and rolling back otherwise.
    pub(crate) fn write<T>(
        &self,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        self.write_within(self.busy_timeout(), ctx, f)
    }

    /// As [`Engine::write`], waiting at most `budget` for a connection and
    /// for locks.
    pub(crate) fn write_within<T>(
        &self,
        budget: Duration,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        self.ensure_running(&ctx)?;
        let value = self.inner.backend.write(budget, &ctx, f)?;
        self.changed();
        Ok(value)
    }

    /// Runs `f` in a read transaction of the backend's.
    pub(crate) fn read<T>(
        &self,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        self.read_within(self.busy_timeout(), ctx, f)
    }

    /// As [`Engine::read`], waiting at most `budget` for a connection.
    pub(crate) fn read_within<T>(
        &self,
        budget: Duration,
        ctx: impl Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        self.ensure_running(&ctx)?;
        self.inner.backend.read(budget, &ctx, f)
    }

    /// Tells waiters and trackers that this engine committed a change.
    pub(crate) fn changed(&self) {
        self.inner.driver.poke();
    }

    /// Blocks until the engine's background thread has caught up: it has
    /// completed a pass that began after this call and found nothing left to
    /// do at the current engine time. Meant for tests on a
    /// [`ManualClock`](crate::ManualClock): move the clock, then `settle`,
    /// then assert. Returns at once if no tracker or waiter ever started the
    /// thread.
    pub fn settle(&self) {
        self.inner.driver.settle();
    }

    /// Counters of the background thread's work.
    pub fn background_stats(&self) -> BackgroundStats {
        self.inner.driver.stats()
    }

    /// A tenure handle for what an operation left.
    pub(crate) fn tenure(&self, key: &Key, holder: &str, row: TenureRow) -> Tenure<B> {
        Tenure {
            engine: self.clone(),
            key: key.clone(),
            holder: holder.to_owned(),
            epoch: row.epoch,
            started_at: from_ms(row.started_ms),
            expires_at: from_ms(row.expiry_ms),
            extended: row.extended,
        }
    }

    /// Claims `key` for `holder` for `duration`, or extends `holder`'s
    /// current tenure (see [What a lease is](crate#what-a-lease-is)).
    ///
    /// On success the lease is held until at least the instant just before
    /// this call plus `duration`. A claim by the current holder is an
    /// extension: same epoch, and the expiry never moves earlier. Any other
    /// successful claim starts a new tenure with the next epoch.
    ///
    /// # Errors
    ///
    /// - [`Error::ClaimDenied`] if someone else holds the lease: a definite
    ///   "you do not hold it";
    /// - [`Error::InvalidArgument`] for a bad holder or a zero or over-long
    ///   duration (nothing is read or written);
    /// - [`Error::Busy`], [`Error::PoolTimeout`], [`Error::Storage`],
    ///   [`Error::Stopped`]: after these nothing may be inferred about the
    ///   lease.
    pub fn claim(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure<B>> {
        let known = self.known_tenure(key, holder);
        let row = self.write(
            || Context::new("claim").key(key).holder(holder),
            |st| ops::claim(st, key, holder, duration, false, known),
        )?;
        let tenure = self.tenure(key, holder, row);
        self.remember_tenure(&tenure);
        Ok(tenure)
    }

    /// The tenure of `key` this engine last claimed for `holder`, if it
    /// remembers one.
    fn known_tenure(&self, key: &Key, holder: &str) -> Option<Known> {
        let known = self.inner.known_tenures.lock().ok()?;
        known
            .get(key)
            .filter(|t| !t.ended && t.holder == holder)
            .map(|t| t.known)
    }

    /// Forgets the tenure of `key` remembered for [`Engine::claim`], before
    /// a write that ends it: the next claim then starts a new tenure without
    /// first trying to extend this one.
    fn forget_tenure(&self, key: &Key) {
        if let Ok(mut known) = self.inner.known_tenures.lock()
            && let Some(t) = known.get_mut(key)
        {
            // Kept, marked, so that the next claim updates it in place.
            t.ended = true;
        }
    }

    /// Remembers a committed claim (see `Shared::known_tenures`).
    fn remember_tenure(&self, tenure: &Tenure<B>) {
        let Ok(mut known) = self.inner.known_tenures.lock() else {
            return;
        };
        let now_known = Known {
            epoch: tenure.epoch,
            started_ms: tenure.started_at.timestamp_millis(),
            expiry_ms: tenure.expires_at.timestamp_millis(),
        };
        if let Some(t) = known.get_mut(&tenure.key)
            && t.holder == tenure.holder
        {
            t.known = now_known;
            t.ended = false;
            return;
        }
        if known.len() >= KNOWN_TENURES_MAX {
            known.clear();
        }
        known.insert(
            tenure.key.clone(),
            KnownTenure {
                holder: tenure.holder.clone(),
                known: now_known,
                ended: false,
            },
        );
    }

    /// Claims `key` for `holder` only if it is vacant: a new tenure or
    /// nothing, never an extension, even of `holder`'s own tenure. For work
    /// that must run once per tenure (`leasehold run` uses it, so that two
    /// runs as one holder cannot share a tenure).
    ///
    /// # Errors
    ///
    /// [`Error::ClaimDenied`] naming the holder (perhaps `holder` itself)
    /// while anyone holds the lease; otherwise as [`Engine::claim`].
    pub fn claim_new(&self, key: &Key, holder: &str, duration: Duration) -> Result<Tenure<B>> {
        let row = self.write(
            || Context::new("claim").key(key).holder(holder),
            |st| ops::claim(st, key, holder, duration, true, None),
        )?;
        Ok(self.tenure(key, holder, row))
    }

    /// Extends `tenure` — that very tenure — so that it is held until at
    /// least the instant of this call plus `duration` (an expiry already
    /// later stays). Cheaper than [`Engine::claim`] (one statement): what a
    /// holder that keeps its [`Tenure`] should call to renew. The returned
    /// tenure's expiry is a lower bound of the stored one.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if the tenure ended (released, revoked, expired,
    /// or replaced by another); [`Error::InvalidArgument`] for a zero or
    /// over-long duration; [`Error::Busy`], [`Error::PoolTimeout`],
    /// [`Error::Storage`], [`Error::Stopped`] as for [`Engine::claim`].
    pub fn extend(&self, tenure: &Tenure<B>, duration: Duration) -> Result<Tenure<B>> {
        let ms = duration_ms("duration", duration)?;
        let until = self.write(
            || {
                Context::new("extend")
                    .key(&tenure.key)
                    .holder(&tenure.holder)
            },
            |st| {
                let now = st.now().map_err(|e| {
                    Error::storage(
                        Context::new("extend")
                            .key(&tenure.key)
                            .holder(&tenure.holder),
                        e,
                    )
                })?;
                ops::extend_epoch(st, &tenure.key, &tenure.holder, tenure.epoch, ms, now)
            },
        )?;
        self.extended_tenure(tenure, until);
        Ok(Tenure {
            expires_at: tenure.expires_at.max(from_ms(until)),
            extended: true,
            ..tenure.clone()
        })
    }

    /// Keeps what [`Engine::claim`] remembers of `tenure` in step with this
    /// engine's extension of it until `until_ms`: the stored expiry is now
    /// `max(before, until_ms)`. (If the row had moved on unseen, the
    /// remembered expiry stays wrong and the next claim's check misses.)
    fn extended_tenure(&self, tenure: &Tenure<B>, until_ms: i64) {
        if let Ok(mut known) = self.inner.known_tenures.lock() {
            extended_in(&mut known, tenure, until_ms);
        }
    }

    /// Extends many tenures in one transaction, as [`Engine::extend`] does
    /// one: what a holder of many leases (without trackers) calls to renew
    /// them together. Returns each tenure's outcome, in order: a lower bound
    /// of its new expiry, or [`Error::NotHeld`] for one that ended (or
    /// [`Error::InvalidArgument`], for every tenure, if `duration` is zero or
    /// too long).
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::claim`], in which case nothing was
    /// extended.
    pub fn extend_all(
        &self,
        tenures: &[Tenure<B>],
        duration: Duration,
    ) -> Result<Vec<Result<DateTime<Utc>>>> {
        let ms = match duration_ms("duration", duration) {
            Ok(ms) => ms,
            // The same refusal for every tenure (errors are not Clone), and
            // nothing read or written.
            Err(_) => {
                let refusal = || duration_ms("duration", duration).map(from_ms);
                return Ok(tenures.iter().map(|_| refusal()).collect());
            }
        };
        let untils = self.write(
            || Context::new("extend"),
            |st| {
                // One time for the batch, read under the write lock: as if
                // every renewal ran at that instant.
                let now = st
                    .now()
                    .map_err(|e| Error::storage(Context::new("extend"), e))?;
                let mut out = Vec::with_capacity(tenures.len());
                for t in tenures {
                    match ops::extend_epoch(st, &t.key, &t.holder, t.epoch, ms, now) {
                        Ok(until) => out.push(Ok(until)),
                        Err(e @ (Error::NotHeld { .. } | Error::InvalidArgument { .. })) => {
                            out.push(Err(e));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            },
        )?;
        // What claim remembers, kept in step under one lock for the batch.
        let mut known = self.inner.known_tenures.lock().ok();
        Ok(tenures
            .iter()
            .zip(untils)
            .map(|(t, until)| {
                until.map(|until| {
                    if let Some(known) = known.as_deref_mut() {
                        extended_in(known, t, until);
                    }
                    t.expires_at.max(from_ms(until))
                })
            })
            .collect())
    }

    /// Ends `holder`'s tenure of `key` now, so another may claim at once.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if `holder` does not hold the lease (nothing is
    /// changed); [`Error::InvalidArgument`] for a holder that is not a valid
    /// name; storage errors as for [`Engine::claim`].
    pub fn release(&self, key: &Key, holder: &str) -> Result<()> {
        self.forget_tenure(key);
        self.write(
            || Context::new("release").key(key).holder(holder),
            |st| ops::release(st, key, holder),
        )
    }

    /// Ends whoever's tenure of `key` it is (an administrative override).
    /// Returns the lease as it was if a tenure was ended, `None` if the key
    /// was vacant. Pins stay and apply to the next tenure.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::claim`].
    pub fn revoke(&self, key: &Key) -> Result<Option<Lease>> {
        self.forget_tenure(key);
        self.write(
            || Context::new("revoke").key(key),
            |st| ops::revoke(st, key),
        )
    }

    /// Pins `key` on behalf of `entity`: while any pin is live the lease does
    /// not expire (the holder still extends it; others are still denied).
    /// Pinning a vacant key pins its next tenure. Pinning again as the same
    /// entity replaces that entity's reason and expiry. With `expires_after`,
    /// the pin lapses by itself after that long, so a forgotten pin cannot hold
    /// a lease forever.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad entity, reason or duration;
    /// storage errors as for [`Engine::claim`].
    pub fn pin(
        &self,
        key: &Key,
        entity: &str,
        reason: &str,
        expires_after: Option<Duration>,
    ) -> Result<()> {
        self.write(
            || Context::new("pin").key(key).holder(entity),
            |st| ops::pin(st, key, entity, reason, expires_after),
        )
    }

    /// Removes `entity`'s pin from `key`; other entities' pins stay. Returns
    /// whether there was such a pin. Normal expiry resumes when no live pin
    /// remains.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad entity; storage errors as for
    /// [`Engine::claim`].
    pub fn unpin(&self, key: &Key, entity: &str) -> Result<bool> {
        self.write(
            || Context::new("unpin").key(key).holder(entity),
            |st| ops::unpin(st, key, entity),
        )
    }

    /// Reads one lease, or `None` if the key was never claimed or pinned.
    ///
    /// # Errors
    ///
    /// Storage errors ([`Error::Storage`], [`Error::PoolTimeout`],
    /// [`Error::Stopped`]).
    pub fn lease(&self, key: &Key) -> Result<Option<Lease>> {
        self.read(|| Context::new("read").key(key), |st| ops::lease(st, key))
    }

    /// The leases of `namespace` that someone holds now, ordered by name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad namespace; storage errors as for
    /// [`Engine::lease`].
    pub fn leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        self.read(
            || Context::new("list").namespace(namespace),
            |st| ops::leases(st, namespace),
        )
    }

    /// Every key of `namespace` ever claimed or pinned, held or vacant,
    /// ordered by name.
    ///
    /// # Errors
    ///
    /// As [`Engine::leases`].
    pub fn all_leases(&self, namespace: &str) -> Result<Vec<Lease>> {
        self.read(
            || Context::new("list").namespace(namespace),
            |st| ops::all_leases(st, namespace),
        )
    }

    /// The newest `limit` events of `key` (claims, releases, revokes, lapses,
    /// pins, unpins), oldest first. The database keeps the newest
    /// event-retention events across all keys.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::lease`].
    pub fn history(&self, key: &Key, limit: usize) -> Result<Vec<Event>> {
        self.read(
            || Context::new("history").key(key),
            |st| ops::history(st, key, limit),
        )
    }

    /// Every namespace with at least one key, sorted.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::lease`].
    pub fn namespaces(&self) -> Result<Vec<String>> {
        self.read(
            || Context::new("list namespaces"),
            |st| {
                st.namespaces()
                    .map_err(|e| Error::storage(Context::new("list namespaces"), e))
            },
        )
    }

    /// Reads every lease and live pin, in one read transaction.
    ///
    /// # Errors
    ///
    /// Storage errors as for [`Engine::lease`].
    pub fn export(&self) -> Result<Snapshot> {
        self.read(|| Context::new("export"), transfer::export)
    }

    /// Loads a snapshot from another database, all or nothing, in one
    /// write transaction.
    ///
    /// - A held lease becomes a tenure of the same holder and epoch, held
    ///   for `window` from now.
    /// - A vacant key raises the key's epoch counter to the snapshot's.
    /// - A pin is placed with the time it had left.
    ///
    /// An epoch on this database never goes backwards: a lease whose epoch
    /// is lower than this database's epoch for the key is refused, and so is
    /// a held lease whose epoch equals it unless this database's tenure of
    /// that epoch has the same holder (a re-import).
    ///
    /// # Errors
    ///
    /// [`Error::ImportRefused`] naming the entry (its index in
    /// `leases`, then `pins`) and field (an epoch lower than this
    /// database's, or above
    /// [`MAX_IMPORTED_EPOCH`](crate::MAX_IMPORTED_EPOCH); a holder or entity
    /// that is not a valid name; …), [`Error::InvalidArgument`] for a bad
    /// window, or storage errors; in every case nothing was written.
    pub fn import(&self, snapshot: &Snapshot, window: Duration) -> Result<ImportSummary> {
        let window_ms = duration_ms("window", window)?;
        self.write(
            || Context::new("import"),
            |st| transfer::import(st, snapshot, window_ms),
        )
    }

    /// A token asserting "`holder` holds `key` now" (any tenure). For a token
    /// fixed to one tenure, use [`Tenure::token`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a bad holder.
    pub fn token(&self, key: &Key, holder: &str) -> Result<LeaseToken<B>> {
        validate_name("holder", holder)?;
        Ok(LeaseToken::new(
            self.clone(),
            key.clone(),
            holder.to_owned(),
            None,
        ))
    }
}

/// Keeps `known` in step with an extension of `tenure` until `until_ms`
/// (see `Engine::extended_tenure`).
fn extended_in<B: Backend>(
    known: &mut HashMap<Key, KnownTenure>,
    tenure: &Tenure<B>,
    until_ms: i64,
) {
    if known.is_empty() {
        return;
    }
    if let Some(t) = known.get_mut(&tenure.key)
        && !t.ended
        && t.holder == tenure.holder
        && t.known.epoch == tenure.epoch
    {
        t.known.expiry_ms = t.known.expiry_ms.max(until_ms);
    }
}

impl<B: Backend> fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("database", &self.inner.backend.describe())
            .field("clock", self.inner.backend.clock())
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

/// The background thread's view of the engine: time and I/O, through the
/// lease operations, never a backend's own types.
impl<B: Backend> Host for Shared<B> {
    fn now_ms(&self) -> i64 {
        self.backend.now_ms()
    }

    fn busy_timeout(&self) -> Duration {
        self.backend.busy_timeout()
    }

    fn claim_batch(&self, items: &[ClaimItem], budget: Duration) -> Result<Vec<Outcome>> {
        let only = match items {
            [item] => Some((&item.key, item.holder.as_str())),
            _ => None,
        };
        let ctx = || batch_context("renew", only);
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Stopped { context: ctx() });
        }
        self.backend.ensure_usable(USABLE_CHECK)?;
        let done = self.backend.write(budget, &ctx, |st| {
            // One time for the batch's renewals, read under the lock.
            let mut now: Option<Now> = None;
            let mut done = Vec::with_capacity(items.len());
            for item in items {
                let outcome = match item.renew {
                    // A leader renews its own tenure in one statement.
                    Some(epoch) => {
                        let at = match now {
                            Some(at) => at,
                            None => *now.insert(st.now().map_err(|e| Error::storage(ctx(), e))?),
                        };
                        match ops::extend_epoch(
                            st,
                            &item.key,
                            &item.holder,
                            epoch,
                            item.duration_ms,
                            at,
                        ) {
                            Ok(_) => Outcome::Won(epoch),
                            Err(Error::NotHeld { .. }) => Outcome::Lost,
                            // Said as the renewal it is (a server's row
                            // lock makes the wait show here, not at BEGIN).
                            Err(Error::Storage { source, .. }) => {
                                return Err(Error::Storage {
                                    context: batch_context(
                                        "renew",
                                        Some((&item.key, &item.holder)),
                                    ),
                                    source,
                                });
                            }
                            Err(Error::Busy { waited, .. }) => {
                                return Err(Error::Busy {
                                    context: batch_context(
                                        "renew",
                                        Some((&item.key, &item.holder)),
                                    ),
                                    waited,
                                });
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    None => {
                        let d = Duration::from_millis(item.duration_ms.max(0) as u64);
                        match ops::claim(st, &item.key, &item.holder, d, false, None) {
                            Ok(row) => Outcome::Won(row.epoch),
                            Err(Error::ClaimDenied { .. }) => Outcome::Denied,
                            Err(e) => return Err(e),
                        }
                    }
                };
                done.push(outcome);
            }
            Ok(done)
        })?;
        self.driver.poke();
        Ok(done)
    }

    fn release_batch(&self, items: &[ReleaseItem], budget: Duration) -> Result<()> {
        let only = match items {
            [item] => Some((&item.key, item.holder.as_str())),
            _ => None,
        };
        let ctx = || batch_context("release on stop", only);
        self.backend.ensure_usable(USABLE_CHECK)?;
        self.backend.write(budget, &ctx, |st| {
            for item in items {
                match ops::release(st, &item.key, &item.holder) {
                    Ok(()) | Err(Error::NotHeld { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        self.driver.poke();
        Ok(())
    }

    fn read_rows(&self, keys: &[&Key], budget: Duration) -> Result<(i64, Vec<Option<Record>>)> {
        let ctx = || Context::new("watch");
        self.backend.ensure_usable(USABLE_CHECK)?;
        self.backend.read(budget, &ctx, |st| {
            let fail = |key: &Key| {
                let key = key.clone();
                move |e| Error::storage(Context::new("watch").key(&key), e)
            };
            let mut rows = Vec::with_capacity(keys.len());
            for key in keys {
                rows.push(st.load(key).map_err(fail(key))?);
            }
            let now = st.now().map_err(|e| Error::storage(ctx(), e))?.ms;
            Ok((now, rows))
        })
    }

    fn feed(&self) -> Result<Box<dyn ChangeFeed>> {
        self.backend.feed()
    }

    fn subscribe(&self, nudge: Weak<dyn Nudge>) -> bool {
        self.backend.subscribe(nudge)
    }

    fn ensure_usable(&self, every: Duration) -> Result<()> {
        self.backend.ensure_usable(every)
    }

    fn maintain(&self) {
        self.backend.maintain();
    }

    fn io_may_hang(&self) -> bool {
        B::IO_MAY_HANG
    }

    fn locks_rows(&self) -> bool {
        B::LOCKS_ROWS
    }
}

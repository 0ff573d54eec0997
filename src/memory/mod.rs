//! An in-memory backend: the whole lease contract in one process, without
//! files — for unit tests of code that depends on leadership, and the
//! proof that the engine's seam holds a second backend.
//!
//! A [`MemoryDatabase`] is shared by every engine opened on it (as
//! processes share a SQLite file); each write transaction holds the
//! database's one lock from its first read to its commit, so operations and
//! guarded transactions serialize as on SQLite. Reads take no lock: they
//! answer at once from the last committed state, as SQLite's readers do
//! from their snapshot while a writer works. Time is the engine's clock plus
//! an offset, never behind the instants it has used nor the mark the
//! database keeps, as on SQLite.
//!
//! ```
//! use std::time::Duration;
//! use leasehold::Key;
//! use leasehold::memory::MemoryEngine;
//!
//! let engine = MemoryEngine::in_memory();
//! let key = Key::new("app", "scheduler")?;
//! let tenure = engine.claim(&key, "replica-a", Duration::from_secs(30))?;
//! let token = tenure.token();
//! // A write guarded inside a transaction of the memory database.
//! engine.transaction(|tx| {
//!     tx.check_in(&token)?;
//!     tx.put("owner", "replica-a");
//!     Ok(())
//! })?;
//! assert_eq!(engine.transaction(|tx| Ok(tx.get("owner")))?, Some("replica-a".to_owned()));
//! # Ok::<(), leasehold::Error>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::core::backend::{Backend, ChangeFeed, Changes, Nudge, sealed};
use crate::core::clock::{Clock, LocalTime, SystemClock};
use crate::core::error::{Context, Error, Result, StorageError, StorageKind};
use crate::core::event::{Event, EventRecord, Events, cursor_after, gap_after, missed_before};
use crate::core::key::Key;
use crate::core::lease::{PinRecord, Record};
use crate::core::ops;
use crate::core::store::{GuardSpec, Known, Now, Store, StoreResult};
use crate::driver::{HandleError, LogErrors};
use crate::engine::{Engine, LeaseToken};

/// The lease engine on a [`MemoryDatabase`].
pub type MemoryEngine = Engine<Memory>;

/// The state of a memory database.
#[derive(Clone, Default)]
struct State {
    rows: BTreeMap<Key, Record>,
    pins: BTreeMap<(Key, String), PinRecord>,
    events: BTreeMap<i64, (Key, EventRecord)>,
    next_event: i64,
    /// The persisted engine time mark.
    high_water: i64,
    /// The persisted clock offset (see `LocalTime`).
    clock_offset: i64,
    /// The application's own values, for guarded transactions.
    values: BTreeMap<String, String>,
    /// Bumped by every commit that changed something.
    version: u64,
}

struct DatabaseInner {
    state: Mutex<State>,
    /// Waits for the lock (a transaction holds it from begin to commit).
    locked: Mutex<bool>,
    released: Condvar,
    subscribers: Mutex<Vec<Weak<dyn Nudge>>>,
}

/// A database in memory, shared by every engine opened on it. Cheap to
/// clone; clones are the same database.
#[derive(Clone)]
pub struct MemoryDatabase {
    inner: Arc<DatabaseInner>,
}

impl Default for MemoryDatabase {
    fn default() -> Self {
        MemoryDatabase::new()
    }
}

impl fmt::Debug for MemoryDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("MemoryDatabase")
            .field("leases", &st.rows.len())
            .field("events", &st.events.len())
            .finish_non_exhaustive()
    }
}

impl MemoryDatabase {
    /// An empty database.
    pub fn new() -> MemoryDatabase {
        MemoryDatabase {
            inner: Arc::new(DatabaseInner {
                state: Mutex::new(State {
                    next_event: 1,
                    ..State::default()
                }),
                locked: Mutex::new(false),
                released: Condvar::new(),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A builder for an engine on this database.
    pub fn engine(&self) -> MemoryBuilder {
        MemoryBuilder {
            db: self.clone(),
            clock: Arc::new(SystemClock),
            busy_timeout: Duration::from_secs(5),
            event_retention: 10_000,
            watch_interval: Duration::from_millis(1),
            errors: Box::new(LogErrors),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the database's one lock, waiting at most `budget`.
    fn lock(&self, budget: Duration) -> Option<DbLock<'_>> {
        let deadline = Instant::now().checked_add(budget);
        let mut locked = self.inner.locked.lock().unwrap_or_else(|e| e.into_inner());
        while *locked {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return None;
            }
            locked = self
                .inner
                .released
                .wait_timeout(locked, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *locked = true;
        Some(DbLock { db: self })
    }

    /// Tells every engine on the database that something changed.
    fn notify(&self) {
        let mut subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|s| s.strong_count() > 0);
        let alive: Vec<_> = subscribers.iter().filter_map(Weak::upgrade).collect();
        drop(subscribers);
        for nudge in alive {
            nudge.nudge();
        }
    }
}

/// The database's lock, released on drop.
struct DbLock<'a> {
    db: &'a MemoryDatabase,
}

impl Drop for DbLock<'_> {
    fn drop(&mut self) {
        let mut locked = self
            .db
            .inner
            .locked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *locked = false;
        drop(locked);
        self.db.inner.released.notify_one();
    }
}

/// Configures an engine on a [`MemoryDatabase`]; from
/// [`MemoryDatabase::engine`].
#[must_use = "a builder does nothing until build() is called"]
pub struct MemoryBuilder {
    db: MemoryDatabase,
    clock: Arc<dyn Clock>,
    busy_timeout: Duration,
    event_retention: u64,
    watch_interval: Duration,
    errors: Box<dyn HandleError>,
}

impl fmt::Debug for MemoryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBuilder")
            .field("clock", &self.clock)
            .field("busy_timeout", &self.busy_timeout)
            .finish_non_exhaustive()
    }
}

impl MemoryBuilder {
    /// The clock the engine reads. Default: [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> MemoryBuilder {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an operation waits for the database's lock before failing
    /// with [`Error::Busy`]. Default: 5 seconds.
    pub fn busy_timeout(mut self, timeout: Duration) -> MemoryBuilder {
        self.busy_timeout = timeout;
        self
    }

    /// How many history events the database keeps (at least the newest this
    /// many), at least 1. Default: 10,000.
    pub fn event_retention(mut self, events: u64) -> MemoryBuilder {
        self.event_retention = events;
        self
    }

    /// How often, at most, the background thread looks for changes made by
    /// other engines on the database (it is also told at once). Default:
    /// 1 ms.
    pub fn watch_interval(mut self, interval: Duration) -> MemoryBuilder {
        self.watch_interval = interval;
        self
    }

    /// Where errors of background work go. Default: [`LogErrors`].
    pub fn error_handler(mut self, handler: impl HandleError) -> MemoryBuilder {
        self.errors = Box::new(handler);
        self
    }

    /// Opens the engine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero event retention, a watch
    /// interval of zero or over 60 s, or a busy timeout over an hour.
    pub fn build(self) -> Result<MemoryEngine> {
        if self.event_retention == 0 {
            return Err(Error::invalid("event retention", "0", "must be at least 1"));
        }
        if self.watch_interval.is_zero() || self.watch_interval > Duration::from_secs(60) {
            return Err(Error::invalid(
                "watch interval",
                &format!("{:?}", self.watch_interval),
                "must be between 1ns and 60s",
            ));
        }
        if self.busy_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "busy timeout",
                &format!("{:?}", self.busy_timeout),
                "must be at most one hour",
            ));
        }
        let (persisted, offset) = {
            let st = self.db.state();
            let mark = st
                .rows
                .values()
                .map(|r| r.updated_ms)
                .max()
                .unwrap_or(0)
                .max(st.high_water);
            (mark, st.clock_offset)
        };
        let backend = Memory {
            db: self.db,
            time: LocalTime::resume(self.clock, persisted, offset),
            busy_timeout: self.busy_timeout,
            event_retention: self.event_retention,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        };
        Ok(Engine::from_backend(
            backend,
            self.watch_interval,
            self.errors,
        ))
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The in-memory backend; see the [module docs](self).
pub struct Memory {
    db: MemoryDatabase,
    time: LocalTime,
    busy_timeout: Duration,
    event_retention: u64,
    id: u64,
}

impl sealed::Sealed for Memory {}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory").field("id", &self.id).finish()
    }
}

impl Memory {
    /// Runs `f` on a copy of the state under the database's lock, keeping
    /// the copy if `f` succeeds.
    fn transaction<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut MemoryStore<'_>) -> Result<T>,
    ) -> Result<T> {
        let budget = budget.min(self.busy_timeout);
        let Some(lock) = self.db.lock(budget) else {
            return Err(Error::Busy {
                context: ctx(),
                waited: budget,
            });
        };
        let before = self.db.state().clone();
        let mut store = MemoryStore {
            backend: self,
            state: before,
            changed: false,
        };
        let value = f(&mut store)?;
        let changed = store.changed;
        if changed {
            let mut state = store.state;
            state.version += 1;
            *self.db.state() = state;
        }
        drop(lock);
        if changed {
            self.db.notify();
        }
        Ok(value)
    }

    /// Runs `f` on a copy of the last committed state, without the
    /// database's lock (as a SQLite reader in WAL mode reads its snapshot
    /// while a writer works): a commit replaces the state whole under the
    /// state's own mutex, so the copy is never a writer's half-done work,
    /// and a read inside an open transaction, or beside one, answers at
    /// once. Whatever `f` changes is dropped.
    fn snapshot<T>(&self, f: impl FnOnce(&mut MemoryStore<'_>) -> Result<T>) -> Result<T> {
        let committed = self.db.state().clone();
        f(&mut MemoryStore {
            backend: self,
            state: committed,
            changed: false,
        })
    }

    /// Persists the high-water mark now if the clock was seen stepping back
    /// since it was last persisted, as SQLite does: in a write transaction
    /// of its own, waiting at most 10 ms for the lock (a reader must not
    /// wait for writers; the next operation, or the background thread,
    /// tries again).
    fn persist_after_step_back(&self) {
        if !self.time.step_back_pending() {
            return;
        }
        let ctx = || Context::new("persist clock");
        let _ = self.transaction(Duration::from_millis(10), &ctx, |st| {
            let now = st.now().map_err(|e| Error::storage(ctx(), e))?;
            st.finish_write(now.ms)
                .map_err(|e| Error::storage(ctx(), e))
        });
    }
}

impl Backend for Memory {
    fn write<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        self.transaction(budget, ctx, |st| f(st))
    }

    /// Reads the last committed state, never waiting for a transaction
    /// (see `Memory::snapshot`).
    fn read<T>(
        &self,
        _budget: Duration,
        _ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        let value = self.snapshot(|st| f(st))?;
        self.persist_after_step_back();
        Ok(value)
    }

    fn now_ms(&self) -> i64 {
        self.time.now_ms()
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.time.clock()
    }

    fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    fn ensure_usable(&self, _every: Duration) -> Result<()> {
        Ok(())
    }

    fn maintain(&self) {
        self.persist_after_step_back();
    }

    fn feed(&self) -> Result<Box<dyn ChangeFeed>> {
        Ok(Box::new(MemoryFeed {
            db: self.db.clone(),
            seen: None,
        }))
    }

    fn subscribe(&self, nudge: Weak<dyn Nudge>) -> bool {
        self.db
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(nudge);
        true
    }

    fn close(&self) {
        if let Some((now, offset)) = self.time.unpersisted() {
            let mut st = self.db.state();
            st.high_water = st.high_water.max(now);
            st.clock_offset = st.clock_offset.max(offset);
            drop(st);
            self.time.persisted(now, offset);
        }
    }

    fn describe(&self) -> String {
        format!("memory database (engine {})", self.id)
    }
}

/// A memory database's store, on a copy of its state.
struct MemoryStore<'a> {
    backend: &'a Memory,
    state: State,
    changed: bool,
}

impl Store for MemoryStore<'_> {
    fn now(&mut self) -> StoreResult<Now> {
        Ok(self.backend.time.reading())
    }

    fn load(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        Ok(self.state.rows.get(key).cloned())
    }

    fn save(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        if let Some(old) = self.state.rows.get(key)
            && rec.epoch < old.epoch
        {
            // As SQLite's trigger does: epochs never decrease.
            return Err(StorageError::message(
                StorageKind::Other,
                "leasehold: a lease epoch never decreases",
            ));
        }
        self.state.rows.insert(key.clone(), rec.clone());
        self.changed = true;
        Ok(())
    }

    fn extend_tenure(
        &mut self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool> {
        let Some(until) = now.checked_add(duration_ms) else {
            return Ok(false);
        };
        match self.state.rows.get_mut(key) {
            Some(rec)
                if rec.holder.as_deref() == Some(holder)
                    && rec.epoch == epoch
                    && rec.updated_ms <= now
                    && (rec.expiry_ms > now || rec.pinned_until_ms > now) =>
            {
                rec.expiry_ms = rec.expiry_ms.max(until);
                rec.updated_ms = now;
                self.changed = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn extend_known(
        &mut self,
        key: &Key,
        holder: &str,
        known: Known,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool> {
        let matches =
            self.state.rows.get(key).is_some_and(|r| {
                r.started_ms == known.started_ms && r.expiry_ms == known.expiry_ms
            });
        if !matches {
            return Ok(false);
        }
        self.extend_tenure(key, holder, known.epoch, now, duration_ms)
    }

    fn pins(&mut self, key: &Key) -> StoreResult<Vec<PinRecord>> {
        Ok(self
            .state
            .pins
            .range((key.clone(), String::new())..)
            .take_while(|((k, _), _)| k == key)
            .map(|(_, p)| p.clone())
            .collect())
    }

    fn put_pin(&mut self, key: &Key, pin: &PinRecord) -> StoreResult<()> {
        self.state
            .pins
            .insert((key.clone(), pin.entity.clone()), pin.clone());
        self.changed = true;
        Ok(())
    }

    fn delete_pin(&mut self, key: &Key, entity: &str) -> StoreResult<bool> {
        let removed = self
            .state
            .pins
            .remove(&(key.clone(), entity.to_owned()))
            .is_some();
        self.changed |= removed;
        Ok(removed)
    }

    fn list(&mut self, namespace: &str) -> StoreResult<Vec<(String, Record)>> {
        Ok(self
            .state
            .rows
            .iter()
            .filter(|(k, _)| k.namespace() == namespace)
            .map(|(k, r)| (k.name().to_owned(), r.clone()))
            .collect())
    }

    fn list_pins(&mut self, namespace: &str) -> StoreResult<Vec<(String, PinRecord)>> {
        Ok(self
            .state
            .pins
            .iter()
            .filter(|((k, _), _)| k.namespace() == namespace)
            .map(|((k, _), p)| (k.name().to_owned(), p.clone()))
            .collect())
    }

    fn namespaces(&mut self) -> StoreResult<Vec<String>> {
        let mut all: Vec<String> = self
            .state
            .rows
            .keys()
            .map(|k| k.namespace().to_owned())
            .collect();
        all.dedup();
        Ok(all)
    }

    fn record_event(&mut self, key: &Key, event: &EventRecord) -> StoreResult<()> {
        let id = self.state.next_event;
        self.state.next_event += 1;
        self.state.events.insert(id, (key.clone(), event.clone()));
        let keep = i64::try_from(self.backend.event_retention).unwrap_or(i64::MAX);
        while self.state.events.len() as i64 > keep {
            self.state.events.pop_first();
        }
        self.changed = true;
        Ok(())
    }

    fn history(&mut self, key: &Key, limit: usize) -> StoreResult<Vec<Event>> {
        let mut events: Vec<Event> = self
            .state
            .events
            .iter()
            .rev()
            .filter(|(_, (k, _))| k == key)
            .take(limit)
            .map(|(id, (_, e))| event_of(*id, e))
            .collect();
        events.reverse();
        Ok(events)
    }

    fn events_after(
        &mut self,
        namespace: Option<&str>,
        after: i64,
        limit: usize,
    ) -> StoreResult<Events> {
        let newest = self.state.events.keys().next_back().copied();
        let (after, mut gap) = gap_after(after, newest);
        if gap.is_none() {
            let first = self
                .state
                .events
                .range(after + 1..)
                .next()
                .map(|(id, _)| *id);
            gap = missed_before(after, first);
        }
        let events: Vec<(Key, Event)> = self
            .state
            .events
            .range(after + 1..)
            .filter(|(_, (k, _))| namespace.is_none_or(|ns| k.namespace() == ns))
            .take(limit)
            .map(|(id, (k, e))| (k.clone(), event_of(*id, e)))
            .collect();
        let cursor = cursor_after(&events, limit, newest, after);
        Ok(Events::new(events, gap, cursor))
    }

    fn guard_holds(&mut self, guard: &GuardSpec, now: i64) -> StoreResult<bool> {
        Ok(self
            .state
            .rows
            .get(&guard.key)
            .is_some_and(|r| r.is_held_by(&guard.holder, guard.epoch, now)))
    }

    fn finish_write(&mut self, now: i64) -> StoreResult<()> {
        if self.backend.time.persist_due(now, true) {
            let offset = self.backend.time.offset();
            self.state.high_water = self.state.high_water.max(now);
            self.state.clock_offset = self.state.clock_offset.max(offset);
            self.backend.time.persisted(now, offset);
            self.changed = true;
        }
        Ok(())
    }
}

fn event_of(id: i64, e: &EventRecord) -> Event {
    Event::new(
        id,
        e.at_ms,
        e.kind,
        e.holder.clone(),
        e.epoch,
        e.entity.clone(),
        e.detail.clone(),
    )
}

/// What other engines changed, read from the history as the SQLite feed
/// does.
struct MemoryFeed {
    db: MemoryDatabase,
    /// The version and newest event id last seen.
    seen: Option<(u64, i64)>,
}

impl ChangeFeed for MemoryFeed {
    fn changes(&mut self) -> Result<Changes> {
        let st = self.db.state();
        let newest = st.events.keys().next_back().copied().unwrap_or(0);
        let Some((version, last)) = self.seen else {
            self.seen = Some((st.version, newest));
            return Ok(Changes::All);
        };
        if version == st.version {
            return Ok(Changes::None);
        }
        self.seen = Some((st.version, newest));
        let first = st.events.range(last + 1..).next().map(|(id, _)| *id);
        if first.is_some_and(|f| f != last + 1) || newest < last {
            return Ok(Changes::All);
        }
        let keys: HashSet<Key> = st
            .events
            .range(last + 1..)
            .map(|(_, (k, _))| k.clone())
            .collect();
        Ok(Changes::Keys(keys))
    }
}

impl Engine<Memory> {
    /// An engine on a fresh, empty memory database, with default settings.
    ///
    /// # Panics
    ///
    /// Never: the defaults are valid.
    pub fn in_memory() -> MemoryEngine {
        MemoryDatabase::new()
            .engine()
            .build()
            .expect("the defaults are valid")
    }

    /// The database this engine is on (open more engines on it with
    /// [`MemoryDatabase::engine`]).
    pub fn database(&self) -> &MemoryDatabase {
        &self.backend().db
    }

    /// Runs `f` in a transaction of the memory database, holding its one
    /// lock until `f` returns: a guard checked inside ([`MemoryTxn::check_in`])
    /// keeps holding until then, as a guard does in a SQLite write
    /// transaction. Commits what `f` did if it returns `Ok`, else nothing.
    ///
    /// # Errors
    ///
    /// `f`'s error; [`Error::Busy`] if the lock stayed taken for the busy
    /// timeout; [`Error::Stopped`] after [`Engine::shutdown`].
    pub fn transaction<T>(&self, f: impl FnOnce(&mut MemoryTxn<'_, '_>) -> Result<T>) -> Result<T> {
        let ctx = || Context::new("transaction");
        self.ensure_running(&ctx)?;
        let value = self
            .backend()
            .transaction(self.busy_timeout(), &ctx, |store| {
                f(&mut MemoryTxn { store })
            })?;
        self.changed();
        Ok(value)
    }
}

/// A transaction of a memory database; from [`Engine::transaction`]: a
/// guard and the application's own values (a string map), committed
/// together.
pub struct MemoryTxn<'t, 'b> {
    store: &'t mut MemoryStore<'b>,
}

impl fmt::Debug for MemoryTxn<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTxn").finish_non_exhaustive()
    }
}

impl MemoryTxn<'_, '_> {
    /// Checks `token` inside this transaction: if it passes, what the
    /// transaction writes commits only while the holder holds the lease.
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`] saying what the database holds instead (return
    /// it, and nothing commits); [`Error::InvalidArgument`] for a token of
    /// another database.
    pub fn check_in(&mut self, token: &LeaseToken<Memory>) -> Result<()> {
        if !Arc::ptr_eq(
            &token.engine().backend().db.inner,
            &self.store.backend.db.inner,
        ) {
            return Err(Error::invalid(
                "token",
                &token.key().to_string(),
                "belongs to another memory database",
            ));
        }
        ops::check_guard(self.store, token.spec(), None)
    }

    /// Sets one of the application's values.
    pub fn put(&mut self, name: &str, value: &str) {
        self.store
            .state
            .values
            .insert(name.to_owned(), value.to_owned());
        self.store.changed = true;
    }

    /// One of the application's values.
    pub fn get(&self, name: &str) -> Option<String> {
        self.store.state.values.get(name).cloned()
    }

    /// As [`Engine::claim`], inside this transaction: it commits with the
    /// rest of it. Returns the tenure's epoch.
    ///
    /// # Errors
    ///
    /// As [`Engine::claim`].
    pub fn claim(&mut self, key: &Key, holder: &str, duration: Duration) -> Result<u64> {
        ops::claim(self.store, key, holder, duration, false, None).map(|row| row.epoch)
    }

    /// As [`Engine::release`], inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`Engine::release`].
    pub fn release(&mut self, key: &Key, holder: &str) -> Result<()> {
        ops::release(self.store, key, holder)
    }
}

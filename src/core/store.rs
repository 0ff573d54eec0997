//! The storage seam inside one transaction: loading and saving lease rows,
//! pins and events, reading engine time, evaluating a guard.
//!
//! A [`Store`] makes no decisions: the operations (`ops.rs`) load, decide
//! with [`Record`]'s rules, and save through it. Each backend implements it
//! on a transaction of its own kind — the engine's, or one the caller owns —
//! and keeps the promises written on [`Backend`](super::backend::Backend).

pub use crate::core::clock::Now;
use crate::core::error::StorageError;
use crate::core::event::{Event, EventRecord, Events};
use crate::core::key::Key;
use crate::core::lease::{PinRecord, Record};

/// A result of the store.
pub type StoreResult<T> = Result<T, StorageError>;

/// A tenure as a process last wrote it: what a re-claim expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// The tenure's epoch.
    pub epoch: u64,
    /// When it began.
    pub started_ms: i64,
    /// Its expiry as last written.
    pub expiry_ms: i64,
}

/// What a guard asserts: `holder` holds `key` now, in tenure `epoch` if
/// given. Data, carried down to the store that evaluates it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuardSpec {
    /// The lease.
    pub key: Key,
    /// Who must hold it.
    pub holder: String,
    /// The tenure, for a token from a claim.
    pub epoch: Option<u64>,
}

/// Reads and writes of one transaction. Every method runs inside the
/// transaction its implementation was made for; none decides anything.
pub trait Store {
    /// Engine time for the operation, read inside the transaction. Write
    /// operations call it after [`Store::lock`], so that the time is not
    /// older than the lock (a server backend's time is its clock's then).
    fn now(&mut self) -> StoreResult<Now>;

    /// One lease row, as read (no lock beyond the transaction's own).
    fn load(&mut self, key: &Key) -> StoreResult<Option<Record>>;

    /// One lease row, locked until the transaction ends against every other
    /// operation and guard on the key (a backend with one writer at a time
    /// holds that lock already).
    fn lock(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        self.load(key)
    }

    /// As [`Store::lock`], for an operation that may create the key's first
    /// row (a claim, a pin, an import): a backend with row locks makes the
    /// row exist first, so that two first claims serialize on it.
    fn lock_for_claim(&mut self, key: &Key) -> StoreResult<Option<Record>> {
        self.lock(key)
    }

    /// Saves a row (inserting the key's first).
    fn save(&mut self, key: &Key, rec: &Record) -> StoreResult<()>;

    /// Saves a row whose epoch the write leaves as it was (a release, a
    /// revoke, a pin change). Same effect as [`Store::save`]; cheaper where
    /// a statement that sets no epoch skips the trigger guarding epochs.
    fn save_same_epoch(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        self.save(key, rec)
    }

    /// Saves an extension: only the expiry and the row's time change.
    fn save_extension(&mut self, key: &Key, rec: &Record) -> StoreResult<()> {
        self.save(key, rec)
    }

    /// Extends tenure `epoch` of `holder` if it is current at `now`, in one
    /// statement where the backend can: exactly [`Record::claim`]'s
    /// extension branch for the common case (the row last written no later
    /// than `now`). Returns whether it did; `false` writes nothing and the
    /// caller falls back to the state machine.
    fn extend_tenure(
        &mut self,
        key: &Key,
        holder: &str,
        epoch: u64,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool>;

    /// As [`Store::extend_tenure`], only if the row also still shows the
    /// start and expiry in `known`; the row is then known exactly: expiry
    /// `max(known.expiry_ms, now + duration_ms)`.
    fn extend_known(
        &mut self,
        key: &Key,
        holder: &str,
        known: Known,
        now: i64,
        duration_ms: i64,
    ) -> StoreResult<bool>;

    /// The key's pins, ordered by entity.
    fn pins(&mut self, key: &Key) -> StoreResult<Vec<PinRecord>>;

    /// Places or replaces a pin.
    fn put_pin(&mut self, key: &Key, pin: &PinRecord) -> StoreResult<()>;

    /// Removes an entity's pin; whether there was one.
    fn delete_pin(&mut self, key: &Key, entity: &str) -> StoreResult<bool>;

    /// Every row of a namespace, ordered by name.
    fn list(&mut self, namespace: &str) -> StoreResult<Vec<(String, Record)>>;

    /// Every pin of a namespace, ordered by name and entity.
    fn list_pins(&mut self, namespace: &str) -> StoreResult<Vec<(String, PinRecord)>>;

    /// Every namespace with at least one row, sorted.
    fn namespaces(&mut self) -> StoreResult<Vec<String>>;

    /// Appends a transition to the history (and trims it to the backend's
    /// retention).
    fn record_event(&mut self, key: &Key, event: &EventRecord) -> StoreResult<()>;

    /// The newest `limit` events of `key`, oldest first.
    fn history(&mut self, key: &Key, limit: usize) -> StoreResult<Vec<Event>>;

    /// Events after position `after` (of one namespace, or all), oldest
    /// first, at most `limit`, with any gap.
    fn events_after(
        &mut self,
        namespace: Option<&str>,
        after: i64,
        limit: usize,
    ) -> StoreResult<Events>;

    /// Whether the guard holds at `now`: the predicate every guard
    /// evaluates, which must agree with [`Record::is_held_by`]. Inside a
    /// caller's transaction it must keep holding until that transaction
    /// ends (see [`Backend`](super::backend::Backend)).
    fn guard_holds(&mut self, guard: &GuardSpec, now: i64) -> StoreResult<bool>;

    /// Evaluates a guard at the store's own time: whether it holds, and the
    /// time it was judged at (for saying why it failed). One round trip on
    /// a server backend.
    fn check_guard(&mut self, guard: &GuardSpec) -> StoreResult<(bool, i64)> {
        let now = self.now()?.ms;
        Ok((self.guard_holds(guard, now)?, now))
    }

    /// Called once a write operation has decided and saved, at `now`: what
    /// the backend keeps beside the rows (SQLite persists the engine's
    /// clock mark when due).
    fn finish_write(&mut self, _now: i64) -> StoreResult<()> {
        Ok(())
    }
}

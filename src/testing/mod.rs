//! Test support (feature `testing`): record what a workload did, then check
//! the recorded history against the database for the one promise leasehold
//! makes — a guarded write commits only while its writer leads — in the
//! manner of Jepsen's fenced-set workloads.
//!
//! - [`Recorder`] appends one JSON line per event (an operation's
//!   invocation, then its success or failure) to a per-process file, flushed
//!   at once, so a process killed with SIGKILL loses at most the line it was
//!   writing.
//! - [`guarded_write`] writes a row of [`WRITES_TABLE`] through a token's
//!   guard, recording inside the same transaction what the lease table says
//!   at commit.
//! - [`check`] reads the histories, the rows and the lease history, and
//!   reports every violation (the first one named), saving the merged
//!   history to a file when something is wrong.
//! - [`OffsetClock`] is a clock a test can step forward and back.
//! - [`Workload`] runs worker processes on one file with nemeses (SIGKILL,
//!   SIGSTOP, clock steps, a long-held write lock, pool exhaustion) and
//!   checks the result. [`Workload::builder`] sets the key, the number of
//!   workers, the lease and every nemesis's timings (see its example:
//!   "pause the leader for three times its lease"); the [`RunReport`] lists
//!   every worker process started ([`WorkerRecord`]: process number, holder,
//!   OS pid, how it ended) and every [`Strike`], which
//!   [`Workload::run_observed`] also hands to a callback as it happens.
//!   Workers are processes the caller starts (usually the running program
//!   again), which must call [`serve_worker`] first; `examples/soak.rs` and
//!   the conformance suite (`tests/conformance/`, test `worker`) do.
//!
//! The nemeses send signals, so the workload needs a Unix host.

mod check;
pub(crate) mod database;
#[cfg(feature = "postgres")]
mod pg;
mod proxy;
mod recorder;
mod worker;
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeDelta, Utc};

use crate::Clock;

pub use check::{CheckOptions, CheckReport, LeaseEvent, WriteRow, check_recorded, read_histories};
#[cfg(feature = "postgres")]
pub use pg::{PgDatabase, PgOptions, PgServer, server_binaries, with_dbname};
// The PostgreSQL side: its writes table, guarded write and check.
#[cfg(feature = "postgres")]
pub use crate::postgres::testing::{pg_check, pg_create_writes_table, pg_guarded_write};
pub use proxy::{Link, Proxy, Upstream};
pub use recorder::{Entry, Recorder};
// The SQLite side of the kit: its writes table and guarded write, reading a
// run back from the file, and the multi-process workload.
pub use crate::sqlite::testing::{WRITES_TABLE, check, create_writes_table, guarded_write};
pub use database::RunDatabase;
pub use worker::{WorkerConfig, serve_worker};
pub use workload::{
    Fault, Nemesis, RunReport, Span, Strike, Target, WorkerEnd, WorkerRecord, Workload,
    WorkloadBuilder, workload_key,
};

/// Milliseconds on the wall clock, shared by every process of one host.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A clock reading the system clock plus an offset the test controls.
#[derive(Clone, Debug, Default)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    /// A clock with no offset.
    pub fn new() -> OffsetClock {
        OffsetClock::default()
    }

    /// Sets the offset (positive: ahead of the system clock).
    pub fn set_offset(&self, offset: TimeDelta) {
        self.offset_ms
            .store(offset.num_milliseconds(), Ordering::Release);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::milliseconds(self.offset_ms.load(Ordering::Acquire))
    }
}

/// A small deterministic random source (xorshift), so runs can be replayed
/// from their seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

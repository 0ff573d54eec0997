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
//!   checks the result; `examples/soak.rs` and `tests/nemesis.rs` use it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::{Clock, Engine, Error, Key, LeaseToken, Tenure, Txn};

/// The application table guarded writes go to.
pub const WRITES_TABLE: &str = "checker_writes";

/// Creates [`WRITES_TABLE`] (idempotent).
///
/// # Errors
///
/// SQLite's error, if the table cannot be created.
pub fn create_writes_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS checker_writes (
             id INTEGER PRIMARY KEY,          -- commit order
             proc INTEGER NOT NULL,
             holder TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             -- What the lease table said inside the writing transaction:
             lease_holder TEXT,
             lease_epoch INTEGER,
             -- ... and until when it was held (max of expiry and pins)
             lease_until_ms INTEGER,
             -- The wall clock just before the transaction began (so no
             -- later than its guard was evaluated).
             wall_ms INTEGER
         );",
    )
}

/// Milliseconds on the wall clock, shared by every process of one host.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One line of a history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// An operation began.
    Invoke {
        /// The process.
        proc: u32,
        /// The operation's number within its process.
        n: u64,
        /// `claim`, `extend`, `release` or `write`.
        op: String,
        /// The holder acting.
        holder: String,
        /// For `extend` and `write`: the tenure it acts in.
        epoch: Option<u64>,
        /// For `write`: the row's sequence number in its process.
        seq: Option<u64>,
        /// For `claim` and `extend`: the duration asked for.
        duration_ms: Option<i64>,
        /// Wall clock at invocation.
        wall_ms: i64,
    },
    /// The operation succeeded.
    Ok {
        /// The process.
        proc: u32,
        /// The operation's number.
        n: u64,
        /// For claims: the tenure's epoch.
        epoch: Option<u64>,
        /// Wall clock at completion.
        wall_ms: i64,
    },
    /// The operation failed.
    Fail {
        /// The process.
        proc: u32,
        /// The operation's number.
        n: u64,
        /// Whether the failure is definite (nothing happened: a denial or a
        /// failed guard) rather than indeterminate (it may have committed).
        definite: bool,
        /// The error.
        error: String,
        /// Wall clock at completion.
        wall_ms: i64,
    },
}

/// Appends a process's history to its file.
#[derive(Debug)]
pub struct Recorder {
    file: File,
    proc: u32,
    n: u64,
}

impl Recorder {
    /// Opens (appending) `dir/history-<proc>.jsonl`.
    ///
    /// # Errors
    ///
    /// The file cannot be opened.
    pub fn create(dir: &Path, proc: u32) -> std::io::Result<Recorder> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("history-{proc}.jsonl")))?;
        Ok(Recorder { file, proc, n: 0 })
    }

    fn write(&mut self, entry: &Entry) {
        let mut line = serde_json::to_string(entry).expect("entries serialise");
        line.push('\n');
        // One write call per line: a kill loses at most this line.
        let _ = self.file.write_all(line.as_bytes());
    }

    /// Records an invocation; returns its number for the outcome.
    pub fn invoke(
        &mut self,
        op: &str,
        holder: &str,
        epoch: Option<u64>,
        seq: Option<u64>,
        duration: Option<Duration>,
    ) -> u64 {
        self.n += 1;
        let entry = Entry::Invoke {
            proc: self.proc,
            n: self.n,
            op: op.to_owned(),
            holder: holder.to_owned(),
            epoch,
            seq,
            duration_ms: duration.map(|d| d.as_millis() as i64),
            wall_ms: wall_ms(),
        };
        self.write(&entry);
        self.n
    }

    /// Records success of operation `n`.
    pub fn ok(&mut self, n: u64, epoch: Option<u64>) {
        let entry = Entry::Ok {
            proc: self.proc,
            n,
            epoch,
            wall_ms: wall_ms(),
        };
        self.write(&entry);
    }

    /// Records failure of operation `n`.
    pub fn fail(&mut self, n: u64, error: &Error) {
        let definite = matches!(
            error,
            Error::ClaimDenied { .. } | Error::NotHeld { .. } | Error::GuardFailed { .. }
        );
        let entry = Entry::Fail {
            proc: self.proc,
            n,
            definite,
            error: error.to_string(),
            wall_ms: wall_ms(),
        };
        self.write(&entry);
    }
}

/// Writes one row of [`WRITES_TABLE`] for `holder` in tenure `epoch`, in
/// one `BEGIN IMMEDIATE` transaction guarded by `token` (or unguarded with
/// `None`, to show that the checker has teeth). The row also records the
/// lease's holder and epoch as the same transaction sees them.
///
/// # Errors
///
/// [`Error::GuardFailed`] if the guard fails; storage errors.
pub fn guarded_write(
    engine: &Engine,
    key: &Key,
    token: Option<&LeaseToken>,
    proc: u32,
    holder: &str,
    epoch: u64,
    seq: u64,
) -> crate::Result<()> {
    let mut txn = Txn::new();
    if let Some(token) = token {
        token.add_to(&mut txn);
    }
    txn.execute(
        INSERT_WRITE,
        (
            i64::from(proc),
            holder.to_owned(),
            epoch,
            seq,
            key.namespace().to_owned(),
            key.name().to_owned(),
            wall_ms(),
        ),
    );
    engine.commit(&txn).map(drop)
}

/// Inserts one row of [`WRITES_TABLE`] with the lease as the writing
/// transaction sees it. Parameters: proc, holder, epoch, seq, namespace,
/// name, and the wall clock (ms) before the guard.
const INSERT_WRITE: &str = "INSERT INTO checker_writes
         (proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms, wall_ms)
     SELECT ?1, ?2, ?3, ?4, l.holder, l.epoch, max(l.expiry_ms, l.pinned_until_ms), ?7
     FROM (SELECT 1) LEFT JOIN main.leasehold_leases l ON l.namespace = ?5 AND l.name = ?6";

/// What [`check`] should assume about the run.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Whether clocks were stepped: if so, the guarantee-window check is
    /// skipped (clocks then decide nothing about safety, but the windows
    /// measured on them mean nothing either).
    pub clock_steps: bool,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Operations invoked, by kind.
    pub operations: BTreeMap<String, u64>,
    /// Tenures begun (per the lease history).
    pub tenures: u64,
    /// Writes acknowledged to their writers.
    pub acknowledged_writes: u64,
    /// Rows in the writes table.
    pub rows: u64,
    /// Every violation found, in the order checked.
    pub violations: Vec<String>,
    /// Where the merged history was saved, if something was wrong.
    pub saved_history: Option<PathBuf>,
}

impl CheckReport {
    /// Whether no violation was found.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The total of operations invoked.
    pub fn total_operations(&self) -> u64 {
        self.operations.values().sum()
    }
}

/// Reads every `history-*.jsonl` in `dir` (a torn last line is skipped).
///
/// # Errors
///
/// A file cannot be read.
pub fn read_histories(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let (entries, problems) = read_histories_checked(dir)?;
    match problems.first() {
        Some(p) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            p.clone(),
        )),
        None => Ok(entries),
    }
}

/// The entries, and a description of every unreadable line that is not a
/// file's last (a kill can tear only the last one).
fn read_histories_checked(dir: &Path) -> std::io::Result<(Vec<Entry>, Vec<String>)> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("history-") && name.ends_with(".jsonl")) {
            continue;
        }
        let lines: Vec<String> = BufReader::new(File::open(&path)?)
            .lines()
            .collect::<std::io::Result<_>>()?;
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Entry>(line) {
                Ok(entry) => entries.push(entry),
                Err(_) if i + 1 == lines.len() => {} // torn by a kill
                Err(e) => problems.push(format!("{name} line {}: unreadable ({e})", i + 1)),
            }
        }
    }
    Ok((entries, problems))
}

/// Checks a run recorded in `dir` (histories) against the database at `db`:
///
/// 1. no acknowledged write is missing;
/// 2. epochs strictly increase across tenures in commit order;
/// 3. exactly one holder per epoch (lease history, claims and rows agree);
/// 4. every row was committed while its writer held the lease in that very
///    tenure (holder and epoch as seen inside the writing transaction);
/// 5. without clock steps, no tenure began inside another holder's
///    guaranteed window (start of its claim call + duration), unless that
///    holder released it or it was revoked.
///
/// # Errors
///
/// The database or histories cannot be read.
pub fn check(db: &Path, dir: &Path, key: &Key, opts: CheckOptions) -> std::io::Result<CheckReport> {
    let io = |e: rusqlite::Error| std::io::Error::other(e.to_string());
    let (entries, unreadable) = read_histories_checked(dir)?;
    let conn = Connection::open(db).map_err(io)?;
    let mut report = CheckReport::default();

    // Index the histories.
    let mut invokes: HashMap<(u32, u64), &Entry> = HashMap::new();
    let mut oks: HashMap<(u32, u64), &Entry> = HashMap::new();
    for e in &entries {
        match e {
            Entry::Invoke { proc, n, op, .. } => {
                *report.operations.entry(op.clone()).or_default() += 1;
                invokes.insert((*proc, *n), e);
            }
            Entry::Ok { proc, n, .. } => {
                oks.insert((*proc, *n), e);
            }
            Entry::Fail { .. } => {}
        }
    }

    // The database's side.
    let rows: Vec<WriteRow> = conn
        .prepare(
            "SELECT id, proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms, wall_ms
             FROM checker_writes ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(WriteRow {
                    id: r.get(0)?,
                    proc: r.get(1)?,
                    holder: r.get(2)?,
                    epoch: r.get(3)?,
                    seq: r.get(4)?,
                    lease_holder: r.get(5)?,
                    lease_epoch: r.get(6)?,
                    lease_until_ms: r.get(7)?,
                    wall_ms: r.get(8)?,
                })
            })?
            .collect()
        })
        .map_err(io)?;
    report.rows = rows.len() as u64;
    let events: Vec<(i64, String, Option<String>, u64, i64)> = conn
        .prepare(
            "SELECT id, kind, holder, epoch, at_ms FROM leasehold_events
             WHERE namespace = ?1 AND name = ?2 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([key.namespace(), key.name()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })
        .map_err(io)?;
    let mut v = unreadable;

    // 1. No lost writes, and no refused write committed.
    let written: HashSet<(u32, u64)> = rows.iter().map(|r| (r.proc, r.seq)).collect();
    let refused: HashSet<(u32, u64)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Fail {
                proc,
                n,
                definite: true,
                ..
            } => Some((*proc, *n)),
            _ => None,
        })
        .collect();
    let mut invoked_writes: HashSet<(u32, u64)> = HashSet::new();
    for ((proc, n), e) in &invokes {
        if let Entry::Invoke {
            op, seq: Some(seq), ..
        } = e
        {
            if op != "write" {
                continue;
            }
            invoked_writes.insert((*proc, *seq));
            if oks.contains_key(&(*proc, *n)) {
                report.acknowledged_writes += 1;
                if !written.contains(&(*proc, *seq)) {
                    v.push(format!(
                        "lost write: process {proc}'s write {seq} was acknowledged but is not in the table"
                    ));
                }
            }
            if refused.contains(&(*proc, *n)) && written.contains(&(*proc, *seq)) {
                v.push(format!(
                    "process {proc}'s write {seq} was refused, yet it is in the table"
                ));
            }
        }
    }
    for r in &rows {
        if !invoked_writes.contains(&(r.proc, r.seq)) {
            v.push(format!(
                "row {} (process {}, write {}) matches no write in the histories",
                r.id, r.proc, r.seq
            ));
        }
    }

    // 2 and 3. Tenures in commit order; one holder per epoch.
    let mut holder_of: HashMap<u64, String> = HashMap::new();
    // When each tenure began and (if released or revoked) ended, in the
    // engine's time (the wall clock, without clock steps).
    let mut began: BTreeMap<u64, i64> = BTreeMap::new();
    let mut ended: HashMap<u64, i64> = HashMap::new();
    let mut last_epoch = 0;
    for (id, kind, holder, epoch, at_ms) in &events {
        match kind.as_str() {
            "claimed" => {
                began.insert(*epoch, *at_ms);
                report.tenures += 1;
                if *epoch <= last_epoch {
                    v.push(format!(
                        "epoch went from {last_epoch} to {epoch} (event {id}): epochs must strictly increase"
                    ));
                }
                last_epoch = last_epoch.max(*epoch);
                let h = holder.clone().unwrap_or_default();
                if let Some(other) = holder_of.insert(*epoch, h.clone()) {
                    v.push(format!("epoch {epoch} was claimed by both {other} and {h}"));
                }
            }
            "released" | "revoked" => {
                ended.insert(*epoch, *at_ms);
            }
            _ => {}
        }
    }
    for ((proc, n), e) in &oks {
        if let (
            Some(Entry::Invoke { op, holder, .. }),
            Entry::Ok {
                epoch: Some(epoch),
                wall_ms: done,
                ..
            },
        ) = (invokes.get(&(*proc, *n)), e)
        {
            if op == "claim" {
                // A tenure began no later than the first acknowledgement of
                // a claim in it: an upper bound on its start that does not
                // rest on the engine's own clock.
                if let Some(start) = began.get_mut(epoch) {
                    *start = (*start).min(*done);
                }
                match holder_of.get(epoch) {
                    Some(h) if h == holder => {}
                    Some(h) => v.push(format!(
                        "process {proc} was told it holds epoch {epoch}, which {h} holds"
                    )),
                    None => v.push(format!(
                        "process {proc} was told it holds epoch {epoch}, which the lease history never began"
                    )),
                }
            }
        }
    }

    // 4. Every row inside its writer's tenure.
    let mut highest = 0;
    for WriteRow {
        id,
        proc,
        holder,
        epoch,
        seq,
        lease_holder,
        lease_epoch,
        lease_until_ms,
        wall_ms,
    } in &rows
    {
        if lease_holder.as_deref() != Some(holder.as_str()) || *lease_epoch != Some(*epoch) {
            v.push(format!(
                "row {id} (process {proc}, write {seq}) was written by {holder} for epoch {epoch} \
                 while the lease was held by {} at epoch {}",
                lease_holder.as_deref().unwrap_or("nobody"),
                lease_epoch.map_or("-".into(), |e| e.to_string())
            ));
        } else if let (false, Some(until), Some(at)) = (opts.clock_steps, lease_until_ms, wall_ms) {
            // The row still names the writer after its tenure ran out
            // (until the next write to it): on the shared wall clock, the
            // transaction must have begun before the lease's expiry.
            if at >= until {
                v.push(format!(
                    "row {id} (process {proc}, write {seq}) was written by {holder} for epoch {epoch} \
                     in a transaction begun at {at} ms, after the lease ran out at {until} ms"
                ));
            }
        }
        match holder_of.get(epoch) {
            Some(h) if h == holder => {}
            other => v.push(format!(
                "row {id} claims epoch {epoch} for {holder}, but the lease history gives it to {}",
                other.map_or("nobody", String::as_str)
            )),
        }
        if *epoch < highest {
            v.push(format!(
                "row {id} of epoch {epoch} committed after a row of epoch {highest}"
            ));
        }
        highest = highest.max(*epoch);
    }

    // 5. Guarantee windows, on the shared wall clock: no tenure begins
    // before every earlier tenure's promise (start of its latest
    // acknowledged claim or renewal + duration, or its release or revoke,
    // if earlier) has run out.
    if !opts.clock_steps {
        let mut promised: HashMap<u64, (i64, String)> = HashMap::new();
        for ((proc, n), ok) in &oks {
            let Some(Entry::Invoke {
                op,
                holder,
                epoch: inv_epoch,
                duration_ms: Some(d),
                wall_ms: start,
                ..
            }) = invokes.get(&(*proc, *n))
            else {
                continue;
            };
            let Entry::Ok {
                epoch: ok_epoch, ..
            } = ok
            else {
                continue;
            };
            let Some(epoch) = ok_epoch.or(*inv_epoch) else {
                continue;
            };
            if op == "claim" || op == "extend" {
                let until = start + d;
                let slot = promised.entry(epoch).or_insert((until, holder.clone()));
                if until > slot.0 {
                    *slot = (until, holder.clone());
                }
            }
        }
        // The strongest promise of any earlier epoch, as epochs go up.
        let mut strongest: Option<(i64, u64, String)> = None;
        for (&epoch, &start) in &began {
            if let Some((until, e, holder)) = &strongest {
                if start < *until {
                    v.push(format!(
                        "epoch {epoch} began at {start} ms, inside {holder}'s guarantee for epoch {e} \
                         (until {until} ms)"
                    ));
                }
            }
            if let Some((until, holder)) = promised.get(&epoch) {
                let until = ended.get(&epoch).map_or(*until, |end| (*until).min(*end));
                if strongest.as_ref().is_none_or(|(u, ..)| until > *u) {
                    strongest = Some((until, epoch, holder.clone()));
                }
            }
        }
    }

    if !v.is_empty() {
        let saved = dir.join("failed-history.jsonl");
        let mut all = entries.clone();
        all.sort_by_key(|e| match e {
            Entry::Invoke { wall_ms, .. }
            | Entry::Ok { wall_ms, .. }
            | Entry::Fail { wall_ms, .. } => *wall_ms,
        });
        let mut text = String::new();
        for e in &all {
            text.push_str(&serde_json::to_string(e).expect("serialises"));
            text.push('\n');
        }
        std::fs::write(&saved, text)?;
        report.saved_history = Some(saved);
    }
    report.violations = v;
    Ok(report)
}

/// One row of [`WRITES_TABLE`].
struct WriteRow {
    id: i64,
    proc: u32,
    holder: String,
    epoch: u64,
    seq: u64,
    lease_holder: Option<String>,
    lease_epoch: Option<u64>,
    lease_until_ms: Option<i64>,
    wall_ms: Option<i64>,
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

/// Faults injected by a [`Workload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Nemesis {
    /// SIGKILL a worker (usually the leader) at a random moment, then start
    /// a replacement.
    Kill,
    /// SIGSTOP the leader in the middle of its work (between its leadership
    /// check and its write) for longer than its lease, then SIGCONT.
    Pause,
    /// Step a worker's clock forward or back by up to two leases.
    ClockStep,
    /// Hold the database's write lock for a long stretch.
    LockHolder,
    /// Check out every pooled connection of a worker for a while.
    PoolExhaustion,
}

/// A multi-process workload on one file: workers claim one lease, renew,
/// release now and then, and write rows only through guarded transactions,
/// recording everything; nemeses strike meanwhile; [`check`] judges.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Worker processes at any time.
    pub workers: u32,
    /// How long the nemeses run.
    pub duration: Duration,
    /// Lease duration workers claim.
    pub lease: Duration,
    /// Whether writes are guarded (turn off to show the checker's teeth).
    pub guard: bool,
    /// Which faults to inject.
    pub nemeses: Vec<Nemesis>,
    /// Seed for the random choices.
    pub seed: u64,
    /// Print progress lines.
    pub verbose: bool,
}

/// What a [`Workload`] run did and found.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// The checker's verdict and counts.
    pub check: CheckReport,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Worker processes started in all.
    pub processes: u32,
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

/// The key the workload's workers contend for.
pub fn workload_key() -> Key {
    Key::new("checker", "leader").expect("a valid key")
}

const ENV_WORKER: &str = "LEASEHOLD_CHECKER_WORKER";

/// If this process was started as a workload worker, runs it to the end and
/// returns `true`. Call it first thing in `main` (or in a test the harness
/// re-runs).
pub fn serve_worker() -> bool {
    let Ok(spec) = std::env::var(ENV_WORKER) else {
        return false;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or("");
    let dir = PathBuf::from(get(0));
    let proc: u32 = get(1).parse().expect("proc");
    let lease = Duration::from_millis(get(2).parse().expect("lease"));
    let guard = get(3) == "1";
    let pool_hog = get(4) == "1";
    let seed: u64 = get(5).parse().expect("seed");
    worker(&dir, proc, lease, guard, pool_hog, seed);
    true
}

fn worker(dir: &Path, proc: u32, lease: Duration, guard: bool, pool_hog: bool, seed: u64) {
    let clock = OffsetClock::new();
    // Opening may meet a held write lock (the lock-holder fault): retry.
    let engine = loop {
        match Engine::builder(dir.join("db.sqlite"))
            .clock(clock.clone())
            .busy_timeout(lease / 2)
            .pool_size(3)
            .event_retention(10_000_000)
            .build()
        {
            Ok(engine) => break engine,
            Err(e) if e.is_transient() => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("worker engine: {e}"),
        }
    };
    let key = workload_key();
    let holder = format!("w{proc}");
    let mut rec = Recorder::create(dir, proc).expect("history file");
    let mut rng = Rng::new(seed ^ u64::from(proc) << 32);
    let offset_file = dir.join(format!("clock-{proc}"));
    let mut offset_checked = Instant::now() - Duration::from_secs(1);
    if pool_hog {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0x5eed);
            loop {
                std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
                let held: Vec<_> = (0..3).filter_map(|_| engine.connection().ok()).collect();
                if held.len() == 3 {
                    // The whole pool is taken: an episode of exhaustion.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "hogging");
                    let _ = out.flush();
                }
                std::thread::sleep(Duration::from_millis(50 + rng.below(200)));
                drop(held);
            }
        });
    }
    let say = |s: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    let mut seq = 0u64;
    let mut tenure: Option<(Tenure, Instant)> = None;
    loop {
        if offset_checked.elapsed() > Duration::from_millis(20) {
            offset_checked = Instant::now();
            if let Ok(text) = std::fs::read_to_string(&offset_file) {
                if let Ok(ms) = text.trim().parse::<i64>() {
                    clock.set_offset(TimeDelta::milliseconds(ms));
                }
            }
        }
        let Some((t, since)) = tenure.take() else {
            let n = rec.invoke("claim", &holder, None, None, Some(lease));
            let started = Instant::now();
            match engine.claim(&key, &holder, lease) {
                Ok(t) => {
                    rec.ok(n, Some(t.epoch()));
                    say(&format!("leader {}", t.epoch()));
                    tenure = Some((t, started));
                }
                Err(e) => {
                    rec.fail(n, &e);
                    std::thread::sleep(Duration::from_millis(2 + rng.below(10)));
                }
            }
            continue;
        };
        let elapsed = since.elapsed();
        // Believe in the tenure only while its guarantee (measured on this
        // process's monotonic clock from before the claim) lasts.
        if elapsed >= lease - lease / 10 {
            continue;
        }
        if elapsed >= lease / 2 {
            let n = rec.invoke("extend", &holder, Some(t.epoch()), None, Some(lease));
            let started = Instant::now();
            match engine.extend(&t, lease) {
                Ok(t) => {
                    rec.ok(n, Some(t.epoch()));
                    tenure = Some((t, started));
                }
                Err(e) => {
                    rec.fail(n, &e);
                    if !matches!(e, Error::NotHeld { .. }) {
                        tenure = Some((t, since));
                    }
                }
            }
            continue;
        }
        if rng.below(100) == 0 {
            let n = rec.invoke("release", &holder, Some(t.epoch()), None, None);
            match engine.release(&key, &holder) {
                Ok(()) => rec.ok(n, None),
                Err(e) => rec.fail(n, &e),
            }
            std::thread::sleep(Duration::from_millis(rng.below(20)));
            continue;
        }
        // The work between checking leadership and writing: a pause here
        // is what a guard must catch.
        say("working");
        std::thread::sleep(Duration::from_millis(
            2 + rng.below(lease.as_millis() as u64 / 10 + 1),
        ));
        seq += 1;
        let n = rec.invoke("write", &holder, Some(t.epoch()), Some(seq), None);
        let token = t.token();
        // Every other write goes through a transaction of the worker's own
        // (`check_in`), which says when it is inside it, so that kills can
        // land there; the others through a `Txn`.
        let written = if seq % 2 == 0 {
            write_in_own_txn(
                &engine,
                &key,
                guard.then_some(&token),
                (proc, &holder, t.epoch(), seq),
                || say("in txn"),
            )
        } else {
            guarded_write(
                &engine,
                &key,
                guard.then_some(&token),
                proc,
                &holder,
                t.epoch(),
                seq,
            )
        };
        match written {
            Ok(()) => rec.ok(n, None),
            Err(e) => rec.fail(n, &e),
        }
        tenure = Some((t, since));
    }
}

/// A guarded write in an immediate transaction of the caller's (the
/// `check_in` style): `inside` runs once the guard has passed, then the
/// row is written a moment later. The wall clock is read inside the
/// transaction, before the guard.
fn write_in_own_txn(
    engine: &Engine,
    key: &Key,
    token: Option<&LeaseToken>,
    (proc, holder, epoch, seq): (u32, &str, u64, u64),
    inside: impl Fn(),
) -> crate::Result<()> {
    let storage = |e| {
        let context = crate::Context::new("write").key(key).holder(holder);
        Error::storage(context, e, engine.busy_timeout())
    };
    let mut conn = engine.connection()?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage)?;
    let began = wall_ms();
    if let Some(token) = token {
        token.check_in(&tx)?;
    }
    inside();
    std::thread::sleep(Duration::from_millis(1));
    tx.execute(
        INSERT_WRITE,
        rusqlite::params![
            i64::from(proc),
            holder,
            epoch,
            seq,
            key.namespace(),
            key.name(),
            began
        ],
    )
    .map_err(storage)?;
    tx.commit().map_err(storage)
}

struct Running {
    proc: u32,
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }
}

impl Workload {
    /// Runs the workload in `dir` (which receives the database, histories
    /// and, on failure, the merged history), starting workers with
    /// `worker_command()` — a command that calls [`serve_worker`] first
    /// (the worker's settings are passed in its environment).
    ///
    /// # Errors
    ///
    /// A process cannot be started or a file cannot be read.
    pub fn run(
        &self,
        dir: &Path,
        worker_command: &dyn Fn() -> Command,
    ) -> std::io::Result<RunReport> {
        use nix::sys::signal::{Signal, kill};
        let io = |e: crate::Error| std::io::Error::other(e.to_string());
        let db = dir.join("db.sqlite");
        {
            let engine = Engine::builder(&db)
                .event_retention(10_000_000)
                .build()
                .map_err(io)?;
            create_writes_table(&*engine.connection().map_err(io)?)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let mut rng = Rng::new(self.seed);
        let mut report = RunReport::default();
        let mut next_proc = 1;
        let spawn = |proc: u32, pool_hog: bool| -> std::io::Result<Running> {
            let mut cmd = worker_command();
            cmd.env(
                ENV_WORKER,
                format!(
                    "{},{proc},{},{},{},{}",
                    dir.display(),
                    self.lease.as_millis(),
                    u8::from(self.guard),
                    u8::from(pool_hog),
                    self.seed
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
            let mut child = cmd.spawn()?;
            let out = child.stdout.take().expect("piped");
            let (tx, lines) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            Ok(Running { proc, child, lines })
        };
        let pool_hogs = self.nemeses.contains(&Nemesis::PoolExhaustion);
        let mut workers = Vec::new();
        for _ in 0..self.workers {
            workers.push(spawn(next_proc, pool_hogs)?);
            next_proc += 1;
        }
        // Pool exhaustion runs all along inside every worker; the loop below
        // chooses among the other faults.
        let strikes: Vec<Nemesis> = self
            .nemeses
            .iter()
            .copied()
            .filter(|n| *n != Nemesis::PoolExhaustion)
            .collect();
        let leader_index = |workers: &[Running]| -> Option<usize> {
            let conn = Connection::open(&db).ok()?;
            let holder: Option<String> = conn
                .query_row(
                    "SELECT holder FROM leasehold_leases WHERE namespace = 'checker' AND name = 'leader'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .ok()
                .flatten()
                .flatten();
            let holder = holder?;
            workers
                .iter()
                .position(|w| format!("w{}", w.proc) == holder)
        };
        // Episodes of pool exhaustion, as the workers report them.
        let hogs = std::cell::Cell::new(0u64);
        let note = |line: &str| {
            if line == "hogging" {
                hogs.set(hogs.get() + 1);
            }
        };
        let drain = |workers: &[Running]| {
            for w in workers {
                while let Ok(line) = w.lines.try_recv() {
                    note(&line);
                }
            }
        };
        // Waits up to `within` for worker `w` to print `what`.
        let await_line = |w: &Running, what: &str, within: Duration| -> bool {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                if let Ok(line) = w.lines.recv_timeout(Duration::from_millis(5)) {
                    note(&line);
                    if line.ends_with(what) {
                        return true;
                    }
                }
            }
            false
        };
        // Workers that ended without being killed: a crash the checker
        // would not see otherwise.
        let mut died: Vec<String> = Vec::new();
        let started = Instant::now();
        let mut last_print = Instant::now();
        while started.elapsed() < self.duration {
            std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
            drain(&workers);
            for i in (0..workers.len()).rev() {
                if let Ok(Some(status)) = workers[i].child.try_wait() {
                    let gone = workers.remove(i);
                    died.push(format!(
                        "worker process {} ended by itself ({status})",
                        gone.proc
                    ));
                    workers.push(spawn(next_proc, pool_hogs)?);
                    next_proc += 1;
                }
            }
            if strikes.is_empty() {
                continue;
            }
            let nemesis = strikes[rng.below(strikes.len() as u64) as usize];
            let mut name = format!("{nemesis:?}");
            match nemesis {
                Nemesis::Kill => {
                    let leader = leader_index(&workers);
                    let i = match leader {
                        // Half the time, inside the leader's write
                        // transaction (it says when it is in one).
                        Some(i)
                            if rng.below(2) == 0
                                && await_line(&workers[i], "in txn", self.lease) =>
                        {
                            name = "KillInTxn".into();
                            i
                        }
                        // Otherwise at a random moment, mostly the leader.
                        _ => {
                            std::thread::sleep(Duration::from_micros(rng.below(3000)));
                            leader
                                .filter(|_| rng.below(4) != 0)
                                .unwrap_or_else(|| rng.below(workers.len() as u64) as usize)
                        }
                    };
                    let mut victim = workers.remove(i);
                    let _ = victim.child.kill();
                    let _ = victim.child.wait();
                    workers.push(spawn(next_proc, pool_hogs)?);
                    next_proc += 1;
                }
                Nemesis::Pause => {
                    let Some(i) = leader_index(&workers) else {
                        continue;
                    };
                    // Wait until the leader is between its check and its
                    // write, then freeze it past its lease.
                    if !await_line(&workers[i], "working", self.lease) {
                        continue;
                    }
                    let pid = workers[i].pid();
                    let _ = kill(pid, Signal::SIGSTOP);
                    std::thread::sleep(self.lease * 2 + Duration::from_millis(rng.below(200)));
                    let _ = kill(pid, Signal::SIGCONT);
                }
                Nemesis::ClockStep => {
                    let w = &workers[rng.below(workers.len() as u64) as usize];
                    let span = self.lease.as_millis() as i64 * 2;
                    let offset = rng.below(2 * span as u64 + 1) as i64 - span;
                    std::fs::write(dir.join(format!("clock-{}", w.proc)), offset.to_string())?;
                }
                Nemesis::LockHolder => {
                    let Ok(mut conn) = Connection::open(&db) else {
                        continue;
                    };
                    let _ = conn.busy_timeout(self.lease);
                    // Counted only when it got the lock.
                    let Ok(tx) = conn.transaction_with_behavior(TransactionBehavior::Immediate)
                    else {
                        continue;
                    };
                    std::thread::sleep(
                        self.lease / 2
                            + Duration::from_millis(rng.below(self.lease.as_millis() as u64)),
                    );
                    let _ = tx.commit();
                }
                Nemesis::PoolExhaustion => unreachable!("filtered out above"),
            }
            *report.faults.entry(name).or_default() += 1;
            if self.verbose && last_print.elapsed() > Duration::from_secs(10) {
                last_print = Instant::now();
                println!(
                    "  {:>4}s: faults {:?}, {} processes started",
                    started.elapsed().as_secs(),
                    report.faults,
                    next_proc - 1
                );
            }
        }
        drain(&workers);
        for mut w in workers {
            let _ = kill(w.pid(), Signal::SIGCONT);
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        report.processes = next_proc - 1;
        if pool_hogs {
            report.faults.insert("PoolExhaustion".into(), hogs.get());
        }
        report.check = check(
            &db,
            dir,
            &workload_key(),
            CheckOptions {
                clock_steps: self.nemeses.contains(&Nemesis::ClockStep),
            },
        )?;
        report.check.violations.extend(died);
        Ok(report)
    }
}

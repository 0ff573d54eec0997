//! The recording side: the writes table, the per-process history files, and
//! the guarded write whose row records what the lease table said at commit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::wall_ms;
use crate::{Engine, Error, Key, LeaseToken, Txn};

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
pub(super) const INSERT_WRITE: &str = "INSERT INTO checker_writes
         (proc, holder, epoch, seq, lease_holder, lease_epoch, lease_until_ms, wall_ms)
     SELECT ?1, ?2, ?3, ?4, l.holder, l.epoch, max(l.expiry_ms, l.pinned_until_ms), ?7
     FROM (SELECT 1) LEFT JOIN main.leasehold_leases l ON l.namespace = ?5 AND l.name = ?6";

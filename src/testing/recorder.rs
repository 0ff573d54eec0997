//! The recording side: the per-process history files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wall_ms;
use crate::Error;

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

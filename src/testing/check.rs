//! The checking side: reads the histories, and judges them with the
//! writes table and the lease history (as a backend read them) against the
//! one promise leasehold makes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::Entry;

/// What [`check_recorded`] should assume about the run.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Whether clocks were stepped: if so, the guarantee-window check is
    /// skipped (clocks then decide nothing about safety, but the windows
    /// measured on them mean nothing either).
    pub clock_steps: bool,
}

/// The outcome of [`check_recorded`].
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
/// The histories are read from `dir`; `rows` and `events` are what the
/// backend's database holds (the writes table in commit order, and the
/// checked key's history).
///
/// # Errors
///
/// The histories cannot be read.
pub fn check_recorded(
    dir: &Path,
    rows: Vec<WriteRow>,
    events: Vec<LeaseEvent>,
    opts: CheckOptions,
) -> std::io::Result<CheckReport> {
    let (entries, unreadable) = read_histories_checked(dir)?;
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
    report.rows = rows.len() as u64;
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
    for LeaseEvent {
        id,
        kind,
        holder,
        epoch,
        at_ms,
    } in &events
    {
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
            && op == "claim"
        {
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
            if let Some((until, e, holder)) = &strongest
                && start < *until
            {
                v.push(format!(
                    "epoch {epoch} began at {start} ms, inside {holder}'s guarantee for epoch {e} \
                         (until {until} ms)"
                ));
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
            text.push_str(&serde_json::to_string(e).unwrap_or_default());
            text.push('\n');
        }
        std::fs::write(&saved, text)?;
        report.saved_history = Some(saved);
    }
    report.violations = v;
    Ok(report)
}

/// One row of the writes table, as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRow {
    /// Its position in commit order.
    pub id: i64,
    /// The writing process.
    pub proc: u32,
    /// The writer's holder name.
    pub holder: String,
    /// The tenure it wrote in.
    pub epoch: u64,
    /// The write's number in its process.
    pub seq: u64,
    /// The lease's holder as the writing transaction saw it.
    pub lease_holder: Option<String>,
    /// The lease's epoch as the writing transaction saw it.
    pub lease_epoch: Option<u64>,
    /// Until when the lease was held, as the writing transaction saw it.
    pub lease_until_ms: Option<i64>,
    /// The wall clock just before the writing transaction began.
    pub wall_ms: Option<i64>,
}

/// One event of the checked key's history, as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEvent {
    /// Its position in the history.
    pub id: i64,
    /// `claimed`, `released`, `revoked`, `lapsed`, `pinned` or `unpinned`.
    pub kind: String,
    /// The tenure's holder.
    pub holder: Option<String>,
    /// The tenure's epoch.
    pub epoch: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

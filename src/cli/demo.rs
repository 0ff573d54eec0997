//! `demo`: several worker processes compete to lead one application and
//! write only through guarded transactions, while the demo kills one leader
//! and pauses another past its lease; then a timeline and a verdict computed
//! from the database.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use leasehold::{Engine, Key, Txn};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{CliError, Output};

const APP: &str = "demo-app";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many worker processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    workers: u32,
    /// Also draw the timeline as an SVG picture.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// A shorter run (about 3 s instead of 9 s), for tests.
    #[arg(long)]
    short: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    database: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long)]
    guarantee_ms: u64,
    #[arg(long)]
    interval_ms: u64,
}

/// What a worker reports, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Report {
    Started,
    Leader {
        epoch: u64,
    },
    Minion,
    /// Checked leadership and is about to "work" before writing.
    Working {
        epoch: u64,
    },
    Wrote {
        epoch: u64,
        seq: u64,
    },
    Refused {
        epoch: u64,
        seq: u64,
        reason: String,
    },
    Stopped,
}

fn report(r: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(r).expect("serialises"));
    let _ = out.flush();
}

/// A worker process: track leadership, and write a row every interval
/// through a transaction guarded by the token of the tenure it believes it
/// holds. Between checking leadership and writing it "works" for an
/// interval; a pause there is what a guard must catch.
pub fn worker(args: WorkerArgs) -> Result<u8, CliError> {
    let engine = Engine::open(&args.database)?;
    let key = leasehold::leadership::key(APP)?;
    let tracker = engine
        .tracker(&key, &args.name)
        .guarantee(Duration::from_millis(args.guarantee_ms))
        .build()?;
    report(&Report::Started);
    // Stop when the demo closes our stdin.
    let (stop_tx, stop) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = stop_tx.send(());
    });
    let interval = Duration::from_millis(args.interval_ms);
    let mut seq = 0;
    let mut leading: Option<u64> = None;
    loop {
        if stop.recv_timeout(interval).is_ok() {
            break;
        }
        let Some(token) = tracker.token() else {
            if leading.take().is_some() {
                report(&Report::Minion);
            }
            continue;
        };
        let epoch = token.epoch().unwrap_or_default();
        if leading != Some(epoch) {
            leading = Some(epoch);
            report(&Report::Leader { epoch });
        }
        // The work between the check and the write.
        report(&Report::Working { epoch });
        if stop.recv_timeout(interval).is_ok() {
            break;
        }
        seq += 1;
        let mut txn = Txn::new();
        token.add_to(&mut txn);
        // The row also records the lease as this very transaction sees it
        // (holder, epoch, and until when it runs), and the wall clock just
        // before the transaction began (no later than its guard), so the
        // verdict can tell whether it committed inside the tenure: a lease
        // that ran out keeps its holder on the row until someone claims.
        let began_ms = leasehold::chrono::Utc::now().timestamp_millis();
        txn.execute(
            "INSERT INTO demo_writes
                 (worker, epoch, seq, at_ms, lease_holder, lease_epoch, lease_until_ms, began_ms)
             SELECT ?1, ?2, ?3, CAST(unixepoch('subsec') * 1000 AS INTEGER),
                    l.holder, l.epoch, max(l.expiry_ms, l.pinned_until_ms), ?6
             FROM (SELECT 1) LEFT JOIN leasehold_leases l ON l.namespace = ?4 AND l.name = ?5",
            (
                args.name.as_str(),
                epoch,
                seq,
                key.namespace().to_owned(),
                key.name().to_owned(),
                began_ms,
            ),
        );
        match engine.commit(&txn) {
            Ok(_) => report(&Report::Wrote { epoch, seq }),
            Err(e) => report(&Report::Refused {
                epoch,
                seq,
                reason: e.to_string(),
            }),
        }
    }
    tracker.stop();
    report(&Report::Stopped);
    Ok(0)
}

struct Worker {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

/// One line of the timeline.
#[derive(Clone, Debug)]
pub struct Moment {
    pub at: Duration,
    pub who: String,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq)]
pub enum What {
    Leads(u64),
    StepsDown,
    Wrote(u64),
    Refused(u64, String),
    Killed,
    Paused(Duration),
    Resumed,
    Joined,
    Replaces(String),
}

fn spawn_worker(
    db: &Path,
    name: &str,
    guarantee: Duration,
    interval: Duration,
    tx: &mpsc::Sender<(String, Instant, Report)>,
) -> Result<Worker, CliError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("__demo-worker")
        .arg("--database")
        .arg(db)
        .args(["--name", name])
        .args(["--guarantee-ms", &guarantee.as_millis().to_string()])
        .args(["--interval-ms", &interval.as_millis().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env_remove("LEASEHOLD_DB")
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take();
    let tx = tx.clone();
    let who = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<Report>(&line) {
                if tx.send((who.clone(), Instant::now(), r)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(Worker {
        name: name.to_owned(),
        child,
        stdin,
    })
}

fn pid(w: &Worker) -> Pid {
    Pid::from_raw(i32::try_from(w.child.id()).expect("pid fits"))
}

/// Whether `who` is a replacement worker (its start is already told).
fn who_replaces(moments: &[Moment], who: &str) -> bool {
    moments
        .iter()
        .any(|m| m.who == who && matches!(m.what, What::Replaces(_)))
}

/// The table workers write to (recreated for each run).
const DEMO_TABLE: &str = "DROP TABLE IF EXISTS demo_writes;
     CREATE TABLE demo_writes (
         worker TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
         lease_holder TEXT, lease_epoch INTEGER, lease_until_ms INTEGER, began_ms INTEGER);";

/// The verdict, computed from the database alone.
pub struct Verdict {
    pub rows_per_epoch: BTreeMap<u64, Vec<(String, u64)>>,
    pub holders_by_epoch: HashMap<u64, String>,
    pub problems: Vec<String>,
}

fn verdict(engine: &Engine) -> Result<Verdict, CliError> {
    let conn = engine.connection()?;
    let sql = |e: leasehold::rusqlite::Error| CliError::Failed(format!("reading the verdict: {e}"));
    let mut rows_per_epoch: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT epoch, worker, count(*) FROM demo_writes GROUP BY epoch, worker ORDER BY epoch, worker")
        .map_err(sql)?;
    let grouped = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
            ))
        })
        .map_err(sql)?;
    for row in grouped {
        let (epoch, worker, n) = row.map_err(sql)?;
        rows_per_epoch.entry(epoch).or_default().push((worker, n));
    }
    let key = leasehold::leadership::key(APP)?;
    let mut holders_by_epoch = HashMap::new();
    for e in engine.history(&key, 10_000)? {
        if e.kind() == leasehold::EventKind::Claimed {
            holders_by_epoch.insert(e.epoch(), e.holder().unwrap_or("").to_owned());
        }
    }
    let mut problems = Vec::new();
    for (epoch, writers) in &rows_per_epoch {
        if writers.len() > 1 {
            problems.push(format!(
                "epoch {epoch} has rows from {} writers",
                writers.len()
            ));
        }
        for (w, n) in writers {
            match holders_by_epoch.get(epoch) {
                Some(h) if h == w => {}
                Some(h) => problems.push(format!(
                    "{n} rows of epoch {epoch} were written by {w}, but {h} held that tenure"
                )),
                None => problems.push(format!("epoch {epoch} ({n} rows by {w}) was never claimed")),
            }
        }
    }
    // Inside its writing transaction, the lease was the writer's, in that
    // epoch: no row committed after its tenure ended.
    let mut stmt = conn
        .prepare(
            "SELECT rowid, worker, epoch, lease_holder, lease_epoch FROM demo_writes
             WHERE lease_holder IS NOT worker OR lease_epoch IS NOT epoch",
        )
        .map_err(sql)?;
    let outside = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<u64>>(4)?,
            ))
        })
        .map_err(sql)?;
    for row in outside {
        let (rowid, worker, epoch, holder, lease_epoch) = row.map_err(sql)?;
        problems.push(format!(
            "row {rowid} by {worker} for epoch {epoch} committed while the lease was {} at epoch {}",
            holder.as_deref().unwrap_or("vacant"),
            lease_epoch.map_or("-".into(), |e| e.to_string())
        ));
    }
    // ... and had not run out: the transaction began before the lease's
    // expiry (the demo's processes share one clock).
    let mut stmt = conn
        .prepare(
            "SELECT rowid, worker, epoch, began_ms, lease_until_ms FROM demo_writes
             WHERE lease_holder IS worker AND lease_epoch IS epoch AND began_ms >= lease_until_ms",
        )
        .map_err(sql)?;
    let late = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(sql)?;
    for row in late {
        let (rowid, worker, epoch, began, until) = row.map_err(sql)?;
        problems.push(format!(
            "row {rowid} by {worker} for epoch {epoch} was written in a transaction begun {} ms after the lease ran out",
            began - until
        ));
    }
    // In commit order, epochs never go back.
    let mut stmt = conn
        .prepare("SELECT rowid, epoch FROM demo_writes ORDER BY rowid")
        .map_err(sql)?;
    let mut highest = 0;
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u64>(1)?)))
        .map_err(sql)?
    {
        let (rowid, epoch) = row.map_err(sql)?;
        if epoch < highest {
            problems.push(format!(
                "row {rowid} of epoch {epoch} committed after a row of epoch {highest}"
            ));
        }
        highest = highest.max(epoch);
    }
    Ok(Verdict {
        rows_per_epoch,
        holders_by_epoch,
        problems,
    })
}

fn secs(d: Duration) -> String {
    format!("{:>7.3}s", d.as_secs_f64())
}

fn print_moment(m: &Moment) {
    let what = match &m.what {
        What::Leads(e) => format!("leads (epoch {e})"),
        What::StepsDown => "steps down (its lease can no longer be guaranteed)".into(),
        What::Wrote(e) => format!("write accepted (epoch {e})"),
        What::Refused(e, why) => format!("write REFUSED (epoch {e}): {why}"),
        What::Killed => "SIGKILL".into(),
        What::Paused(d) => format!(
            "SIGSTOP for {:.1}s (longer than its lease)",
            d.as_secs_f64()
        ),
        What::Resumed => "SIGCONT".into(),
        What::Joined => "starts".into(),
        What::Replaces(w) => format!("joins, replacing {w}"),
    };
    println!("{}  {:<9} {what}", secs(m.at), m.who);
}

/// Runs the demo on `db` (from an explicit `--db`; `LEASEHOLD_DB` is not
/// used, since the demo rewrites its table), or on a fresh temporary file.
pub fn demo(global_db: Option<&PathBuf>, args: DemoArgs, out: Output) -> Result<u8, CliError> {
    let tmp;
    let (db, temporary) = match global_db {
        Some(p) => (p.clone(), false),
        None => {
            tmp = tempfile::tempdir()?;
            (tmp.path().join("demo.db"), true)
        }
    };
    let (guarantee, interval, phase) = if args.short {
        (
            Duration::from_millis(150),
            Duration::from_millis(15),
            Duration::from_millis(900),
        )
    } else {
        (
            Duration::from_millis(250),
            Duration::from_millis(25),
            Duration::from_millis(2500),
        )
    };
    let lease = guarantee * 2;
    let engine = Engine::open(&db)?;
    engine
        .connection()?
        .execute_batch(DEMO_TABLE)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let key: Key = leasehold::leadership::key(APP)?;
    if !out.quiet {
        println!(
            "leasehold demo: {} worker processes lead {key} in {}{}",
            args.workers,
            db.display(),
            if temporary {
                " (temporary; pass --db PATH to keep it)"
            } else {
                ""
            }
        );
        println!(
            "each claims {}ms leases renewed every {}ms, and writes a row every {}ms only through a guarded transaction\n",
            lease.as_millis(),
            guarantee.as_millis(),
            (interval * 2).as_millis()
        );
    }
    let (tx, reports) = mpsc::channel();
    let start = Instant::now();
    let mut moments: Vec<Moment> = Vec::new();
    let mut workers: Vec<Worker> = Vec::new();
    let mut next_id = 1;
    for _ in 0..args.workers {
        let name = format!("worker-{next_id}");
        next_id += 1;
        workers.push(spawn_worker(&db, &name, guarantee, interval, &tx)?);
    }
    // Records reports until `until`, or until one from `stop_at` says it is
    // working (then returns true).
    let collect = |moments: &mut Vec<Moment>, until: Instant, stop_at: Option<&str>| -> bool {
        while let Ok((who, at, r)) =
            reports.recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            let what = match r {
                Report::Working { .. } if stop_at == Some(who.as_str()) => return true,
                Report::Started if who_replaces(moments, &who) => continue,
                Report::Working { .. } => continue,
                Report::Leader { epoch } => What::Leads(epoch),
                Report::Minion => What::StepsDown,
                Report::Wrote { epoch, .. } => What::Wrote(epoch),
                Report::Refused { epoch, reason, .. } => What::Refused(epoch, reason),
                Report::Started => What::Joined,
                Report::Stopped => continue,
            };
            moments.push(Moment {
                at: at - start,
                who,
                what,
            });
        }
        false
    };
    let leader_of = |workers: &[Worker]| -> Result<Option<usize>, CliError> {
        let holder = engine
            .lease(&key)?
            .and_then(|l| l.holder().map(str::to_owned));
        Ok(holder.and_then(|h| workers.iter().position(|w| w.name == h)))
    };
    let wait_for_leader = |workers: &[Worker]| -> Result<usize, CliError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = leader_of(workers)? {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(CliError::Failed("no worker became leader".into()));
            }
            std::thread::sleep(interval);
        }
    };

    // Act 1: someone leads; kill the leader.
    collect(&mut moments, start + phase, None);
    let victim = wait_for_leader(&workers)?;
    let mut dead = workers.remove(victim);
    kill(pid(&dead), Signal::SIGKILL).map_err(|e| CliError::Failed(e.to_string()))?;
    let _ = dead.child.wait();
    moments.push(Moment {
        at: start.elapsed(),
        who: dead.name.clone(),
        what: What::Killed,
    });
    let name = format!("worker-{next_id}");
    workers.push(spawn_worker(&db, &name, guarantee, interval, &tx)?);
    moments.push(Moment {
        at: start.elapsed(),
        who: name,
        what: What::Replaces(dead.name.clone()),
    });

    // Act 2: a new leader; pause it past its lease, in the middle of its work
    // between checking leadership and writing.
    collect(&mut moments, Instant::now() + phase, None);
    let paused = wait_for_leader(&workers)?;
    let name = workers[paused].name.clone();
    if !collect(&mut moments, Instant::now() + phase, Some(&name)) {
        return Err(CliError::Failed(format!("{name} led but never wrote")));
    }
    let pause = lease * 3;
    kill(pid(&workers[paused]), Signal::SIGSTOP).map_err(|e| CliError::Failed(e.to_string()))?;
    moments.push(Moment {
        at: start.elapsed(),
        who: workers[paused].name.clone(),
        what: What::Paused(pause),
    });
    collect(&mut moments, Instant::now() + pause, None);
    kill(pid(&workers[paused]), Signal::SIGCONT).map_err(|e| CliError::Failed(e.to_string()))?;
    moments.push(Moment {
        at: start.elapsed(),
        who: workers[paused].name.clone(),
        what: What::Resumed,
    });

    // Act 3: let it settle, then stop everyone.
    collect(&mut moments, Instant::now() + phase, None);
    for w in &mut workers {
        drop(w.stdin.take()); // closing stdin stops the worker
    }
    for w in &mut workers {
        let _ = w.child.wait();
    }
    drop(tx);
    collect(
        &mut moments,
        Instant::now() + Duration::from_millis(100),
        None,
    );
    let elapsed = start.elapsed();
    moments.sort_by_key(|m| m.at);

    let verdict = verdict(&engine)?;
    let accepted = moments
        .iter()
        .filter(|m| matches!(m.what, What::Wrote(_)))
        .count();
    let refused: Vec<&Moment> = moments
        .iter()
        .filter(|m| matches!(m.what, What::Refused(..)))
        .collect();
    if !out.quiet {
        println!("timeline (accepted writes are summarised per tenure below):");
        for m in moments.iter().filter(|m| !matches!(m.what, What::Wrote(_))) {
            print_moment(m);
        }
        println!("\nrows in the database, per epoch:");
        for (epoch, writers) in &verdict.rows_per_epoch {
            let holder = verdict
                .holders_by_epoch
                .get(epoch)
                .map_or("?", String::as_str);
            let list: Vec<String> = writers.iter().map(|(w, n)| format!("{n} by {w}")).collect();
            println!(
                "  epoch {epoch:>2}  held by {holder:<9}  rows: {}",
                list.join(", ")
            );
        }
        println!(
            "\nwrites accepted: {accepted}; writes refused by guards: {} (in {:.1}s)",
            refused.len(),
            elapsed.as_secs_f64()
        );
        println!("checks, from the database:");
        println!("  - every epoch's rows come from one writer");
        println!("  - every row's writer held that epoch's tenure (per the lease history)");
        println!(
            "  - inside each writing transaction, the lease was the writer's, in that epoch, and had not run out"
        );
        println!("  - in commit order, no row of an older epoch follows a newer one");
        if verdict.problems.is_empty() {
            println!("verdict: PASS — no write landed outside its writer's tenure");
        } else {
            println!("verdict: FAIL");
            for p in &verdict.problems {
                println!("  - {p}");
            }
        }
    }
    out.json(&serde_json::json!({
        "pass": verdict.problems.is_empty(),
        "problems": verdict.problems,
        "accepted": accepted,
        "refused": refused.len(),
        "epochs": verdict.rows_per_epoch.len(),
        "seconds": elapsed.as_secs_f64(),
    }));
    if let Some(path) = &args.svg {
        std::fs::write(path, super::svg::timeline(&moments, elapsed))?;
        out.say(format!("timeline drawn to {}", path.display()));
    }
    Ok(if verdict.problems.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::ManualClock;
    use leasehold::chrono::{Duration as Span, Utc};

    #[test]
    fn the_verdict_fails_a_row_written_after_the_lease_ran_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The engine's clock is 10 s behind the wall clock: the 1 s lease
        // it grants has run out on the wall clock already, yet nobody has
        // claimed, so the row still names the writer.
        let clock = ManualClock::new(Utc::now() - Span::seconds(10));
        let engine = Engine::builder(dir.path().join("demo.db"))
            .clock(clock)
            .build()
            .expect("engine");
        let conn = engine.connection().expect("conn");
        conn.execute_batch(DEMO_TABLE).expect("table");
        let key = leasehold::leadership::key(APP).expect("key");
        let tenure = engine
            .claim(&key, "w1", Duration::from_secs(1))
            .expect("claim");
        conn.execute(
            "INSERT INTO demo_writes
                 (worker, epoch, seq, at_ms, lease_holder, lease_epoch, lease_until_ms, began_ms)
             SELECT 'w1', ?1, 1, 0, holder, epoch, max(expiry_ms, pinned_until_ms), ?2
             FROM leasehold_leases WHERE namespace = ?3 AND name = ?4",
            (
                tenure.epoch(),
                Utc::now().timestamp_millis(),
                key.namespace(),
                key.name(),
            ),
        )
        .expect("an unguarded write");
        let v = verdict(&engine).expect("verdict");
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("after the lease ran out")),
            "{:?}",
            v.problems
        );
    }
}

//! The PostgreSQL workloads of the report: each next to raw PostgreSQL
//! doing the same statements by hand, on a durable throwaway server (fsync
//! and synchronous commit on) over its Unix socket, at 1 and 16 clients.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use leasehold::postgres::client::{Client, NoTls};
use leasehold::postgres::{PgEngine, PgLeaseToken};
use leasehold::testing::{PgOptions, PgServer};
use leasehold::{Key, LeaseTicket};

use super::procs::short;

/// A durable server and a database on it, or why not.
pub fn server() -> Result<PgServer, String> {
    PgServer::start(PgOptions {
        durable: true,
        ..PgOptions::default()
    })
    .map_err(|e| e.to_string())
}

/// Per-call seconds of each side in interleaved rounds, and their ratios.
pub struct Clients {
    pub leasehold: Vec<f64>,
    pub baseline: Vec<f64>,
    pub ratio: Vec<f64>,
}

/// A worker thread's job: one call.
pub type Job = Box<dyn FnMut() + Send>;

/// `clients` threads calling their side's jobs flat out for `round` each
/// round, sides interleaved; seconds per call (wall time / calls).
pub fn measure_clients(
    clients: usize,
    rounds: usize,
    round: Duration,
    leasehold: &dyn Fn() -> Job,
    baseline: &dyn Fn() -> Job,
) -> Clients {
    let mut out = Clients {
        leasehold: Vec::new(),
        baseline: Vec::new(),
        ratio: Vec::new(),
    };
    let run = |make: &dyn Fn() -> Job| -> f64 {
        let jobs: Vec<Job> = (0..clients).map(|_| make()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(clients + 1));
        let threads: Vec<_> = jobs
            .into_iter()
            .map(|mut job| {
                let (stop, calls, start) = (stop.clone(), calls.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        job();
                        n += 1;
                    }
                    calls.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        std::thread::sleep(round);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("client");
        }
        began.elapsed().as_secs_f64() / calls.load(Ordering::Relaxed).max(1) as f64
    };
    for r in 0..rounds {
        let (l, b) = if r % 2 == 0 {
            let l = run(leasehold);
            (l, run(baseline))
        } else {
            let b = run(baseline);
            (run(leasehold), b)
        };
        out.leasehold.push(l);
        out.baseline.push(b);
        out.ratio.push(l / b);
    }
    out
}

/// The application's table: one row per client.
pub fn items(url: &str) {
    let mut c = Client::connect(url, NoTls).expect("connect");
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(0, 63) g ON CONFLICT DO NOTHING;
         CREATE TABLE IF NOT EXISTS raw_leases (namespace text, name text, holder text,
             epoch bigint NOT NULL, expiry_ms bigint NOT NULL, PRIMARY KEY (namespace, name));
         CREATE TABLE IF NOT EXISTS raw_events (id bigserial PRIMARY KEY,
             tx xid8 NOT NULL DEFAULT pg_current_xact_id(), at_ms bigint NOT NULL,
             namespace text NOT NULL, name text NOT NULL, kind text NOT NULL, holder text,
             epoch bigint NOT NULL);
         INSERT INTO raw_leases VALUES ('bench', 'raw', NULL, 0, 0) ON CONFLICT DO NOTHING;",
    )
    .expect("tables");
}

static NEXT_ROW: AtomicU64 = AtomicU64::new(0);

fn row() -> i32 {
    (NEXT_ROW.fetch_add(1, Ordering::Relaxed) % 64) as i32
}

/// A guarded `UPDATE` through the SQL fragment, each client its own row.
pub fn fragment_job(url: &str, token: &PgLeaseToken) -> Job {
    let mut c = Client::connect(url, NoTls).expect("connect");
    let guard = token.guard(2);
    let sql = format!(
        "UPDATE items SET v = v + 1 WHERE id = $1 AND {}",
        guard.sql()
    );
    let id = row();
    Box::new(move || {
        let mut tx = c.transaction().expect("begin");
        let mut params: Vec<&(dyn leasehold::postgres::client::types::ToSql + Sync)> = vec![&id];
        params.extend(guard.params());
        let n = tx.execute(sql.as_str(), &params).expect("update");
        assert_eq!(n, 1, "the guard holds");
        tx.commit().expect("commit");
    })
}

/// A guarded `UPDATE` after `check_in`.
pub fn check_in_job(url: &str, token: &PgLeaseToken) -> Job {
    let mut c = Client::connect(url, NoTls).expect("connect");
    let token = token.clone();
    let id = row();
    Box::new(move || {
        let mut tx = c.transaction().expect("begin");
        token.check_in(&mut tx).expect("guard");
        tx.execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&id])
            .expect("update");
        tx.commit().expect("commit");
    })
}

/// A guarded `UPDATE` through the SQL fragment as a statement prepared
/// once (as applications that prepare their statements run it).
pub fn prepared_fragment_job(url: &str, token: &PgLeaseToken) -> Job {
    let mut c = Client::connect(url, NoTls).expect("connect");
    let guard = token.guard(2);
    let statement = c
        .prepare(&format!(
            "UPDATE items SET v = v + 1 WHERE id = $1 AND {}",
            guard.sql()
        ))
        .expect("prepare");
    let id = row();
    Box::new(move || {
        let mut tx = c.transaction().expect("begin");
        let mut params: Vec<&(dyn leasehold::postgres::client::types::ToSql + Sync)> = vec![&id];
        params.extend(guard.params());
        let n = tx.execute(&statement, &params).expect("update");
        assert_eq!(n, 1, "the guard holds");
        tx.commit().expect("commit");
    })
}

/// The same `UPDATE`, bare, prepared once.
pub fn prepared_bare_job(url: &str) -> Job {
    let mut c = Client::connect(url, NoTls).expect("connect");
    let statement = c
        .prepare("UPDATE items SET v = v + 1 WHERE id = $1")
        .expect("prepare");
    let id = row();
    Box::new(move || {
        let mut tx = c.transaction().expect("begin");
        tx.execute(&statement, &[&id]).expect("update");
        tx.commit().expect("commit");
    })
}

/// The same `UPDATE`, bare.
pub fn bare_job(url: &str) -> Job {
    let mut c = Client::connect(url, NoTls).expect("connect");
    let id = row();
    Box::new(move || {
        let mut tx = c.transaction().expect("begin");
        tx.execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&id])
            .expect("update");
        tx.commit().expect("commit");
    })
}

/// A claim that begins a tenure and its release, through the engine: two
/// transactions, each locking the row, writing it and a history row, then
/// a notice.
pub fn claim_job(engine: &PgEngine) -> Job {
    let engine = engine.clone();
    let key = Key::new("bench", format!("claim-{}", row())).expect("key");
    Box::new(move || {
        engine
            .claim(&key, "bench", Duration::from_secs(60))
            .expect("claim");
        engine.release(&key, "bench").expect("release");
    })
}

/// The same rows written by hand: per transaction, lock the row, update
/// it, log the event, commit, notify.
pub fn raw_claim_job(url: &str) -> Job {
    let mut c = Client::connect(url, NoTls).expect("connect");
    let name = format!("raw-{}", row());
    c.execute(
        "INSERT INTO raw_leases VALUES ('bench', $1, NULL, 0, 0) ON CONFLICT DO NOTHING",
        &[&name],
    )
    .expect("row");
    let lock = c
        .prepare(
            "SELECT holder, epoch, expiry_ms, (extract(epoch FROM clock_timestamp()) * 1000)::int8
             FROM raw_leases WHERE namespace = 'bench' AND name = $1 FOR UPDATE",
        )
        .expect("prepare");
    let update = c
        .prepare(
            "UPDATE raw_leases SET holder = $2, epoch = $3, expiry_ms = $4
             WHERE namespace = 'bench' AND name = $1",
        )
        .expect("prepare");
    let log = c
        .prepare(
            "INSERT INTO raw_events (at_ms, namespace, name, kind, holder, epoch)
             VALUES ($1, 'bench', $2, $3, $4, $5)",
        )
        .expect("prepare");
    let notify = c.prepare("SELECT pg_notify('raw', $1)").expect("prepare");
    Box::new(move || {
        for (holder, kind) in [(Some("bench"), "claimed"), (None, "released")] {
            let mut tx = c.transaction().expect("begin");
            let r = tx.query_one(&lock, &[&name]).expect("lock");
            let (epoch, now): (i64, i64) = (r.get(1), r.get(3));
            let epoch = if holder.is_some() { epoch + 1 } else { epoch };
            tx.execute(&update, &[&name, &holder, &epoch, &(now + 60_000)])
                .expect("update");
            tx.execute(&log, &[&now, &name, &kind, &holder, &epoch])
                .expect("log");
            tx.commit().expect("commit");
            c.execute(&notify, &[&name]).expect("notify");
        }
    })
}

/// Renewals of a tracker with `guarantee` while `clients` threads run
/// `check_in` guarded writes with its token flat out for `window`: (times
/// it lost leadership, renewals seen, guarded writes).
pub fn renewals_under_load(
    url: &str,
    engine: &PgEngine,
    clients: usize,
    guarantee: Duration,
    window: Duration,
) -> (u32, u32, u64) {
    let key = Key::new("bench", "renewed").expect("key");
    let tracker = engine
        .tracker(&key, "leader")
        .guarantee(guarantee)
        .build()
        .expect("tracker");
    assert!(tracker.wait_leader().wait());
    let token = tracker.token().expect("leading");
    let lost: LeaseTicket = tracker.wait_minion();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut job = check_in_job(url, &token);
            let (stop, writes) = (stop.clone(), writes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    job();
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let began = Instant::now();
    let mut renewals = 0;
    let mut until = tracker.lease_until();
    while began.elapsed() < window {
        std::thread::sleep(Duration::from_millis(10));
        let now = tracker.lease_until();
        if now.is_some() && now != until {
            renewals += 1;
            until = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        // A client whose guard failed (the lease lost) panics: counted
        // through the tracker.
        let _ = t.join();
    }
    let losses = u32::from(lost.try_wait() == Some(true));
    tracker.stop();
    (losses, renewals, writes.load(Ordering::Relaxed))
}

/// The hand-over roles, run in helper processes: `pg-successor` tracks the
/// key and says when it leads; `pg-doomed` claims for 100 ms and waits to
/// be killed.
pub fn serve(role: &str, url: &str) -> bool {
    let key = Key::new("bench", "handover").expect("key");
    let out = |line: String| {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}").expect("write");
        o.flush().expect("flush");
    };
    match role {
        "pg-successor" => {
            let engine = PgEngine::connect(url).expect("connect");
            for line in std::io::stdin().lock().lines() {
                if line.expect("stdin").trim() != "track" {
                    continue;
                }
                let tracker = engine
                    .tracker(&key, "successor")
                    .guarantee(Duration::from_secs(10))
                    .build()
                    .expect("tracker");
                assert!(!tracker.claim_leader().wait(), "the bench holds the lease");
                out("minion".into());
                assert!(tracker.wait_leader().wait());
                out(format!("led {}", super::procs::wall_ns()));
                tracker.stop();
                out("released".into());
            }
            true
        }
        "pg-doomed" => {
            let engine = PgEngine::connect(url).expect("connect");
            let tenure = engine
                .claim(&key, "doomed", Duration::from_millis(100))
                .expect("claim");
            let expiry_ns = tenure.expires_at().timestamp_nanos_opt().expect("ns");
            out(format!("claimed {expiry_ns}"));
            std::thread::sleep(Duration::from_secs(3600));
            true
        }
        _ => false,
    }
}

/// Rounds and round length of the multi-client figures.
pub fn shape() -> (usize, Duration) {
    if short() {
        (3, Duration::from_millis(300))
    } else {
        (7, Duration::from_secs(2))
    }
}

//! Workloads shared by the criterion benches and the `report` bench: each is
//! a pair of closures doing the same job once, through leasehold and through
//! raw rusqlite (WAL, prepared statements), on files in one temp dir.
#![allow(dead_code)]

pub mod pg;
pub mod procs;

use std::path::Path;
use std::time::{Duration, Instant};

use leasehold::rusqlite::{Connection, TransactionBehavior, params, params_from_iter};
use std::sync::atomic::{AtomicI64, Ordering};

use leasehold::{Clock, Engine, Key, LeaseToken, Synchronous, Txn};

/// One job done two ways.
pub struct Pair {
    pub name: &'static str,
    pub leasehold: Box<dyn FnMut()>,
    pub baseline: Box<dyn FnMut()>,
}

pub const UPDATE: &str = "UPDATE items SET v = v + 1 WHERE id = 1";

fn items(conn: &Connection) {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT OR IGNORE INTO items VALUES (1, 0);",
    )
    .expect("items");
}

/// A plain connection as an application would open it.
pub fn raw(path: &Path, sync: &str) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", sync).expect("sync");
    conn.set_prepared_statement_cache_capacity(64);
    items(&conn);
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (namespace TEXT NOT NULL, name TEXT NOT NULL,
             holder TEXT, epoch INTEGER NOT NULL, expiry_ms INTEGER NOT NULL,
             PRIMARY KEY (namespace, name)) WITHOUT ROWID;",
    )
    .expect("kv");
    conn
}

pub fn engine(path: &Path, sync: Synchronous) -> Engine {
    let engine = Engine::builder(path)
        .synchronous(sync)
        .build()
        .expect("engine");
    items(&engine.connection().expect("conn"));
    engine
}

/// A clock that moves a millisecond at every reading, so that every write
/// changes its row (as real renewals do, a lease period apart). SQLite skips
/// writing a page whose content did not change, so a benchmark that renews
/// within one millisecond would measure almost no I/O.
#[derive(Debug)]
pub struct TickingClock(AtomicI64);

impl Clock for TickingClock {
    fn now(&self) -> leasehold::chrono::DateTime<leasehold::chrono::Utc> {
        let ms = self.0.fetch_add(1, Ordering::Relaxed);
        leasehold::chrono::DateTime::from_timestamp_millis(ms).expect("time")
    }
}

pub fn ticking_engine(path: &Path) -> Engine {
    Engine::builder(path)
        .clock(TickingClock(AtomicI64::new(now_ms())))
        .build()
        .expect("engine")
}

/// A counter standing in for the raw side's clock, a millisecond per call.
pub struct Tick(i64);

impl Tick {
    pub fn new() -> Tick {
        Tick(now_ms())
    }
    pub fn next(&mut self) -> i64 {
        self.0 += 1;
        self.0
    }
}

fn exec(conn: &Connection, sql: &str) {
    conn.prepare_cached(sql)
        .expect("prepare")
        .execute([])
        .expect("exec");
}

fn bare_write(conn: &Connection) {
    exec(conn, "BEGIN IMMEDIATE");
    exec(conn, UPDATE);
    exec(conn, "COMMIT");
}

fn token(engine: &Engine) -> LeaseToken {
    engine
        .claim(
            &Key::new("bench", "writer").expect("key"),
            "me",
            Duration::from_secs(86_400),
        )
        .expect("claim")
        .token()
}

// Each side writes its own file and keeps its WAL bounded its own way: the
// baseline with SQLite's automatic checkpoints (a PASSIVE one after each
// commit once the WAL passes 1,000 frames), leasehold with its WAL hook
// (see `src/sqlite/wal.rs`). Both checkpoint about as often, and a checkpoint's
// fsyncs are a large part of the average cost of a write, so sharing one
// file would charge them to whichever side happened to cross the line.

pub fn guarded_write_txn(dir: &Path, sync: Synchronous, sync_raw: &str) -> Pair {
    let engine = engine(&dir.join(format!("txn-{sync_raw}.db")), sync);
    let bare = raw(&dir.join(format!("bare-txn-{sync_raw}.db")), sync_raw);
    let mut txn = Txn::new();
    token(&engine).add_to(&mut txn);
    txn.execute(UPDATE, ());
    Pair {
        name: "guarded write, Txn builder",
        leasehold: Box::new(move || {
            engine.commit(&txn).expect("commit");
        }),
        baseline: Box::new(move || bare_write(&bare)),
    }
}

pub fn guarded_write_check_in(dir: &Path, sync: Synchronous, sync_raw: &str) -> Pair {
    let engine = engine(&dir.join(format!("check-{sync_raw}.db")), sync);
    let token = token(&engine);
    let mut conn = engine.connection().expect("conn");
    let mut bare = raw(&dir.join(format!("bare-check-{sync_raw}.db")), sync_raw);
    Pair {
        name: "guarded write, check_in",
        leasehold: Box::new(move || {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("begin");
            token.check_in(&tx).expect("check");
            tx.prepare_cached(UPDATE)
                .expect("prepare")
                .execute([])
                .expect("update");
            tx.commit().expect("commit");
        }),
        // The same write in the same kind of rusqlite Transaction.
        baseline: Box::new(move || {
            let tx = bare
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("begin");
            tx.prepare_cached(UPDATE)
                .expect("prepare")
                .execute([])
                .expect("update");
            tx.commit().expect("commit");
        }),
    }
}

pub fn guarded_write_fragment(dir: &Path) -> Pair {
    let engine = engine(&dir.join("fragment.db"), Synchronous::Normal);
    let token = token(&engine);
    let conn = engine.connection().expect("conn");
    let bare = raw(&dir.join("bare-fragment.db"), "NORMAL");
    let guarded = format!("{UPDATE} AND {}", token.guard().sql());
    Pair {
        name: "guarded write, SQL fragment",
        leasehold: Box::new(move || {
            exec(&conn, "BEGIN IMMEDIATE");
            let guard = token.guard();
            let n = conn
                .prepare_cached(&guarded)
                .expect("prepare")
                .execute(params_from_iter(guard.params()))
                .expect("update");
            assert_eq!(n, 1);
            exec(&conn, "COMMIT");
        }),
        baseline: Box::new(move || bare_write(&bare)),
    }
}

const UPSERT: &str = "INSERT INTO kv (namespace, name, holder, epoch, expiry_ms) VALUES (?1, ?2, ?3, 1, ?4)
     ON CONFLICT (namespace, name) DO UPDATE SET holder = excluded.holder, expiry_ms = excluded.expiry_ms";

fn now_ms() -> i64 {
    leasehold::chrono::Utc::now().timestamp_millis()
}

/// What a claim bench measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClaimCase {
    /// Claiming the same key again: an extension.
    Extend,
    /// A new tenure, then its release; the baseline writes one row per
    /// transaction.
    NewTenure,
    /// The same, but the baseline also writes what leasehold writes: a log
    /// row per transition besides the lease row.
    NewTenureLogged,
}

/// One claim per transaction; [`ClaimCase::Extend`] keeps claiming the same
/// key (an extension), otherwise each claim takes a released key (a new
/// tenure, logged in the history, then released). Time moves on both
/// sides, so every write changes its row.
pub fn claim(dir: &Path, case: ClaimCase) -> Pair {
    let tag = match case {
        ClaimCase::Extend => "extend",
        ClaimCase::NewTenure => "claim",
        ClaimCase::NewTenureLogged => "claim-logged",
    };
    let engine = ticking_engine(&dir.join(format!("{tag}.db")));
    let bare = raw(&dir.join(format!("bare-{tag}.db")), "NORMAL");
    bare.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv_log (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,
             namespace TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
             holder TEXT, epoch INTEGER NOT NULL)",
    )
    .expect("log table");
    let key = Key::new("bench", "k").expect("key");
    let d = Duration::from_secs(3600);
    let mut tick = Tick::new();
    let extend = case == ClaimCase::Extend;
    let logged = case == ClaimCase::NewTenureLogged;
    Pair {
        name: match case {
            ClaimCase::Extend => "extend, one per transaction",
            ClaimCase::NewTenure => "claim a new tenure, then release",
            ClaimCase::NewTenureLogged => "claim a new tenure, then release (baseline logs too)",
        },
        leasehold: Box::new(move || {
            engine.claim(&key, "me", d).expect("claim");
            if !extend {
                engine.release(&key, "me").expect("release");
            }
        }),
        baseline: Box::new(move || {
            let rounds = if extend { 1 } else { 2 };
            let now = tick.next();
            for r in 0..rounds {
                let holder = if r == 0 { Some("me") } else { None };
                exec(&bare, "BEGIN IMMEDIATE");
                bare.prepare_cached(UPSERT)
                    .expect("prepare")
                    .execute(params!["bench", "k", holder, now + 3_600_000])
                    .expect("upsert");
                if logged {
                    bare.prepare_cached(
                        "INSERT INTO kv_log (at_ms, namespace, name, kind, holder, epoch)
                         VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    )
                    .expect("prepare")
                    .execute(params![
                        now,
                        "bench",
                        "k",
                        if r == 0 { "claimed" } else { "released" },
                        "me"
                    ])
                    .expect("log");
                }
                exec(&bare, "COMMIT");
            }
        }),
    }
}

/// A holder renewing the tenure it holds, one per transaction
/// (`Engine::extend`).
pub fn extend_tenure(dir: &Path) -> Pair {
    let engine = ticking_engine(&dir.join("extend-tenure.db"));
    let bare = raw(&dir.join("bare-extend-tenure.db"), "NORMAL");
    let d = Duration::from_secs(3600);
    let tenure = engine
        .claim(&Key::new("bench", "k").expect("key"), "me", d)
        .expect("claim");
    let mut tick = Tick::new();
    Pair {
        name: "renew a held tenure, one per transaction",
        leasehold: Box::new(move || {
            engine.extend(&tenure, d).expect("extend");
        }),
        baseline: Box::new(move || {
            let now = tick.next();
            exec(&bare, "BEGIN IMMEDIATE");
            bare.prepare_cached(UPSERT)
                .expect("prepare")
                .execute(params!["bench", "k", "me", now + 3_600_000])
                .expect("upsert");
            exec(&bare, "COMMIT");
        }),
    }
}

/// 100 renewals in one transaction (per call), time moving a millisecond
/// per call.
pub fn batched_renewals(dir: &Path) -> Pair {
    let engine = ticking_engine(&dir.join("batch.db"));
    let bare = raw(&dir.join("bare-batch.db"), "NORMAL");
    let keys: Vec<Key> = (0..100)
        .map(|i| Key::new("bench", format!("k{i}")).expect("key"))
        .collect();
    let names: Vec<String> = keys.iter().map(|k| k.name().to_owned()).collect();
    let d = Duration::from_secs(3600);
    let tenures: Vec<leasehold::Tenure> = keys
        .iter()
        .map(|k| engine.claim(k, "me", d).expect("claim"))
        .collect();
    let mut tick = Tick::new();
    Pair {
        name: "100 renewals per transaction",
        // What a tracker's background thread does: extend known tenures.
        leasehold: Box::new(move || {
            for r in engine.extend_all(&tenures, d).expect("extend") {
                r.expect("held");
            }
        }),
        baseline: Box::new(move || {
            exec(&bare, "BEGIN IMMEDIATE");
            let expiry = tick.next() + 3_600_000;
            let mut stmt = bare.prepare_cached(UPSERT).expect("prepare");
            for n in &names {
                stmt.execute(params!["bench", n, "me", expiry])
                    .expect("upsert");
            }
            drop(stmt);
            exec(&bare, "COMMIT");
        }),
    }
}

pub fn token_check(dir: &Path) -> Pair {
    let engine = engine(&dir.join("check.db"), Synchronous::Normal);
    let token = token(&engine);
    let bare = raw(&dir.join("bare-select.db"), "NORMAL");
    bare.prepare_cached(UPSERT)
        .expect("prepare")
        .execute(params!["bench", "writer", "me", i64::MAX / 2])
        .expect("row");
    Pair {
        name: "standalone token check",
        leasehold: Box::new(move || token.check().expect("check")),
        baseline: Box::new(move || {
            let ok: bool = bare
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM kv WHERE namespace = ?1 AND name = ?2
                     AND holder = ?3 AND expiry_ms > ?4)",
                )
                .expect("prepare")
                .query_row(params!["bench", "writer", "me", now_ms()], |r| r.get(0))
                .expect("select");
            assert!(ok);
        }),
    }
}

/// `get` and `list` of a 100-lease namespace, in a table of `total` leases;
/// the pair is (table of `total`, table of 100).
pub fn reads(dir: &Path, total: usize, list: bool) -> Pair {
    let make = |name: &str, n: usize| {
        let engine = engine(&dir.join(name), Synchronous::Normal);
        let mut conn = engine.connection().expect("conn");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        {
            let ops = engine.in_txn(&tx).expect("ops");
            for i in 0..n {
                // The namespace read is "app" (100 keys); the rest fill "other-*".
                let ns = if i < 100 {
                    "app".to_owned()
                } else {
                    format!("other-{}", i % 97)
                };
                ops.claim(
                    &Key::new(ns, format!("k{i:06}")).expect("key"),
                    "me",
                    Duration::from_secs(86_400),
                )
                .expect("claim");
            }
        }
        tx.commit().expect("commit");
        drop(conn);
        engine
    };
    let big = make(&format!("reads-{total}-{list}.db"), total);
    let small = make(&format!("reads-100-{list}.db"), 100);
    let key = Key::new("app", "k000042").expect("key");
    let (k1, k2) = (key.clone(), key);
    Pair {
        name: if list {
            "list a namespace of 100"
        } else {
            "get one lease"
        },
        leasehold: Box::new(move || {
            if list {
                assert_eq!(big.leases("app").expect("list").len(), 100);
            } else {
                assert!(big.lease(&k1).expect("get").is_some());
            }
        }),
        baseline: Box::new(move || {
            if list {
                assert_eq!(small.leases("app").expect("list").len(), 100);
            } else {
                assert!(small.lease(&k2).expect("get").is_some());
            }
        }),
    }
}

/// Median seconds per call of each side, and the median of the rounds'
/// time ratios (leasehold / baseline), measured in interleaved rounds so
/// that drift on a shared machine hits both alike.
pub fn measure(pair: &mut Pair, rounds: usize, budget: Duration) -> Figure {
    // Calibrate: how many calls make a round of about budget / rounds / 2.
    let target = budget.as_secs_f64() / rounds as f64 / 2.0;
    let mut n = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            (pair.leasehold)();
        }
        if t.elapsed().as_secs_f64() >= target / 4.0 || n >= 1 << 20 {
            let per = t.elapsed().as_secs_f64() / n as f64;
            n = ((target / per) as usize).max(1);
            break;
        }
        n *= 4;
    }
    let mut f = Figure::default();
    let time = |side: &mut Box<dyn FnMut()>| {
        let t = Instant::now();
        for _ in 0..n {
            side();
        }
        t.elapsed().as_secs_f64() / n as f64
    };
    for round in 0..rounds {
        // Which side goes first alternates, so that what one side leaves
        // behind (a WAL due for a checkpoint, a busy disk) falls on each
        // side alike.
        let (l, b) = if round % 2 == 0 {
            let l = time(&mut pair.leasehold);
            (l, time(&mut pair.baseline))
        } else {
            let b = time(&mut pair.baseline);
            (time(&mut pair.leasehold), b)
        };
        f.leasehold.push(l);
        f.baseline.push(b);
        f.ratio.push(l / b);
    }
    f
}

/// Seconds per call of each interleaved round, both sides, and their
/// per-round ratios (leasehold / baseline).
#[derive(Debug, Default, Clone)]
pub struct Figure {
    pub leasehold: Vec<f64>,
    pub baseline: Vec<f64>,
    pub ratio: Vec<f64>,
}

/// Median, minimum and maximum of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// The same spread through `f` (monotone decreasing `f` swaps the ends).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Spread {
        let (a, b) = (f(self.min), f(self.max));
        Spread {
            median: f(self.median),
            min: a.min(b),
            max: a.max(b),
        }
    }
}

//! Guarded writes — the leader's write that commits only while it holds
//! leadership — side by side at several client counts, every system
//! durable, in alternating rounds:
//!
//! - leasehold on SQLite: `BEGIN IMMEDIATE`, `LeaseToken::check_in`, the
//!   `UPDATE`, `COMMIT`; `synchronous=FULL` (fsync per commit);
//! - leasehold on PostgreSQL (loopback TCP, `fsync=on`,
//!   `synchronous_commit=on`): `BEGIN`, the `UPDATE … AND <guard>` with the
//!   token's SQL fragment (`LeaseToken::guard`, prepared), `COMMIT` — the
//!   write inside the caller's transaction, as the report measures it;
//! - the same guarded `UPDATE` sent alone (its own transaction: one round
//!   trip, as etcd's `Txn` is);
//! - raw PostgreSQL: the same `UPDATE` without the guard, in a bare
//!   transaction;
//! - etcd through its gRPC client (`etcd-client`): a `Txn` comparing the
//!   leader key's create revision and putting the value, one round trip;
//!   etcd fsyncs its WAL before it answers.
//!
//! Each client is a thread writing its own row or key flat out. On
//! PostgreSQL each has a connection of its own (the `postgres` client
//! drives a current-thread tokio runtime per connection); etcd's clients
//! share one `etcd_client::Client` (one HTTP/2 connection, as that crate
//! is meant to be used) unless `PEERS_ETCD_CONNECTIONS=per-client`.
//!
//! Environment: `PEERS_PG` (a libpq connection string), `PEERS_ETCD`
//! (host:port), `PEERS_CLIENTS` (default `1,4,16`), `PEERS_ROUNDS`
//! (default 9), `PEERS_ROUND_MS` (default 2000). `run.sh` starts both
//! servers and sets the first two.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use leasehold::postgres::client::types::ToSql;
use leasehold::postgres::client::{Client, NoTls};
use leasehold::postgres::{PgEngine, PgLeaseToken};
use leasehold::rusqlite::TransactionBehavior;
use leasehold::{Engine, Key, LeaseToken, Synchronous};

type Error = Box<dyn std::error::Error>;

/// One client's write, called flat out.
type Job = Box<dyn FnMut() + Send>;

/// Makes client `i`'s job (connected, ready) for a round.
type Maker = Box<dyn Fn(usize) -> Job>;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Error> {
    let clients: Vec<usize> = std::env::var("PEERS_CLIENTS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let rounds: usize = env("PEERS_ROUNDS", 9);
    let round = Duration::from_millis(env("PEERS_ROUND_MS", 2000));
    let max_clients = clients.iter().copied().max().unwrap_or(1);

    let dir = tempfile::tempdir()?;
    let mut systems: Vec<(&str, Maker)> = vec![("leasehold, SQLite FULL", sqlite(dir.path(), max_clients)?)];
    match std::env::var("PEERS_PG") {
        Ok(url) => {
            let (txn, alone, raw) = postgres(&url)?;
            systems.push((LH_PG, txn));
            systems.push(("leasehold, PostgreSQL, UPDATE alone", alone));
            systems.push(("raw PostgreSQL, bare txn", raw));
        }
        Err(_) => eprintln!("PEERS_PG not set: PostgreSQL skipped"),
    }
    match std::env::var("PEERS_ETCD") {
        Ok(addr) => systems.push((ETCD, etcd(&addr)?)),
        Err(_) => eprintln!("PEERS_ETCD not set: etcd skipped"),
    }

    // rates[c][s]: one figure per round.
    let mut rates = vec![vec![Vec::new(); systems.len()]; clients.len()];
    for (c, &n) in clients.iter().enumerate() {
        for r in 0..rounds {
            // Alternate the order: forwards on even rounds, backwards on odd.
            let order: Vec<usize> = if r % 2 == 0 {
                (0..systems.len()).collect()
            } else {
                (0..systems.len()).rev().collect()
            };
            for s in order {
                let (name, make) = &systems[s];
                let rate = measure(n, round, make);
                eprintln!("{n:>2} clients, round {r}: {name}: {rate:.0}/s");
                rates[c][s].push(rate);
            }
        }
    }

    let spread = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "\nguarded writes/s, durable; median of {rounds} alternating {:.1} s rounds (min–max)\n",
        round.as_secs_f64()
    );
    print!("| system |");
    for n in &clients {
        print!(" {n} client{} |", if *n == 1 { "" } else { "s" });
    }
    print!("\n|---|");
    for _ in &clients {
        print!("---|");
    }
    println!();
    for (s, (name, _)) in systems.iter().enumerate() {
        print!("| {name} |");
        for c in 0..clients.len() {
            let (m, lo, hi) = spread(&rates[c][s]);
            print!(" {m:.0} ({lo:.0}–{hi:.0}) |");
        }
        println!();
    }
    let find = |name: &str| systems.iter().position(|(n, _)| *n == name);
    if let Some(e) = find(ETCD) {
        for s in (0..systems.len()).filter(|&s| s != e) {
            print!("| {} ÷ etcd |", systems[s].0);
            for c in 0..clients.len() {
                // Per round (the two ran minutes apart at most), then the
                // median and spread of those ratios.
                let ratios: Vec<f64> = rates[c][s]
                    .iter()
                    .zip(&rates[c][e])
                    .map(|(a, b)| a / b)
                    .collect();
                let (m, lo, hi) = spread(&ratios);
                print!(" {m:.2}× ({lo:.2}–{hi:.2}) |");
            }
            println!();
        }
    }
    Ok(())
}

const LH_PG: &str = "leasehold, PostgreSQL, in a txn";
const ETCD: &str = "etcd, gRPC Txn";

/// `clients` threads running their jobs flat out for `round`; writes per
/// second over the wall time from the start until the last one stopped.
fn measure(clients: usize, round: Duration, make: &Maker) -> f64 {
    let jobs: Vec<Job> = (0..clients).map(make).collect();
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
    calls.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
}

fn sqlite(dir: &std::path::Path, clients: usize) -> Result<Maker, Error> {
    let engine = Engine::builder(dir.join("leasehold.db"))
        .synchronous(Synchronous::Full)
        .pool_size(u32::try_from(clients)? + 2)
        .busy_timeout(Duration::from_secs(30))
        .build()?;
    let token: LeaseToken = engine
        .claim(&Key::new("peers", "leader")?, "me", Duration::from_secs(86_400))?
        .token();
    engine.connection()?.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < 63)
         INSERT INTO items SELECT i, 0 FROM g;",
    )?;
    Ok(Box::new(move |i| {
        let mut conn = engine.connection().expect("connection");
        let token = token.clone();
        let id = i as i64;
        Box::new(move || {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("begin");
            token.check_in(&tx).expect("leader");
            tx.prepare_cached("UPDATE items SET v = v + 1 WHERE id = ?1")
                .expect("prepare")
                .execute([id])
                .expect("update");
            tx.commit().expect("commit");
        })
    }))
}

/// leasehold's guarded write in a transaction, the same guarded `UPDATE`
/// alone, and the bare `UPDATE` in a transaction.
fn postgres(url: &str) -> Result<(Maker, Maker, Maker), Error> {
    let mut c = Client::connect(url, NoTls)?;
    c.batch_execute(
        "DROP TABLE IF EXISTS items;
         CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(0, 63) g;",
    )?;
    let engine = PgEngine::connect(url)?;
    let token = engine
        .claim(&Key::new("peers", "leader")?, "me", Duration::from_secs(86_400))?
        .token();
    let guarded = |url: &str, token: &PgLeaseToken, id: i32, in_txn: bool| -> Job {
        let mut c = Client::connect(url, NoTls).expect("connect");
        let guard = token.guard(2);
        let stmt = c
            .prepare(&format!(
                "UPDATE items SET v = v + 1 WHERE id = $1 AND {}",
                guard.sql()
            ))
            .expect("prepare");
        Box::new(move || {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
            params.extend(guard.params());
            let n = if in_txn {
                let mut tx = c.transaction().expect("begin");
                let n = tx.execute(&stmt, &params).expect("update");
                tx.commit().expect("commit");
                n
            } else {
                c.execute(&stmt, &params).expect("update")
            };
            assert_eq!(n, 1, "the guard holds");
        })
    };
    let (u1, t1) = (url.to_owned(), token.clone());
    let (u2, t2) = (url.to_owned(), token);
    let u3 = url.to_owned();
    // The engine stays alive (it owns the pool that claimed) in the first.
    Ok((
        Box::new(move |i| {
            let _ = &engine;
            guarded(&u1, &t1, i as i32, true)
        }),
        Box::new(move |i| guarded(&u2, &t2, i as i32, false)),
        Box::new(move |i| {
            let mut c = Client::connect(&u3, NoTls).expect("connect");
            let stmt = c
                .prepare("UPDATE items SET v = v + 1 WHERE id = $1")
                .expect("prepare");
            let id = i as i32;
            Box::new(move || {
                let mut tx = c.transaction().expect("begin");
                let n = tx.execute(&stmt, &[&id]).expect("update");
                tx.commit().expect("commit");
                assert_eq!(n, 1);
            })
        }),
    ))
}

/// etcd's fenced write: `Txn(If(CreateRevision(leader) == rev),
/// Then(Put(item)))`, each client its own connection and key.
fn etcd(addr: &str) -> Result<Maker, Error> {
    use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The leader's key, on a lease as an election's would be; its create
    // revision is the fencing token.
    let rev = rt.block_on(async {
        let mut c = Client::connect([addr], None).await?;
        let lease = c.lease_grant(86_400, None).await?.id();
        c.delete("peers/leader", None).await?;
        let put = c
            .put("peers/leader", "me", Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok::<i64, etcd_client::Error>(put.header().expect("header").revision())
    })?;
    let addr = addr.to_owned();
    if std::env::var("PEERS_ETCD_CONNECTIONS").as_deref() != Ok("per-client") {
        // etcd-client's own way: one client (one gRPC connection, a stream
        // per request) cloned for every task, on a two-worker runtime; each
        // client thread blocks on its own request. No slower here than a
        // connection per client (PEERS_ETCD_CONNECTIONS=per-client).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let c = rt.block_on(Client::connect([addr.as_str()], None))?;
        let rt = Arc::new(rt);
        return Ok(Box::new(move |i| {
            let (rt, mut c) = (rt.clone(), c.clone());
            let key = format!("peers/items/{i}");
            let mut n = 0u64;
            Box::new(move || {
                n += 1;
                let txn = Txn::new()
                    .when([Compare::create_revision("peers/leader", CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key.as_str(), n.to_string(), None)]);
                let r = rt.block_on(c.txn(txn)).expect("txn");
                assert!(r.succeeded(), "leader");
            })
        }));
    }
    Ok(Box::new(move |i| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = rt
            .block_on(Client::connect([addr.as_str()], None))
            .expect("connect");
        let key = format!("peers/items/{i}");
        let mut n = 0u64;
        Box::new(move || {
            n += 1;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    "peers/leader",
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([TxnOp::put(key.as_str(), n.to_string(), None)]);
            let r = rt.block_on(c.txn(txn)).expect("txn");
            assert!(r.succeeded(), "leader");
        })
    }))
}

//! One client, durable writes, each gated by a leadership check inside the
//! write's own transaction, on three systems, in interleaved rounds:
//!
//! - leasehold: `LeaseToken::check_in` then the `UPDATE`, in one
//!   `BEGIN IMMEDIATE` transaction, `synchronous=FULL` (fsync per commit);
//!   also the same `UPDATE` in a bare SQLite transaction, for reference;
//! - PostgreSQL (loopback TCP, `fsync=on`, `synchronous_commit=on`): `BEGIN;
//!   SELECT … FROM leases … FOR SHARE; UPDATE …; COMMIT` with prepared
//!   statements;
//! - etcd (single node, loopback, its JSON gateway over one kept-alive HTTP
//!   connection): a `Txn` comparing the leader key's create revision, then a
//!   `Put`. etcd fsyncs its WAL on every commit.
//!
//! Environment: `PEERS_PG` (a libpq connection string) and `PEERS_ETCD`
//! (host:port); `run.sh` starts both servers and sets them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use leasehold::rusqlite::{Connection, TransactionBehavior};
use leasehold::{Engine, Key, Synchronous};

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_secs(1);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut systems: Vec<(&str, Box<dyn FnMut()>)> = vec![
        ("leasehold (SQLite, FULL)", leasehold_write(dir.path())?),
        ("bare SQLite txn (FULL)", bare_sqlite(dir.path())?),
    ];
    match std::env::var("PEERS_PG") {
        Ok(conn) => systems.push(("PostgreSQL 15", postgres_write(&conn)?)),
        Err(_) => eprintln!("PEERS_PG not set: PostgreSQL skipped"),
    }
    match std::env::var("PEERS_ETCD") {
        Ok(addr) => systems.push(("etcd", etcd_write(&addr)?)),
        Err(_) => eprintln!("PEERS_ETCD not set: etcd skipped"),
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for round in 0..ROUNDS {
        for (i, (name, write)) in systems.iter_mut().enumerate() {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < ROUND {
                write();
                n += 1;
            }
            let rate = n as f64 / start.elapsed().as_secs_f64();
            eprintln!("round {round}: {name}: {rate:.0}/s");
            rates[i].push(rate);
        }
    }
    let spread = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (ours, _, _) = spread(&rates[0]);
    println!("\nguarded writes, one client, durable; medians of {ROUNDS} interleaved 1 s rounds (min–max)\n");
    println!("| system | writes/s | leasehold ÷ system |");
    println!("|---|---|---|");
    for ((name, _), r) in systems.iter().zip(&rates) {
        let (m, lo, hi) = spread(r);
        println!("| {name} | {m:.0} ({lo:.0}–{hi:.0}) | {:.2}× |", ours / m);
    }
    Ok(())
}

fn leasehold_write(dir: &std::path::Path) -> Result<Box<dyn FnMut()>, Box<dyn std::error::Error>> {
    let engine = Engine::builder(dir.join("leasehold.db"))
        .synchronous(Synchronous::Full)
        .build()?;
    let token = engine
        .claim(&Key::new("peers", "leader")?, "me", Duration::from_secs(86_400))?
        .token();
    let mut conn = engine.connection()?;
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO items VALUES (1, 0);",
    )?;
    Ok(Box::new(move || {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        token.check_in(&tx).expect("leader");
        tx.prepare_cached("UPDATE items SET v = v + 1 WHERE id = 1")
            .expect("prepare")
            .execute([])
            .expect("update");
        tx.commit().expect("commit");
    }))
}

fn bare_sqlite(dir: &std::path::Path) -> Result<Box<dyn FnMut()>, Box<dyn std::error::Error>> {
    let mut conn = Connection::open(dir.join("bare.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO items VALUES (1, 0);",
    )?;
    Ok(Box::new(move || {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        tx.prepare_cached("UPDATE items SET v = v + 1 WHERE id = 1")
            .expect("prepare")
            .execute([])
            .expect("update");
        tx.commit().expect("commit");
    }))
}

fn postgres_write(conn: &str) -> Result<Box<dyn FnMut()>, Box<dyn std::error::Error>> {
    let mut client = postgres::Client::connect(conn, postgres::NoTls)?;
    client.batch_execute(
        "DROP TABLE IF EXISTS leases; DROP TABLE IF EXISTS items;
         CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT, expiry TIMESTAMPTZ NOT NULL);
         INSERT INTO leases VALUES ('leader', 'me', now() + interval '1 day');
         CREATE TABLE items (id INTEGER PRIMARY KEY, v BIGINT NOT NULL);
         INSERT INTO items VALUES (1, 0);",
    )?;
    let guard = client.prepare(
        "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND expiry > now() FOR SHARE",
    )?;
    let update = client.prepare("UPDATE items SET v = v + 1 WHERE id = 1")?;
    Ok(Box::new(move || {
        let mut tx = client.transaction().expect("begin");
        let held = tx.query_opt(&guard, &[&"leader", &"me"]).expect("guard");
        assert!(held.is_some(), "leader");
        tx.execute(&update, &[]).expect("update");
        tx.commit().expect("commit");
    }))
}

/// A minimal HTTP/1.1 client on one kept-alive connection: enough for
/// etcd's JSON gateway, and cheaper per request than a general client.
struct Http {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Http {
    fn connect(addr: &str) -> std::io::Result<Http> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Http {
            addr: addr.to_owned(),
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn post(&mut self, path: &str, body: &str) -> std::io::Result<serde_json::Value> {
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        self.writer.flush()?;
        let mut line = String::new();
        let mut length = 0usize;
        self.reader.read_line(&mut line)?;
        assert!(line.starts_with("HTTP/1.1 200"), "etcd said {line:?}");
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("length");
                }
            }
        }
        let mut buf = vec![0; length];
        self.reader.read_exact(&mut buf)?;
        Ok(serde_json::from_slice(&buf)?)
    }
}

fn etcd_write(addr: &str) -> Result<Box<dyn FnMut()>, Box<dyn std::error::Error>> {
    let mut http = Http::connect(addr)?;
    let leader = B64.encode("peers/leader");
    // A fresh leader key: its create revision is the put's revision.
    http.post("/v3/kv/deleterange", &format!(r#"{{"key":"{leader}"}}"#))?;
    let put = http.post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{leader}","value":"{}"}}"#, B64.encode("me")),
    )?;
    let rev = put["header"]["revision"].as_str().expect("revision").to_owned();
    let item = B64.encode("peers/items/1");
    let mut n = 0u64;
    Ok(Box::new(move || {
        n += 1;
        let body = format!(
            r#"{{"compare":[{{"key":"{leader}","target":"CREATE","result":"EQUAL","create_revision":"{rev}"}}],"success":[{{"request_put":{{"key":"{item}","value":"{}"}}}}]}}"#,
            B64.encode(n.to_string())
        );
        let r = http.post("/v3/kv/txn", &body).expect("txn");
        assert_eq!(r["succeeded"], serde_json::Value::Bool(true), "leader: {r}");
    }))
}

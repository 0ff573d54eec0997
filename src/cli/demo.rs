//! `demo`: several worker processes compete to lead one application and
//! write only through guarded transactions, while the demo kills one leader
//! and pauses another past its lease, and on PostgreSQL cuts a third one's
//! network link past its lease; then a timeline and a verdict computed from
//! the database.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Args;
use leasehold::engine::{Engine, LeaseToken};
use leasehold::postgres::client::IsolationLevel;
use leasehold::postgres::{PgEngine, Postgres};
use leasehold::{Backend, Error, Key, Txn};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::json;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{CliError, Db, Opened, Output, on_engine, output, print};

// The testing kit's TCP proxy, compiled into the command line itself: the
// demo puts one in front of each PostgreSQL worker, to cut a leader's link.
// (The library exports it with feature `testing` only, which the command
// line does not turn on; the demo uses part of it.)
#[allow(dead_code)]
#[path = "../testing/proxy.rs"]
mod proxy;
use proxy::{Proxy, Upstream};

const APP: &str = "demo-app";

/// The environment variable that hands a PostgreSQL worker its connection
/// string: never an argument, which other users of the host can read
/// (`ps`), since it may hold a password.
const WORKER_PG_URL: &str = "LEASEHOLD_DEMO_PG";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many worker processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    workers: u32,
    /// Also draw the timeline as an SVG picture.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// A shorter run (about 4 s instead of 9 s; on PostgreSQL, with its
    /// network cut, 6 s instead of 13 s), for tests.
    #[arg(long)]
    short: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The SQLite file.
    #[arg(long, required_unless_present = "pg_schema")]
    database: Option<PathBuf>,
    /// Instead: PostgreSQL, this schema, the connection string in
    /// `$LEASEHOLD_DEMO_PG`.
    #[arg(long, conflicts_with = "database")]
    pg_schema: Option<String>,
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
    // A demo killed outright (SIGKILL) cannot stop its workers: a running
    // one stops when its stdin closes, but the one it paused (SIGSTOP)
    // would stay stopped for ever. The kernel kills it instead.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let key = leasehold::leadership::key(APP)?;
    match (&args.database, &args.pg_schema) {
        (Some(path), _) => {
            let engine = leasehold::Engine::open(path)?;
            work(&engine, &args, |token, epoch, seq| {
                sqlite_write(&engine, token, &key, &args.name, epoch, seq)
            })
        }
        (None, Some(schema)) => {
            let url = std::env::var(WORKER_PG_URL).map_err(|_| {
                CliError::Usage(format!("{WORKER_PG_URL} must hold the connection string"))
            })?;
            // A session left inside a transaction (its process paused, or
            // its link cut, mid-renewal) holds the lease row, and so its
            // successor, until the server ends it: here after one lease.
            let engine = super::pg_builder(&url)
                .schema(schema)
                .idle_in_transaction_timeout(Duration::from_millis(args.guarantee_ms * 2))
                .build()?;
            let quoted = quote_ident(schema);
            work(&engine, &args, |token, epoch, seq| {
                pg_write(&engine, &quoted, token, &key, &args.name, epoch, seq)
            })
        }
        (None, None) => Err(CliError::Usage(
            "--database or --pg-schema is required".into(),
        )),
    }
}

/// The worker's loop on `engine`, writing with `write(token, epoch, seq)`.
fn work<B: Backend>(
    engine: &Engine<B>,
    args: &WorkerArgs,
    write: impl Fn(&LeaseToken<B>, u64, u64) -> Result<(), String>,
) -> Result<u8, CliError> {
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
        match write(&token, epoch, seq) {
            Ok(()) => report(&Report::Wrote { epoch, seq }),
            Err(reason) => report(&Report::Refused { epoch, seq, reason }),
        }
    }
    tracker.stop();
    report(&Report::Stopped);
    Ok(0)
}

/// One guarded row on SQLite, through a [`Txn`].
fn sqlite_write(
    engine: &leasehold::Engine,
    token: &leasehold::LeaseToken,
    key: &Key,
    worker: &str,
    epoch: u64,
    seq: u64,
) -> Result<(), String> {
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
            worker.to_owned(),
            epoch,
            seq,
            key.namespace().to_owned(),
            key.name().to_owned(),
            began_ms,
        ),
    );
    engine.commit(&txn).map(drop).map_err(|e| e.to_string())
}

/// One guarded row on PostgreSQL: the token checked inside a transaction
/// of the worker's own (`check_in`, which holds the lease row `FOR SHARE`
/// until the commit), then the row. Its `ord` follows commit order: the
/// table is locked (EXCLUSIVE, held to the commit) before the row takes
/// the next number, and at READ COMMITTED the insert's snapshot, taken
/// after the lock, sees every earlier writer's row (a `bigserial` would
/// not follow commits). As on SQLite the row records the lease as the
/// transaction sees it, and when the transaction began, by the server's
/// clock, which the lease's times are in.
fn pg_write(
    engine: &PgEngine,
    schema: &str,
    token: &LeaseToken<Postgres>,
    key: &Key,
    worker: &str,
    epoch: u64,
    seq: u64,
) -> Result<(), String> {
    let pg = |e: leasehold::postgres::client::Error| e.to_string();
    let lease = |e: Error| e.to_string();
    let mut client = engine.client().map_err(lease)?;
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .map_err(pg)?;
    token.check_in(&mut tx).map_err(lease)?;
    tx.batch_execute(&format!(
        "LOCK TABLE {schema}.demo_writes IN EXCLUSIVE MODE"
    ))
    .map_err(pg)?;
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.execute(
        &format!(
            "INSERT INTO {schema}.demo_writes
                 (ord, worker, epoch, seq, at_ms, lease_holder, lease_epoch, lease_until_ms, began_ms)
             SELECT (SELECT coalesce(max(ord), 0) + 1 FROM {schema}.demo_writes), $1, $2, $3,
                    floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                    l.holder, l.epoch, greatest(l.expiry_ms, l.pinned_until_ms),
                    floor(extract(epoch FROM transaction_timestamp()) * 1000)::bigint
             FROM (SELECT 1) AS one
             LEFT JOIN {schema}.leasehold_leases l ON l.namespace = $4 AND l.name = $5"
        ),
        &[
            &worker,
            &as_i64(epoch),
            &as_i64(seq),
            &key.namespace(),
            &key.name(),
        ],
    )
    .map_err(pg)?;
    tx.commit().map_err(pg)
}

/// `ident` as a double-quoted SQL identifier.
fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
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
    /// Its network link cut (for this long, once healed).
    Cut(Duration),
    Healed,
    Joined,
    Replaces(String),
}

/// Starts worker `name`; on PostgreSQL through `network`'s proxy of its
/// own, if the demo has one.
#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    db: &Db,
    network: Option<&mut Network>,
    name: &str,
    guarantee: Duration,
    interval: Duration,
    tx: &mpsc::Sender<(String, Instant, Report)>,
    leftovers: &Leftovers,
) -> Result<Worker, CliError> {
    let proxied = match network {
        Some(network) => Some(network.link(name)?),
        None => None,
    };
    let exe = std::env::current_exe()?;
    // Spawned and registered under the lock: a signal's clean-up either
    // sees the worker or stops the demo before it exists.
    let mut state = leftovers.lock();
    if state.abandoned {
        return Err(CliError::Failed("the demo was stopped".into()));
    }
    let mut command = Command::new(exe);
    command.arg("__demo-worker");
    match db {
        Db::Sqlite(path) => {
            command.arg("--database").arg(path);
        }
        Db::Postgres { url, schema } => {
            command
                .args(["--pg-schema", schema])
                .env(WORKER_PG_URL, proxied.as_deref().unwrap_or(url));
        }
    }
    let mut child = command
        .args(["--name", name])
        .args(["--guarantee-ms", &guarantee.as_millis().to_string()])
        .args(["--interval-ms", &interval.as_millis().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env_remove("LEASEHOLD_DB")
        .spawn()?;
    state.workers.push(child.id());
    drop(state);
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take();
    let tx = tx.clone();
    let who = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<Report>(&line)
                && tx.send((who.clone(), Instant::now(), r)).is_err()
            {
                return;
            }
        }
    });
    Ok(Worker {
        name: name.to_owned(),
        child,
        stdin,
    })
}

/// On PostgreSQL, the network between the workers and the server: a proxy
/// per worker, in the demo's process, that the demo can cut and heal.
struct Network {
    /// Where every proxy forwards to: the server.
    upstream: Upstream,
    /// The connection string, parsed: the workers' strings are made from it.
    config: leasehold::postgres::client::Config,
    proxies: Vec<(String, Proxy)>,
}

impl Network {
    /// The network to the server of `url`, or why the demo cannot put
    /// itself between the workers and that server.
    fn to(url: &str) -> Result<Network, String> {
        use leasehold::postgres::client::config::Host;
        let config: leasehold::postgres::client::Config = url
            .parse()
            .map_err(|e| format!("its connection string: {e}"))?;
        let (hosts, addrs, ports) = (
            config.get_hosts(),
            config.get_hostaddrs(),
            config.get_ports(),
        );
        if hosts.len() > 1 || addrs.len() > 1 || ports.len() > 1 {
            return Err("the connection string names several servers".into());
        }
        let port = ports.first().copied().unwrap_or(5432);
        let upstream = match (addrs.first(), hosts.first()) {
            (Some(ip), _) => Upstream::Tcp(SocketAddr::new(*ip, port)),
            (None, Some(Host::Unix(dir))) => {
                let socket = dir.join(format!(".s.PGSQL.{port}"));
                use std::os::unix::fs::FileTypeExt;
                match std::fs::metadata(&socket) {
                    Ok(m) if m.file_type().is_socket() => {}
                    Ok(_) => return Err(format!("{} is not a socket", socket.display())),
                    Err(e) => return Err(format!("{}: {e}", socket.display())),
                }
                Upstream::Unix(socket)
            }
            (None, Some(Host::Tcp(name))) => {
                // Its address; of several, the first that answers.
                let addrs: Vec<SocketAddr> = (name.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {name}: {e}"))?
                    .collect();
                let answers =
                    |a: &&SocketAddr| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok();
                let addr = match addrs.as_slice() {
                    [one] => Some(one),
                    several => several.iter().find(answers),
                };
                Upstream::Tcp(
                    *addr.ok_or_else(|| format!("no address of {name} port {port} answers"))?,
                )
            }
            (None, None) => return Err("the connection string names no host".into()),
        };
        let network = Network {
            upstream,
            config,
            proxies: Vec::new(),
        };
        // Everything a worker's string must carry, checked before any
        // worker starts.
        network.through(SocketAddr::from(([127, 0, 0, 1], 1)))?;
        Ok(network)
    }

    /// Starts worker `name`'s proxy; the connection string through it.
    fn link(&mut self, name: &str) -> Result<String, CliError> {
        let proxy = Proxy::start(self.upstream.clone())
            .map_err(|e| CliError::Failed(format!("cannot start a proxy: {e}")))?;
        let url = self.through(proxy.addr()).map_err(CliError::Failed)?;
        self.proxies.push((name.to_owned(), proxy));
        Ok(url)
    }

    /// Worker `name`'s proxy.
    fn proxy(&self, name: &str) -> Option<&Proxy> {
        self.proxies.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }

    /// The connection string, with `via` for its host and port (as
    /// key=value pairs: a URI's host cannot be swapped in place), or what
    /// it holds that a worker's string could not carry.
    fn through(&self, via: SocketAddr) -> Result<String, String> {
        use leasehold::postgres::client::config::{ChannelBinding, SslMode, SslNegotiation};
        let c = &self.config;
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        // A server's host name stays the host (TLS checks its certificate
        // against it); the proxy is the address connected to.
        let mut parts = match c.get_hosts().first() {
            Some(leasehold::postgres::client::config::Host::Tcp(name)) => vec![
                format!("host={}", quote(name)),
                format!("hostaddr={}", via.ip()),
                format!("port={}", via.port()),
            ],
            _ => vec![format!("host={}", via.ip()), format!("port={}", via.port())],
        };
        let mut text = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                parts.push(format!("{key}={}", quote(v)));
            }
        };
        text("user", c.get_user());
        let password = c.get_password().map(String::from_utf8_lossy);
        text("password", password.as_deref());
        text("dbname", c.get_dbname());
        text("options", c.get_options());
        text("application_name", c.get_application_name());
        text(
            "sslmode",
            Some(match c.get_ssl_mode() {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                SslMode::Require => "require",
                _ => return Err("its sslmode is one this demo does not know".into()),
            }),
        );
        if c.get_ssl_negotiation() != SslNegotiation::Postgres {
            return Err("it sets sslnegotiation".into());
        }
        text(
            "channel_binding",
            Some(match c.get_channel_binding() {
                ChannelBinding::Disable => "disable",
                ChannelBinding::Prefer => "prefer",
                ChannelBinding::Require => "require",
                _ => return Err("its channel_binding is one this demo does not know".into()),
            }),
        );
        let secs = |d: &Duration| d.as_secs().to_string();
        let mut number = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                parts.push(format!("{key}={v}"));
            }
        };
        number("connect_timeout", c.get_connect_timeout().map(secs));
        number("tcp_user_timeout", c.get_tcp_user_timeout().map(secs));
        number("keepalives", (!c.get_keepalives()).then(|| "0".into()));
        let idle = c.get_keepalives_idle();
        number(
            "keepalives_idle",
            (idle < Duration::from_secs(2 * 60 * 60)).then(|| secs(&idle)),
        );
        number(
            "keepalives_interval",
            c.get_keepalives_interval().as_ref().map(secs),
        );
        number(
            "keepalives_retries",
            c.get_keepalives_retries().map(|n| n.to_string()),
        );
        Ok(parts.join(" "))
    }
}

/// What a demo stopped early (by a signal, a closed stdout or an error)
/// must undo: its worker processes (one may be paused) and its temporary
/// directory.
#[derive(Clone, Default)]
struct Leftovers(Arc<Mutex<LeftoverState>>);

#[derive(Default)]
struct LeftoverState {
    workers: Vec<u32>,
    dir: Option<PathBuf>,
    abandoned: bool,
}

impl Leftovers {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeftoverState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a worker about to be waited for (its pid may be reused).
    fn forget(&self, pid: u32) {
        self.lock().workers.retain(|p| *p != pid);
    }

    /// Kills every worker, waits for them, and removes the temporary
    /// directory. Later spawns are refused.
    fn abandon(&self) {
        let mut state = self.lock();
        state.abandoned = true;
        for pid in state.workers.drain(..) {
            let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits"));
            // SIGKILL ends a stopped process too.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(dir) = state.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        // The SVG's temporary file, if it was being written.
        output::remove_partial();
    }
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

/// The table workers write to. Plain `CREATE TABLE`: the demo refuses a
/// database that has one already, and never drops anything.
const DEMO_TABLE: &str = "CREATE TABLE demo_writes (
         worker TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
         lease_holder TEXT, lease_epoch INTEGER, lease_until_ms INTEGER, began_ms INTEGER);";

/// The table on PostgreSQL, in `schema` (quoted): `ord` is the commit
/// order (see [`pg_write`]).
fn pg_demo_table(schema: &str) -> String {
    format!(
        "CREATE TABLE {schema}.demo_writes (
             ord bigint NOT NULL UNIQUE, worker text NOT NULL, epoch bigint NOT NULL,
             seq bigint NOT NULL, at_ms bigint NOT NULL, lease_holder text, lease_epoch bigint,
             lease_until_ms bigint, began_ms bigint)"
    )
}

/// One row of the demo's table, as the verdict reads it.
#[derive(Debug)]
struct Row {
    /// Its place in commit order: SQLite's rowid (one writer at a time),
    /// PostgreSQL's `ord`.
    id: i64,
    worker: String,
    epoch: u64,
    lease_holder: Option<String>,
    lease_epoch: Option<u64>,
    lease_until_ms: Option<i64>,
    began_ms: Option<i64>,
}

/// Every row of the demo's table, in commit order.
fn rows(engine: &Opened) -> Result<Vec<Row>, CliError> {
    match engine {
        Opened::Sqlite(engine) => {
            let sql = |e: leasehold::rusqlite::Error| {
                CliError::Failed(format!("reading the verdict: {e}"))
            };
            let conn = engine.connection()?;
            let mut stmt = conn
                .prepare(
                    "SELECT rowid, worker, epoch, lease_holder, lease_epoch, lease_until_ms, began_ms
                     FROM demo_writes ORDER BY rowid",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Row {
                        id: r.get(0)?,
                        worker: r.get(1)?,
                        epoch: r.get(2)?,
                        lease_holder: r.get(3)?,
                        lease_epoch: r.get(4)?,
                        lease_until_ms: r.get(5)?,
                        began_ms: r.get(6)?,
                    })
                })
                .map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)
        }
        Opened::Postgres(engine) => {
            let sql = |e: leasehold::postgres::client::Error| {
                CliError::Failed(format!("reading the verdict: {e}"))
            };
            let schema = quote_ident(engine.schema());
            let unsigned = |n: Option<i64>| n.map(|n| u64::try_from(n).unwrap_or(0));
            Ok(engine
                .client()?
                .query(
                    &format!(
                        "SELECT ord, worker, epoch, lease_holder, lease_epoch, lease_until_ms, began_ms
                         FROM {schema}.demo_writes ORDER BY ord"
                    ),
                    &[],
                )
                .map_err(sql)?
                .into_iter()
                .map(|r| Row {
                    id: r.get(0),
                    worker: r.get(1),
                    epoch: unsigned(r.get(2)).unwrap_or(0),
                    lease_holder: r.get(3),
                    lease_epoch: unsigned(r.get(4)),
                    lease_until_ms: r.get(5),
                    began_ms: r.get(6),
                })
                .collect())
        }
    }
}

/// The verdict, computed from the database alone.
pub struct Verdict {
    pub rows_per_epoch: BTreeMap<u64, Vec<(String, u64)>>,
    pub holders_by_epoch: HashMap<u64, String>,
    pub problems: Vec<String>,
}

/// Judges `rows` (in commit order) against the demo lease's history on
/// `engine`.
fn verdict<B: Backend>(engine: &Engine<B>, rows: &[Row]) -> Result<Verdict, CliError> {
    let mut grouped: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    for row in rows {
        *grouped
            .entry(row.epoch)
            .or_default()
            .entry(row.worker.clone())
            .or_default() += 1;
    }
    let rows_per_epoch: BTreeMap<u64, Vec<(String, u64)>> = grouped
        .into_iter()
        .map(|(epoch, writers)| (epoch, writers.into_iter().collect()))
        .collect();
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
    let inside = |r: &Row| {
        r.lease_holder.as_deref() == Some(r.worker.as_str()) && r.lease_epoch == Some(r.epoch)
    };
    for r in rows.iter().filter(|r| !inside(r)) {
        problems.push(format!(
            "row {} by {} for epoch {} committed while the lease was {} at epoch {}",
            r.id,
            r.worker,
            r.epoch,
            r.lease_holder.as_deref().unwrap_or("vacant"),
            r.lease_epoch.map_or("-".into(), |e| e.to_string())
        ));
    }
    // ... and had not run out: the transaction began before the lease's
    // expiry (the demo's processes share one clock; on PostgreSQL both are
    // the server's).
    for r in rows.iter().filter(|r| inside(r)) {
        if let (Some(began), Some(until)) = (r.began_ms, r.lease_until_ms)
            && began >= until
        {
            problems.push(format!(
                "row {} by {} for epoch {} was written in a transaction begun {} ms after the lease ran out",
                r.id,
                r.worker,
                r.epoch,
                began - until
            ));
        }
    }
    // In commit order, epochs never go back.
    let mut highest = 0;
    for r in rows {
        if r.epoch < highest {
            problems.push(format!(
                "row {} of epoch {} committed after a row of epoch {highest}",
                r.id, r.epoch
            ));
        }
        highest = highest.max(r.epoch);
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
        What::Cut(d) => format!(
            "link CUT for {:.1}s (longer than its lease): nothing it sends arrives, nothing is closed",
            d.as_secs_f64()
        ),
        What::Healed => "link healed: what it sent meanwhile arrives now".into(),
        What::Joined => "starts".into(),
        What::Replaces(w) => format!("joins, replacing {w}"),
    };
    print::line(&format!("{}  {:<9} {what}", secs(m.at), m.who));
}

/// One moment as a JSON object, with its `kind`.
fn moment_json(m: &Moment) -> serde_json::Value {
    let mut v = json!({
        "at_ms": m.at.as_micros() as f64 / 1000.0,
        "worker": m.who,
    });
    let (kind, extra) = match &m.what {
        What::Leads(e) => ("leads", json!({ "epoch": e })),
        What::StepsDown => ("steps_down", json!({})),
        What::Wrote(e) => ("wrote", json!({ "epoch": e })),
        What::Refused(e, why) => ("refused", json!({ "epoch": e, "reason": why })),
        What::Killed => ("killed", json!({ "signal": "SIGKILL" })),
        What::Paused(d) => (
            "paused",
            json!({ "signal": "SIGSTOP", "for_ms": d.as_millis() as u64 }),
        ),
        What::Resumed => ("resumed", json!({ "signal": "SIGCONT" })),
        What::Cut(d) => (
            "cut",
            json!({ "fault": "network", "for_ms": d.as_millis() as u64 }),
        ),
        What::Healed => ("healed", json!({ "fault": "network" })),
        What::Joined => ("joined", json!({})),
        What::Replaces(w) => ("replaces", json!({ "replaced": w })),
    };
    v["kind"] = json!(kind);
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

/// Refuses (before anything is changed) an existing `--db` the demo could
/// only run on by changing what it did not create: a file that is not a
/// SQLite database, one with a `demo_writes` table of its own, one whose
/// demo lease someone holds or pins, one whose leasehold schema is older
/// (the demo would migrate it). Read through a read-only connection.
fn inspect(db: &Path) -> Result<(), CliError> {
    use leasehold::rusqlite::{self, Connection, OpenFlags, OptionalExtension};
    if !db.exists() {
        return Ok(());
    }
    if db.is_dir() {
        return Err(CliError::Invalid(format!(
            "refusing to run the demo on {}: it is a directory",
            db.display()
        )));
    }
    super::not_special(db)?;
    let refuse = |why: String| {
        CliError::Invalid(format!(
            "refusing to run the demo on {}: {why}; the demo changes nothing it did not create (pass another --db, or none for a temporary file)",
            db.display()
        ))
    };
    let failed = |e: rusqlite::Error| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            refuse("it is not a SQLite database".into())
        } else {
            CliError::Failed(format!("cannot read {}: {e}", db.display()))
        }
    };
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(failed)?;
    if let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case("demo_writes")) {
        return Err(refuse(format!(
            "it already has {name:?} (the demo's table, from an earlier demo? drop it if it is not yours)"
        )));
    }
    let version = leasehold::schema_version(&conn)?;
    if version == 0 || version > leasehold::SCHEMA_VERSION {
        // No leasehold tables yet (the demo creates them), or a newer
        // schema (refused by the engine before it changes anything).
        return Ok(());
    }
    if version < leasehold::SCHEMA_VERSION {
        return Err(refuse(format!(
            "its leasehold schema is version {version}, and the demo would migrate it to {} (`leasehold migrate` does that, if you mean to)",
            leasehold::SCHEMA_VERSION
        )));
    }
    let key = leasehold::leadership::key(APP)?;
    let (ns, name) = (key.namespace(), key.name());
    let wall = leasehold::chrono::Utc::now().timestamp_millis();
    let high_water: i64 = conn
        .query_row("SELECT max(high_water_ms) FROM leasehold_clock", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .map_err(failed)?
        .unwrap_or(0);
    let row: Option<(Option<String>, i64, i64, i64)> = conn
        .query_row(
            "SELECT holder, expiry_ms, pinned_until_ms, updated_ms FROM leasehold_leases
             WHERE namespace = ?1 AND name = ?2",
            [ns, name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(failed)?;
    let Some((holder, expiry, pinned_until, updated)) = row else {
        return Ok(());
    };
    let now = wall.max(high_water).max(updated);
    if let Some(holder) = holder.filter(|_| expiry.max(pinned_until) > now) {
        return Err(refuse(format!(
            "{key} is held by {holder}, so no worker of the demo could lead"
        )));
    }
    let pinners: Vec<String> = conn
        .prepare(
            "SELECT entity FROM leasehold_pins WHERE namespace = ?1 AND name = ?2
             AND (expires_ms IS NULL OR expires_ms > ?3) ORDER BY entity",
        )
        .and_then(|mut st| {
            st.query_map((ns, name, now), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(failed)?;
    if !pinners.is_empty() {
        return Err(refuse(format!(
            "{key} is pinned by {}, so its leaders' leases would not lapse",
            pinners.join(", ")
        )));
    }
    Ok(())
}

/// As [`inspect`], on PostgreSQL: refuses (before anything is changed) a
/// schema that has a `demo_writes` table (any case), whose leasehold
/// schema is older than this build's (the demo would migrate it), or
/// whose demo lease someone holds or pins. Reads only: a read-only engine
/// (which creates no schema) and one plain connection.
fn inspect_pg(db: &Db, url: &str, schema: &str) -> Result<(), CliError> {
    let refuse = |why: String| {
        CliError::Invalid(format!(
            "refusing to run the demo on {}: {why}; the demo changes nothing it did not create (pass another --db or --schema, or no --db for a temporary SQLite file)",
            db.describe()
        ))
    };
    // Bad connection strings and unreachable servers are told here, by the
    // engine (its messages hide passwords).
    let engine = match super::open_pg(url, schema, true) {
        Ok(engine) => Some(engine),
        Err(CliError::Lease(Error::NotMigrated { found: 0, .. })) => None,
        Err(CliError::Lease(Error::NotMigrated {
            found, expected, ..
        })) => {
            return Err(refuse(format!(
                "its leasehold schema is version {found}, and the demo would migrate it to {expected} (`leasehold migrate` does that, if you mean to)"
            )));
        }
        Err(e) => return Err(e),
    };
    let failed = |e: leasehold::postgres::client::Error| {
        CliError::Failed(format!("cannot read {}: {e}", db.describe()))
    };
    let mut client = super::pg_builder(url)
        .connect_client()
        .map_err(|e| match e {
            leasehold::Error::InvalidArgument { .. } => {
                CliError::Invalid(format!("{}: {e}", db.describe()))
            }
            e => CliError::Failed(format!("cannot read {}: {e}", db.describe())),
        })?;
    let table: Option<String> = client
        .query_opt(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND lower(c.relname) = 'demo_writes' LIMIT 1",
            &[&schema],
        )
        .map_err(failed)?
        .map(|row| row.get(0));
    drop(client);
    if let Some(name) = table {
        return Err(refuse(format!(
            "schema {schema} already has {name:?} (the demo's table, from an earlier demo? drop it if it is not yours)"
        )));
    }
    let Some(engine) = engine else {
        return Ok(());
    };
    let key = leasehold::leadership::key(APP)?;
    let Some(lease) = engine.lease(&key)? else {
        return Ok(());
    };
    if let Some(holder) = lease.holder().filter(|_| lease.is_held()) {
        return Err(refuse(format!(
            "{key} is held by {holder}, so no worker of the demo could lead"
        )));
    }
    let pinners: Vec<&str> = lease.pins().iter().map(|p| p.entity()).collect();
    if !pinners.is_empty() {
        return Err(refuse(format!(
            "{key} is pinned by {}, so its leaders' leases would not lapse",
            pinners.join(", ")
        )));
    }
    Ok(())
}

/// Runs the demo on `db` (from an explicit `--db`; `LEASEHOLD_DB` is not
/// used: the demo writes a table of its own), or on a fresh temporary file.
pub fn demo(global_db: Option<&Db>, args: DemoArgs, out: Output) -> Result<u8, CliError> {
    // Everything that can refuse, before anything starts or changes.
    if let Some(svg) = &args.svg {
        output::writable(svg)?;
        if let Some(Db::Sqlite(db)) = global_db {
            output::not_the_database(svg, db)?;
        }
    }
    match global_db {
        Some(Db::Sqlite(path)) => inspect(path)?,
        Some(db @ Db::Postgres { url, schema }) => inspect_pg(db, url, schema)?,
        None => {}
    }
    let leftovers = Leftovers::default();
    let tmp;
    let (db, temporary) = match global_db {
        Some(db) => (db.clone(), false),
        None => {
            tmp = tempfile::tempdir()?;
            leftovers.lock().dir = Some(tmp.path().to_path_buf());
            (Db::Sqlite(tmp.path().join("demo.db")), true)
        }
    };
    // Stopped by a signal, or by a reader that went away: stop the workers
    // (one may be paused) and remove the temporary directory.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let signal_handle = signals.handle();
    {
        let leftovers = leftovers.clone();
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                leftovers.abandon();
                std::process::exit(128 + sig);
            }
        });
    }
    {
        let leftovers = leftovers.clone();
        print::on_exit(move || leftovers.abandon());
    }
    let played = open_for_demo(&db).and_then(|engine| {
        let rows = || rows(&engine);
        on_engine!(engine, |e| play(
            e, &db, &rows, temporary, &args, out, &leftovers
        ))
    });
    if played.is_err() {
        leftovers.abandon();
    }
    print::clear_on_exit();
    signal_handle.close();
    played
}

/// Opens (creating, migrating) the demo's database and creates its table.
fn open_for_demo(db: &Db) -> Result<Opened, CliError> {
    let engine = super::open(db)?;
    let created = match &engine {
        Opened::Sqlite(engine) => engine
            .connection()?
            .execute_batch(DEMO_TABLE)
            .map_err(|e| e.to_string()),
        Opened::Postgres(engine) => engine
            .client()?
            .batch_execute(&pg_demo_table(&quote_ident(engine.schema())))
            .map_err(|e| e.to_string()),
    };
    created.map_err(|e| CliError::Failed(format!("cannot create the demo's table: {e}")))?;
    Ok(engine)
}

fn play<B: Backend>(
    engine: &Engine<B>,
    db: &Db,
    rows: &dyn Fn() -> Result<Vec<Row>, CliError>,
    temporary: bool,
    args: &DemoArgs,
    out: Output,
    leftovers: &Leftovers,
) -> Result<u8, CliError> {
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
    let key: Key = leasehold::leadership::key(APP)?;
    // On PostgreSQL each worker talks to the server through a proxy of the
    // demo's, so that it can cut a leader's link; if the connection string
    // cannot be proxied, that act is skipped (and the demo says why).
    let (mut network, no_cut) = match db {
        Db::Sqlite(_) => (None, None),
        Db::Postgres { url, .. } => match Network::to(url) {
            Ok(network) => (Some(network), None),
            Err(why) => (None, Some(why)),
        },
    };
    if !out.quiet && !out.json {
        print::line(&format!(
            "leasehold demo: {} worker processes lead {key} in {}{}",
            args.workers,
            db.describe(),
            if temporary {
                " (temporary; pass --db PATH to keep it)"
            } else {
                ""
            }
        ));
        if network.is_some() {
            print::line(
                "each reaches the server through a proxy of the demo's, which can cut its link",
            );
        }
        if let Some(why) = &no_cut {
            print::line(&format!(
                "the network cut is skipped: the demo cannot sit between the workers and the server ({why})"
            ));
        }
        print::line(&format!(
            "each claims {}ms leases renewed every {}ms, and writes a row every {}ms only through a guarded transaction\n",
            lease.as_millis(),
            guarantee.as_millis(),
            (interval * 2).as_millis()
        ));
    }
    let (tx, reports) = mpsc::channel();
    let start = Instant::now();
    let mut moments: Vec<Moment> = Vec::new();
    let mut workers: Vec<Worker> = Vec::new();
    let mut next_id = 1;
    for _ in 0..args.workers {
        let name = format!("worker-{next_id}");
        next_id += 1;
        workers.push(spawn_worker(
            db,
            network.as_mut(),
            &name,
            guarantee,
            interval,
            &tx,
            leftovers,
        )?);
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
    let leader_of = |workers: &[Worker]| -> Result<(Option<usize>, Option<String>), CliError> {
        let holder = engine
            .lease(&key)?
            .and_then(|l| l.holder().map(str::to_owned));
        let index = holder
            .as_ref()
            .and_then(|h| workers.iter().position(|w| w.name == *h));
        Ok((index, holder))
    };
    let wait_for_leader = |workers: &[Worker]| -> Result<usize, CliError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (index, holder) = leader_of(workers)?;
            if let Some(i) = index {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(CliError::Failed(match holder {
                    Some(h) => format!("no worker became leader in 10s: {key} is held by {h}"),
                    None => "no worker became leader in 10s".into(),
                }));
            }
            std::thread::sleep(interval);
        }
    };

    // Act 1: someone leads; kill the leader.
    collect(&mut moments, start + phase, None);
    let victim = wait_for_leader(&workers)?;
    let mut dead = workers.remove(victim);
    kill(pid(&dead), Signal::SIGKILL).map_err(|e| CliError::Failed(e.to_string()))?;
    leftovers.forget(dead.child.id());
    let _ = dead.child.wait();
    moments.push(Moment {
        at: start.elapsed(),
        who: dead.name.clone(),
        what: What::Killed,
    });
    let name = format!("worker-{next_id}");
    workers.push(spawn_worker(
        db,
        network.as_mut(),
        &name,
        guarantee,
        interval,
        &tx,
        leftovers,
    )?);
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

    // Act 3, on PostgreSQL: a new leader; cut its link, in the middle of
    // its work, for longer than its lease (and the server's end of a
    // session it left inside a transaction, after one more lease), so
    // that another takes over; then heal it.
    collect(&mut moments, Instant::now() + phase, None);
    if let Some(network) = &network {
        let cut = wait_for_leader(&workers)?;
        let name = workers[cut].name.clone();
        if !collect(&mut moments, Instant::now() + phase, Some(&name)) {
            return Err(CliError::Failed(format!("{name} led but never wrote")));
        }
        let link = network.proxy(&name).expect("every worker has a link");
        let length = lease * 3;
        link.cut();
        let began = Instant::now();
        moments.push(Moment {
            at: start.elapsed(),
            who: name.clone(),
            what: What::Cut(length),
        });
        let cut_moment = moments.len() - 1;
        collect(&mut moments, began + length, None);
        // And until another says it leads (a slow server may take longer).
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken_over = |moments: &[Moment]| {
            moments[cut_moment..]
                .iter()
                .any(|m| m.who != name && matches!(m.what, What::Leads(_)))
        };
        while !taken_over(&moments) && Instant::now() < deadline {
            collect(&mut moments, Instant::now() + interval, None);
        }
        link.heal();
        moments[cut_moment].what = What::Cut(began.elapsed());
        moments.push(Moment {
            at: start.elapsed(),
            who: name,
            what: What::Healed,
        });
        collect(&mut moments, Instant::now() + phase, None);
    }

    // Then stop everyone.
    for w in &mut workers {
        drop(w.stdin.take()); // closing stdin stops the worker
    }
    for w in &mut workers {
        leftovers.forget(w.child.id());
        let _ = w.child.wait();
    }
    // The links last as long as their workers.
    drop(network);
    drop(tx);
    collect(
        &mut moments,
        Instant::now() + Duration::from_millis(100),
        None,
    );
    let elapsed = start.elapsed();
    moments.sort_by_key(|m| m.at);

    let verdict = verdict(engine, &rows()?)?;
    let accepted = moments
        .iter()
        .filter(|m| matches!(m.what, What::Wrote(_)))
        .count();
    let refused = moments
        .iter()
        .filter(|m| matches!(m.what, What::Refused(..)))
        .count();
    if let Some(path) = &args.svg {
        // Checked again: the file system may have changed meanwhile.
        if let Db::Sqlite(db) = db {
            output::not_the_database(path, db)?;
        }
        output::write(path, super::svg::timeline(&moments, elapsed).as_bytes())?;
    }
    if out.quiet {
    } else if out.json {
        // One object per moment, then the verdict: JSON lines only.
        for m in &moments {
            print::line(&moment_json(m).to_string());
        }
        let rows: Vec<serde_json::Value> = verdict
            .rows_per_epoch
            .iter()
            .map(|(epoch, writers)| {
                json!({
                    "epoch": epoch,
                    "holder": verdict.holders_by_epoch.get(epoch),
                    "rows": writers.iter().map(|(w, n)| json!({"worker": w, "rows": n})).collect::<Vec<_>>(),
                })
            })
            .collect();
        print::line(
            &json!({
                "kind": "verdict",
                "pass": verdict.problems.is_empty(),
                "problems": verdict.problems,
                "accepted": accepted,
                "refused": refused,
                "epochs": verdict.rows_per_epoch.len(),
                "rows_per_epoch": rows,
                "seconds": elapsed.as_secs_f64(),
                "database": if temporary { None } else { Some(db.describe()) },
                "svg": args.svg.as_ref().map(|p| p.display().to_string()),
                "network_cut_skipped": no_cut,
            })
            .to_string(),
        );
    } else {
        print_report(&moments, &verdict, accepted, refused, elapsed);
        if let Some(path) = &args.svg {
            print::line(&format!("timeline drawn to {}", path.display()));
        }
    }
    Ok(if verdict.problems.is_empty() { 0 } else { 1 })
}

fn print_report(
    moments: &[Moment],
    verdict: &Verdict,
    accepted: usize,
    refused: usize,
    elapsed: Duration,
) {
    print::line("timeline (accepted writes are summarised per tenure below):");
    for m in moments.iter().filter(|m| !matches!(m.what, What::Wrote(_))) {
        print_moment(m);
    }
    print::line("\nrows in the database, per epoch:");
    for (epoch, writers) in &verdict.rows_per_epoch {
        let holder = verdict
            .holders_by_epoch
            .get(epoch)
            .map_or("?", String::as_str);
        let list: Vec<String> = writers.iter().map(|(w, n)| format!("{n} by {w}")).collect();
        print::line(&format!(
            "  epoch {epoch:>2}  held by {holder:<9}  rows: {}",
            list.join(", ")
        ));
    }
    print::line(&format!(
        "\nwrites accepted: {accepted}; writes refused by guards: {refused} (in {:.1}s)",
        elapsed.as_secs_f64()
    ));
    print::line("checks, from the database:");
    print::line("  - every epoch's rows come from one writer");
    print::line("  - every row's writer held that epoch's tenure (per the lease history)");
    print::line(
        "  - inside each writing transaction, the lease was the writer's, in that epoch, and had not run out",
    );
    print::line("  - in commit order, no row of an older epoch follows a newer one");
    if verdict.problems.is_empty() {
        print::line("verdict: PASS — no write landed outside its writer's tenure");
    } else {
        print::line("verdict: FAIL");
        for p in &verdict.problems {
            print::line(&format!("  - {p}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::ManualClock;
    use leasehold::chrono::{Duration as Span, Utc};

    #[test]
    fn a_worker_reaches_the_server_through_its_proxy_with_everything_else_kept() {
        use leasehold::postgres::client::Config;
        use leasehold::postgres::client::config::Host;
        let network = Network::to(
            "hostaddr=127.0.0.1 host=db.example port=6543 user=app password='p q\\'s' \
             dbname=d options='-c search_path=x' keepalives_idle=7 connect_timeout=3",
        )
        .expect("proxied");
        assert_eq!(
            network.upstream,
            Upstream::Tcp(SocketAddr::from(([127, 0, 0, 1], 6543)))
        );
        let via = SocketAddr::from(([127, 0, 0, 1], 40001));
        let worker: Config = network
            .through(via)
            .expect("carried")
            .parse()
            .expect("parses");
        // The server's name stays the host (TLS checks its certificate
        // against it); the proxy is the address connected to.
        assert_eq!(worker.get_hosts(), [Host::Tcp("db.example".into())]);
        assert_eq!(worker.get_hostaddrs(), [via.ip()]);
        assert_eq!(worker.get_ports(), [40001]);
        assert_eq!(worker.get_user(), Some("app"));
        assert_eq!(worker.get_password(), Some(&b"p q's"[..]));
        assert_eq!(worker.get_dbname(), Some("d"));
        assert_eq!(worker.get_options(), Some("-c search_path=x"));
        assert_eq!(worker.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(worker.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }

    #[test]
    fn a_connection_string_the_demo_cannot_sit_in_says_why() {
        let why = |url: &str| Network::to(url).err().unwrap_or_default();
        assert!(why("host=a,b dbname=x").contains("several servers"));
        assert!(why("host=/nonexistent-leasehold-dir port=1 dbname=x").contains(".s.PGSQL.1"));
        assert!(why("hostaddr=127.0.0.1 sslnegotiation=direct").contains("sslnegotiation"));
    }

    #[test]
    fn the_verdict_fails_a_row_written_after_the_lease_ran_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The engine's clock is 10 s behind the wall clock: the 1 s lease
        // it grants has run out on the wall clock already, yet nobody has
        // claimed, so the row still names the writer.
        let clock = ManualClock::new(Utc::now() - Span::seconds(10));
        let engine = leasehold::Engine::builder(dir.path().join("demo.db"))
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
        let rows = rows(&Opened::Sqlite(engine.clone())).expect("rows");
        let v = verdict(&engine, &rows).expect("verdict");
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("after the lease ran out")),
            "{:?}",
            v.problems
        );
    }
}

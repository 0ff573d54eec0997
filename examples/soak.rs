//! A long run of the reliability workload: worker processes contend for one
//! lease and write only through guarded transactions while nemeses kill,
//! pause, clock-step and starve them; the history checker judges the result.
//!
//! ```sh
//! cargo run --release --example soak -- --minutes 10
//! cargo run --release --example soak -- --minutes 10 --db postgres
//! cargo run --release --example soak -- --minutes 10 --db postgres://me@127.0.0.1/app
//! ```
//!
//! Options: `--minutes N` (default 1), `--workers N` (4), `--lease-ms N`
//! (300), `--seed N`, `--no-guard` (writes unguarded: the checker must then
//! find violations), `--db` (default: a SQLite file in a temp dir;
//! `postgres`: a throwaway durable PostgreSQL server of the soak's own, on
//! loopback TCP, so that every fault is possible; a connection string: that
//! server, a fresh schema per phase, the network faults only if it is
//! reached over TCP, no restarts). Half the time runs without clock steps
//! (so guarantee windows are checked too), half with every nemesis. On
//! PostgreSQL the faults also cut, reset and delay the leader's link (each
//! worker talks to the server through a proxy of its own), end its
//! sessions, and restart the server at once. Exits non-zero if a violation
//! is found (or, with `--no-guard`, if none is).

use std::process::Command;
use std::time::Duration;

use leasehold::testing::{
    Nemesis, PgOptions, PgServer, RunDatabase, RunReport, Workload, WorkloadBuilder, serve_worker,
};

const USAGE: &str = "usage: soak [--minutes N (1)] [--workers N (4)] [--lease-ms N (300)] [--seed N] [--no-guard] [--db postgres|URL]";

/// Where the phases run.
enum Target {
    Sqlite,
    /// A server of the soak's own (every fault), or a given one.
    Postgres {
        url: String,
        tcp: Option<std::net::SocketAddr>,
        server: Option<std::sync::Arc<std::sync::Mutex<PgServer>>>,
    },
}

impl Target {
    fn from_arg(db: Option<String>) -> Result<Target, Box<dyn std::error::Error>> {
        let Some(db) = db else {
            return Ok(Target::Sqlite);
        };
        if db == "postgres" {
            let server = PgServer::start(PgOptions {
                durable: true,
                tcp: true,
                ..PgOptions::default()
            })?;
            let url = server.url();
            let tcp = server.tcp_addr();
            return Ok(Target::Postgres {
                url,
                tcp,
                server: Some(std::sync::Arc::new(std::sync::Mutex::new(server))),
            });
        }
        let config: leasehold::postgres::client::Config = db.parse()?;
        let tcp = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .find_map(|(host, port)| match host {
                leasehold::postgres::client::config::Host::Tcp(name) => {
                    use std::net::ToSocketAddrs;
                    (name.as_str(), *port).to_socket_addrs().ok()?.next()
                }
                leasehold::postgres::client::config::Host::Unix(_) => None,
            });
        Ok(Target::Postgres {
            url: db,
            tcp,
            server: None,
        })
    }

    /// The builder for one phase on this target, and the nemeses it adds.
    fn phase(&self, name: &str, seed: u64) -> (WorkloadBuilder, Vec<Nemesis>) {
        match self {
            Target::Sqlite => (Workload::builder(), Vec::new()),
            Target::Postgres { url, tcp, server } => {
                let mut builder = Workload::builder().database(RunDatabase::Postgres {
                    url: url.clone(),
                    schema: format!("leasehold_soak_{seed}_{name}"),
                });
                let mut extra = vec![Nemesis::Terminate];
                if let Some(addr) = tcp {
                    builder = builder.network(*addr);
                    extra.extend([Nemesis::NetCut, Nemesis::NetReset, Nemesis::NetDelay]);
                }
                if let Some(server) = server {
                    builder = builder.server(std::sync::Arc::clone(server));
                    extra.push(Nemesis::ServerRestart);
                }
                (builder, extra)
            }
        }
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn print(phase: &str, r: &RunReport) {
    let c = &r.check;
    println!("{phase}:");
    println!(
        "  operations {} {:?}, tenures {}, acknowledged writes {}, rows {}",
        c.total_operations(),
        c.operations,
        c.tenures,
        c.acknowledged_writes,
        c.rows
    );
    println!("  faults {:?}, worker processes {}", r.faults, r.processes);
    println!("  violations: {}", c.violations.len());
    for v in c.violations.iter().take(5) {
        println!("    - {v}");
    }
    if let Some(p) = &c.saved_history {
        println!("  history saved to {}", p.display());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if serve_worker() {
        return Ok(());
    }
    let known = ["--minutes", "--workers", "--lease-ms", "--seed", "--db"];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--no-guard" => {}
            _ if known.contains(&a.as_str()) => {
                args.next();
            }
            _ => {
                eprintln!("soak: unknown argument {a:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let minutes: f64 = arg("--minutes").map_or(Ok(1.0), |m| m.parse())?;
    let workers: u32 = arg("--workers").map_or(Ok(4), |m| m.parse())?;
    let lease_ms: u64 = arg("--lease-ms").map_or(Ok(300), |m| m.parse())?;
    let seed: u64 =
        arg("--seed").map_or(Ok(leasehold::testing::wall_ms() as u64), |m| m.parse())?;
    let guard = !std::env::args().any(|a| a == "--no-guard");
    let target = Target::from_arg(arg("--db"))?;
    let half = Duration::from_secs_f64(minutes * 60.0 / 2.0);
    println!(
        "soak: {minutes} min, {workers} workers, {lease_ms} ms leases, seed {seed}, writes {}, on {}",
        if guard { "guarded" } else { "UNGUARDED" },
        match &target {
            Target::Sqlite => "SQLite".to_owned(),
            Target::Postgres {
                server: Some(_), ..
            } => "a PostgreSQL server of the soak's own (every fault)".to_owned(),
            Target::Postgres { tcp: Some(_), .. } =>
                "the PostgreSQL server given (no restarts)".to_owned(),
            Target::Postgres { .. } =>
                "the PostgreSQL server given, over a Unix socket (no network faults, no restarts)"
                    .to_owned(),
        }
    );
    let exe = std::env::current_exe()?;
    let command = || Command::new(&exe);
    let mut total = 0;
    for (i, (phase, mut nemeses)) in [
        (
            "phase 1: kills, pauses, a held write lock, pool exhaustion (guarantee windows checked)",
            vec![
                Nemesis::Kill,
                Nemesis::Pause,
                Nemesis::LockHolder,
                Nemesis::PoolExhaustion,
            ],
        ),
        (
            "phase 2: every nemesis, clock steps included",
            vec![
                Nemesis::Kill,
                Nemesis::Pause,
                Nemesis::ClockStep,
                Nemesis::LockHolder,
                Nemesis::PoolExhaustion,
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (builder, extra) = target.phase(&format!("phase{}", i + 1), seed);
        nemeses.extend(extra);
        println!("{phase} …");
        println!("  nemeses {nemeses:?}");
        let dir = tempfile::tempdir()?;
        let report = builder
            .workers(workers)
            .duration(half)
            .lease(Duration::from_millis(lease_ms))
            .guard(guard)
            .nemeses(nemeses)
            .seed(seed)
            .verbose(true)
            .build()?
            .run(dir.path(), &command)?;
        print(phase, &report);
        total += report.check.violations.len();
        if !report.check.passed() {
            // Keep the evidence.
            let kept = dir.keep();
            println!("  files kept in {}", kept.display());
        }
    }
    let ok = if guard { total == 0 } else { total > 0 };
    println!(
        "verdict: {}",
        match (guard, ok) {
            (true, true) => "PASS — no violation",
            (true, false) => "FAIL — violations found",
            (false, true) => "the checker caught the unguarded writes (as it must)",
            (false, false) => "FAIL — unguarded writes went unnoticed",
        }
    );
    if ok {
        Ok(())
    } else {
        Err("soak failed".into())
    }
}

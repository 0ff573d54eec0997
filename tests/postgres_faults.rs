//! PostgreSQL when the server stops answering or restarts: each test runs
//! a server of its own (the faults would disturb every other test), started
//! from the machine's binaries. Without them the tests say loudly that they
//! were skipped; with `LEASEHOLD_REQUIRE_PG` set they fail instead.
#![cfg(feature = "postgres")]

use std::time::Duration;

use leasehold::Key;
use leasehold::postgres::PgEngine;
use leasehold::testing::{PgOptions, PgServer};

/// A server of the test's own, or `None` (said on standard error) without
/// the binaries.
fn own_server(durable: bool) -> Option<PgServer> {
    PgServer::start_or_skip(PgOptions {
        durable,
        ..PgOptions::default()
    })
}

/// Thaws the server however the test ends, so that its reaper can stop it.
struct Thaw<'a>(&'a PgServer);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw();
    }
}

#[test]
fn a_leader_steps_down_before_its_lease_could_lapse_when_the_server_freezes() {
    let Some(server) = own_server(false) else {
        return;
    };
    let engine = PgEngine::connect(&server.url()).expect("connect");
    let key = Key::new("faults", "frozen").unwrap();
    // A 2 s lease, renewed when 1 s is left; the tracker gives up 200 ms
    // before it would lapse.
    let tracker = engine
        .tracker(&key, "leader")
        .guarantee(Duration::from_secs(1))
        .build()
        .expect("tracker");
    assert!(tracker.wait_leader().wait());
    let until = tracker.lease_until().expect("leading");
    let minion = tracker.wait_minion();
    // Every process of the server stops: its sockets stay open, and no
    // statement_timeout can fire. The background thread must not wait
    // with its renewal.
    server.freeze().expect("freeze");
    let thaw = Thaw(&server);
    assert_eq!(
        minion.wait_timeout(Duration::from_secs(20)),
        Some(true),
        "the leader did not step down while the server was frozen"
    );
    // The engine's clock is an upper bound on the server's: the step-down
    // came before the server could have let the lease lapse.
    let stepped_down_at = engine.now();
    assert!(
        stepped_down_at < until,
        "stepped down at {stepped_down_at}, after the lease ran out at {until}"
    );
    assert!(!tracker.is_leader());
    drop(thaw);
    // Once the server answers again, the tracker leads again.
    assert_eq!(
        tracker.wait_leader().wait_timeout(Duration::from_secs(30)),
        Some(true),
        "the tracker did not lead again after the server came back: {:?}",
        tracker.last_error()
    );
}

#[test]
fn after_an_immediate_restart_the_engine_and_its_trackers_carry_on() {
    let Some(mut server) = own_server(true) else {
        return;
    };
    let engine = PgEngine::connect(&server.url()).expect("connect");
    let key = Key::new("faults", "restart").unwrap();
    let tracker = engine
        .tracker(&key, "leader")
        .guarantee(Duration::from_secs(1))
        .build()
        .expect("tracker");
    assert!(tracker.wait_leader().wait());
    let epoch = tracker.epoch().expect("leading");
    let other = Key::new("faults", "acknowledged").unwrap();
    let acknowledged = engine
        .claim(&other, "h1", Duration::from_secs(600))
        .expect("claim");
    server.crash().expect("crash");
    server.restart().expect("restart");
    // Pooled connections died with the server: a call may fail once, as
    // transient, and the next one works.
    let lease = (0..5)
        .find_map(|_| match engine.lease(&other) {
            Ok(lease) => Some(lease),
            Err(e) => {
                assert!(e.is_transient(), "not transient: {e}");
                None
            }
        })
        .expect("the engine answered again");
    // A commit acknowledged before the crash survived it (synchronous
    // commit on).
    let lease = lease.expect("the row");
    assert_eq!(lease.holder(), Some("h1"));
    assert_eq!(lease.epoch(), acknowledged.epoch());
    // The tracker leads again, in a tenure no older than before.
    assert_eq!(
        tracker.wait_leader().wait_timeout(Duration::from_secs(30)),
        Some(true),
        "{:?}",
        tracker.last_error()
    );
    assert!(tracker.epoch().expect("leading") >= epoch);
}

/// Ends every session of the server named `application` (as an operator's
/// `pg_terminate_backend` would); how many it ended.
fn terminate(url: &str, application: &str) -> i64 {
    use leasehold::postgres::client::{Client, NoTls};
    let mut admin = Client::connect(url, NoTls).expect("admin connection");
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1",
            &[&application],
        )
        .expect("terminate")
        .get(0)
}

#[test]
fn a_waiter_wakes_after_its_engines_listener_was_cut_off_and_reconnected() {
    let Some(server) = PgServer::shared() else {
        return;
    };
    let db = server.create_database().expect("database");
    let waiting = PgEngine::connect(db.url()).expect("connect");
    let other = PgEngine::connect(db.url()).expect("connect");
    let key = Key::new("faults", "listener").unwrap();
    other
        .claim(&key, "holder", Duration::from_secs(600))
        .expect("claim");
    // The waiter's engine listens once something waits: start waiting.
    let (woke_tx, woke) = std::sync::mpsc::channel();
    let waiter = {
        let (waiting, key) = (waiting.clone(), key.clone());
        std::thread::spawn(move || {
            let result = waiting.block_until_released_timeout(&key, Duration::from_secs(60));
            let _ = woke_tx.send(result.is_ok());
        })
    };
    // Cut the listening sessions off (both engines'), until one was found.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while terminate(db.url(), "leasehold-listen") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no listener to cut off"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The release is announced while, or after, the listener reconnects:
    // the waiter must hear of it either way (a reconnect counts everything
    // as changed).
    other.release(&key, "holder").expect("release");
    assert_eq!(
        woke.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "the waiter did not wake after the release"
    );
    waiter.join().expect("waiter");
}

#[test]
fn without_listen_a_successor_takes_over_by_polling() {
    let Some(server) = PgServer::shared() else {
        return;
    };
    let db = server.create_database().expect("database");
    // As behind a pooler in transaction mode: no notices at all.
    let follower = PgEngine::builder(db.url())
        .listen(false)
        .watch_interval(Duration::from_millis(50))
        .build()
        .expect("connect");
    let leader = PgEngine::builder(db.url())
        .listen(false)
        .build()
        .expect("connect");
    let key = Key::new("faults", "polling").unwrap();
    leader
        .claim(&key, "first", Duration::from_secs(600))
        .expect("claim");
    let tracker = follower
        .tracker(&key, "second")
        .guarantee(Duration::from_secs(30))
        .build()
        .expect("tracker");
    assert_eq!(
        tracker.wait_minion().wait_timeout(Duration::from_secs(10)),
        Some(true)
    );
    let leads = tracker.wait_leader();
    leader.release(&key, "first").expect("release");
    assert_eq!(
        leads.wait_timeout(Duration::from_secs(10)),
        Some(true),
        "the follower never saw the release: {:?}",
        tracker.last_error()
    );
}

// The history checker under the faults only a network and a server have.
// Workers are this test binary run again (into the `worker` test below),
// each behind a proxy of its own to a durable server on loopback TCP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use leasehold::testing::{self, Entry, Fault, Nemesis, RunDatabase, RunReport, Span, Workload};

/// The entry point of the workers (a no-op in the test process itself).
#[test]
fn worker() {
    testing::serve_worker();
}

fn worker_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// One durable server on loopback TCP for the network runs of this
/// process; `None` without binaries.
fn tcp_server() -> Option<Arc<Mutex<PgServer>>> {
    static SERVER: OnceLock<Option<Arc<Mutex<PgServer>>>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            PgServer::start_or_skip(PgOptions {
                durable: true,
                tcp: true,
                ..PgOptions::default()
            })
            .map(|server| Arc::new(Mutex::new(server)))
        })
        .clone()
}

const LEASE: Duration = Duration::from_millis(250);

/// A fresh database of `server` (dropped with the handle) and a workload
/// on it: three workers through proxies, `LEASE` leases, five seconds.
fn fault_workload(
    server: &Arc<Mutex<PgServer>>,
) -> (testing::PgDatabase, testing::WorkloadBuilder) {
    let server = server.lock().expect("server");
    let db = server.create_database().expect("database");
    let workload = Workload::builder()
        .database(RunDatabase::Postgres {
            url: db.url().to_owned(),
            schema: "lh".to_owned(),
        })
        .network(server.tcp_addr().expect("TCP"))
        .workers(3)
        .lease(LEASE)
        .duration(Duration::from_secs(5));
    (db, workload)
}

/// A run of `nemesis` on a fresh database of `server`, its checker's
/// verdict asserted; the report, the run's directory and its connection
/// string.
fn run_with(
    server: &Arc<Mutex<PgServer>>,
    nemesis: Nemesis,
    shape: impl FnOnce(testing::WorkloadBuilder) -> testing::WorkloadBuilder,
) -> (RunReport, tempfile::TempDir, testing::PgDatabase) {
    let (db, workload) = fault_workload(server);
    let workload = shape(workload.nemeses([nemesis]).seed(0x1ea5e))
        .build()
        .expect("workload");
    let dir = tempfile::tempdir().expect("tempdir");
    let report = workload
        .run(dir.path(), &worker_command)
        .expect("the workload ran");
    let c = &report.check;
    assert!(
        c.passed(),
        "violations under {nemesis:?} (history in {}): {:#?}",
        dir.path().display(),
        c.violations
    );
    assert!(c.acknowledged_writes > 0, "writes happened: {c:?}");
    assert!(
        report
            .faults
            .get(&format!("{nemesis:?}"))
            .copied()
            .unwrap_or(0)
            > 0,
        "{nemesis:?} struck: {:?}",
        report.faults
    );
    (report, dir, db)
}

/// Each key's tenures as (epoch, holder, server time of the claim), in
/// commit order.
fn claims(db: &testing::PgDatabase) -> Vec<(i64, String, i64)> {
    use leasehold::postgres::client::{Client, NoTls};
    let mut client = Client::connect(db.url(), NoTls).expect("connect");
    client
        .query(
            "SELECT epoch, holder, at_ms FROM lh.leasehold_events WHERE kind = 'claimed'
             ORDER BY tx, id",
            &[],
        )
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Writes of process `proc` invoked at most a second before wall time
/// `after_ms` (the write a cut caught) or later, that failed.
fn failed_writes_after(dir: &tempfile::TempDir, proc: u32, after_ms: i64) -> usize {
    let entries = testing::read_histories(dir.path()).expect("histories");
    let mut invoked: HashMap<u64, (String, i64)> = HashMap::new();
    let mut failed = 0;
    for e in &entries {
        match e {
            Entry::Invoke {
                proc: p,
                n,
                op,
                wall_ms,
                ..
            } if *p == proc => {
                invoked.insert(*n, (op.clone(), *wall_ms));
            }
            Entry::Fail { proc: p, n, .. }
                if *p == proc
                    && invoked
                        .get(n)
                        .is_some_and(|(op, at)| op == "write" && *at >= after_ms - 1000) =>
            {
                failed += 1;
            }
            _ => {}
        }
    }
    failed
}

#[test]
fn a_cut_leaders_successor_takes_over_in_time_and_the_healed_leaders_write_is_refused() {
    let Some(server) = tcp_server() else {
        return;
    };
    // Cuts of four leases: the leader must be replaced while cut off. A
    // worker's idle-in-transaction timeout is one lease (two of its busy
    // timeouts): a leader cut inside its guarded transaction holds the row
    // that long after its lease.
    let cut = LEASE * 4;
    let run = Duration::from_secs(6);
    let (report, dir, db) = run_with(&server, Nemesis::NetCut, |w| {
        w.net_cut(Span::exactly(cut))
            .interval(Span::between(LEASE * 2, LEASE * 4))
            .duration(run)
    });
    let claims = claims(&db);
    let (mut in_txn, mut refusals_checked) = (0, 0);
    for strike in &report.strikes {
        let Fault::NetCut { in_txn: inside, .. } = strike.fault else {
            continue;
        };
        in_txn += usize::from(inside);
        let target = strike.target.as_ref().expect("a target");
        // The next tenure after the cut began within the lease plus the
        // session timeout (and scheduling slack on a loaded machine).
        let next = claims
            .iter()
            .find(|(_, holder, at)| *at >= strike.wall_ms && *holder != target.holder);
        let Some((_, _, at)) = next else {
            panic!(
                "no successor after the cut at {} ms: {claims:?}",
                strike.wall_ms
            );
        };
        let limit = (LEASE * 2 + Duration::from_millis(750)).as_millis() as i64;
        assert!(
            at - strike.wall_ms <= limit,
            "the successor took over {} ms after the cut (limit {limit} ms)",
            at - strike.wall_ms
        );
        // A cut inside the leader's guarded transaction caught a write in
        // flight: after the heal it was refused (or failed with its
        // session), and nothing of it committed, as the checker confirmed.
        // (A cut between transactions may catch none: the leader steps
        // down by its own clock and never writes again. And a run that
        // ended right after the heal stops the workers before they say.)
        if inside && strike.at + cut + Duration::from_millis(500) <= run {
            refusals_checked += 1;
            assert!(
                failed_writes_after(&dir, target.proc, strike.wall_ms) > 0,
                "the cut leader {} never had a write refused after the cut",
                target.holder
            );
        }
    }
    assert!(in_txn > 0, "some cuts landed inside a guarded transaction");
    if refusals_checked == 0 {
        eprintln!("no cut inside a transaction healed well before the end: refusals unchecked");
    }
}

#[test]
fn resets_of_the_leaders_connections() {
    let Some(server) = tcp_server() else {
        return;
    };
    run_with(&server, Nemesis::NetReset, |w| w);
}

#[test]
fn a_delay_longer_than_the_lease_on_the_leaders_link() {
    let Some(server) = tcp_server() else {
        return;
    };
    run_with(&server, Nemesis::NetDelay, |w| {
        w.net_delay(LEASE + LEASE / 2)
            .net_cut(Span::exactly(LEASE * 3))
    });
}

#[test]
fn the_leaders_sessions_terminated_by_the_server() {
    let Some(server) = tcp_server() else {
        return;
    };
    let (report, ..) = run_with(&server, Nemesis::Terminate, |w| w);
    assert!(
        report
            .strikes
            .iter()
            .any(|s| matches!(s.fault, Fault::Terminate { sessions } if sessions > 0)),
        "some terminations ended sessions: {:?}",
        report.strikes
    );
}

#[test]
fn immediate_server_restarts_mid_workload_lose_no_acknowledged_write() {
    // A server of its own: the restarts would disturb the other runs.
    let Some(server) = own_server_tcp() else {
        return;
    };
    let server = Arc::new(Mutex::new(server));
    run_with(&server, Nemesis::ServerRestart, |w| {
        w.server(Arc::clone(&server))
            .interval(Span::between(LEASE * 2, LEASE * 4))
    });
}

#[test]
fn the_checker_catches_unguarded_writes_on_postgresql() {
    let Some(server) = tcp_server() else {
        return;
    };
    // A cut leader's unguarded write, held by the proxy, commits when the
    // cut heals, after its successor began: the checker must say so. Whether
    // a cut catches a write in flight and heals before the run ends is a
    // matter of timing on a loaded machine: up to three runs, one must.
    let mut reports = Vec::new();
    for attempt in 0..3u64 {
        let (_db, workload) = fault_workload(&server);
        let workload = workload
            .seed(attempt)
            .guard(false)
            .nemeses([Nemesis::NetCut])
            .net_cut(Span::exactly(LEASE * 4))
            .build()
            .expect("workload");
        let dir = tempfile::tempdir().expect("tempdir");
        let report = workload.run(dir.path(), &worker_command).expect("ran");
        if !report.check.passed() {
            return;
        }
        reports.push(report.check);
    }
    panic!("unguarded writes by cut-off leaders went unnoticed in three runs: {reports:?}");
}

fn own_server_tcp() -> Option<PgServer> {
    PgServer::start_or_skip(PgOptions {
        durable: true,
        tcp: true,
        ..PgOptions::default()
    })
}

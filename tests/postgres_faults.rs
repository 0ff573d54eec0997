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
    match PgServer::start(PgOptions {
        durable,
        ..PgOptions::default()
    }) {
        Ok(server) => Some(server),
        Err(e) => {
            assert!(
                std::env::var_os("LEASEHOLD_REQUIRE_PG").is_none(),
                "LEASEHOLD_REQUIRE_PG is set, but no PostgreSQL: {e}"
            );
            eprintln!("*** PostgreSQL fault tests SKIPPED: {e} ***");
            None
        }
    }
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

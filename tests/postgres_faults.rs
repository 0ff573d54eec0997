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

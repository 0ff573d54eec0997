//! Trackers whose writes fail, on SQLite: a trigger injects the fault into
//! every write of one lease until healed. Every other tracker test runs
//! for every backend in the conformance suite (`tests/conformance/tracker.rs`).
//!
//! The background thread works asynchronously; tests meet it explicitly with
//! `Engine::settle` (it returns once the thread has caught up with the
//! current engine time) or by waiting on tickets.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{Engine, Error, HandleError, LeaseTracker, ManualClock};
use support::{TempDb, key, secs, t0};

type R = Result<(), Box<dyn std::error::Error>>;

/// Collects background errors.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl HandleError for Errors {
    fn handle_error(&self, error: &Error) {
        self.0.lock().expect("lock").push(error.to_string());
    }
}

impl Errors {
    fn seen(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

struct Setup {
    _db: TempDb,
    engine: Engine,
    clock: ManualClock,
    errors: Errors,
}

fn setup() -> Setup {
    let db = TempDb::new();
    let clock = ManualClock::new(t0());
    let errors = Errors::default();
    let engine = Engine::builder(&db.path)
        .clock(clock.clone())
        .error_handler(errors.clone())
        .build()
        .expect("engine");
    Setup {
        _db: db,
        engine,
        clock,
        errors,
    }
}

fn tracker(engine: &Engine, name: &str, holder: &str) -> LeaseTracker {
    engine
        .tracker(&key(name), holder)
        .guarantee(secs(30))
        .build()
        .expect("tracker")
}

fn holder(engine: &Engine, name: &str) -> Option<String> {
    engine
        .lease(&key(name))
        .expect("lease")
        .and_then(|l| l.holder().map(str::to_owned))
}

/// Makes every write to lease `flaky` fail until `heal` is called.
fn break_writes(engine: &Engine) {
    engine
        .connection()
        .expect("conn")
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS fault (active INTEGER);
             INSERT INTO fault VALUES (1);
             CREATE TRIGGER IF NOT EXISTS inject BEFORE UPDATE ON leasehold_leases
             WHEN NEW.name = 'flaky' AND (SELECT max(active) FROM fault) = 1
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .expect("inject");
}

fn heal(engine: &Engine) {
    engine
        .connection()
        .expect("conn")
        .execute_batch("UPDATE fault SET active = 0")
        .expect("heal");
}

// Initial claim

#[test]
fn an_initial_claim_that_errors_is_retried_and_reported() -> R {
    let s = setup();
    s.engine.claim(&key("flaky"), "other", secs(1))?;
    break_writes(&s.engine);
    s.clock.advance(secs(2)); // vacant, but every write fails
    let t = tracker(&s.engine, "flaky", "u0");
    let leader = t.wait_leader();
    s.engine.settle();
    assert_eq!(leader.try_wait(), None);
    assert!(t.last_error().is_some_and(|e| e.contains("injected fault")));
    assert!(s.errors.seen().iter().any(|e| e.contains("injected fault")));
    heal(&s.engine);
    s.clock.advance(Duration::from_millis(100)); // past the backoff
    assert!(leader.wait());
    Ok(())
}

#[test]
fn an_error_handler_that_panics_does_not_stop_the_background_work() -> R {
    struct Panics;
    impl HandleError for Panics {
        fn handle_error(&self, error: &Error) {
            panic!("handler panicked on {error}");
        }
    }
    let db = TempDb::new();
    let clock = ManualClock::new(t0());
    let engine = Engine::builder(&db.path)
        .clock(clock.clone())
        .error_handler(Panics)
        .build()?;
    engine.claim(&key("flaky"), "other", secs(1))?;
    break_writes(&engine);
    clock.advance(secs(2));
    let t = tracker(&engine, "flaky", "u0");
    let leader = t.wait_leader();
    engine.settle();
    assert!(t.last_error().is_some_and(|e| e.contains("injected fault")));
    heal(&engine);
    clock.advance(Duration::from_millis(100));
    assert!(leader.wait(), "the thread lived on and claimed");
    t.stop(); // returns: the thread is there to release
    engine.shutdown();
    Ok(())
}

// Renewal

#[test]
fn renewals_that_keep_failing_give_up_leadership_while_the_lease_is_still_held() -> R {
    let s = setup();
    let t = s
        .engine
        .tracker(&key("flaky"), "u0")
        .guarantee(secs(30))
        .safety_margin(secs(5))
        .build()?;
    assert!(t.wait_leader().wait());
    let minion = t.wait_minion();
    break_writes(&s.engine);
    s.clock.advance(secs(30)); // renewal due: it fails, and is retried
    s.engine.settle();
    assert_eq!(minion.try_wait(), None);
    assert!(t.is_leader());
    s.clock.advance(secs(24)); // 1 s before the margin
    s.engine.settle();
    assert_eq!(minion.try_wait(), None);
    s.clock.advance(secs(1)); // expiry - 5 s: give up
    s.engine.settle();
    assert_eq!(minion.try_wait(), Some(true));
    assert!(!t.is_leader());
    assert_eq!(
        holder(&s.engine, "flaky").as_deref(),
        Some("u0"),
        "still formally held"
    );
    assert!(s.errors.seen().len() >= 2, "every failure was reported");
    Ok(())
}

// Regressions found in review.

#[test]
fn a_tracker_whose_renewals_failed_past_its_margin_claims_again_once_healed() -> R {
    let s = setup();
    let t = s
        .engine
        .tracker(&key("flaky"), "u0")
        .guarantee(secs(30))
        .safety_margin(secs(5))
        .build()?;
    assert!(t.wait_leader().wait());
    break_writes(&s.engine);
    for _ in 0..12 {
        s.clock.advance(secs(5)); // renewals fail, backoff grows, it steps down
        s.engine.settle();
    }
    assert!(!t.is_leader());
    heal(&s.engine);
    let leader = t.wait_leader();
    for _ in 0..20 {
        if leader.try_wait().is_some() {
            break;
        }
        s.clock.advance(secs(5));
        s.engine.settle();
    }
    assert_eq!(leader.try_wait(), Some(true));
    Ok(())
}

#[test]
fn minion_tickets_answer_from_time_even_before_the_thread_has_run() -> R {
    let s = setup();
    let t = s
        .engine
        .tracker(&key("flaky"), "u0")
        .guarantee(secs(30))
        .safety_margin(secs(5))
        .build()?;
    assert!(t.wait_leader().wait());
    break_writes(&s.engine);
    // Past the margin without letting the thread run: the answer comes from
    // the clock alone.
    s.clock.advance(secs(55));
    assert_eq!(t.wait_minion().try_wait(), Some(true));
    assert!(!t.is_leader());
    Ok(())
}

#[test]
fn a_lone_renewal_waits_for_the_write_lock_for_the_whole_busy_timeout() -> R {
    // SQLite's lock is the whole file's: a renewal alone in its batch is
    // kept waiting by another connection's transaction, and must wait for
    // it up to the busy timeout (here 4 s) as it always did, not fail
    // after a quarter of it (the quarter is for a server's row lock, which
    // the backend names; SQLite's wait names the key only because the
    // batch holds one).
    let db = TempDb::new();
    let clock = ManualClock::new(t0());
    let errors = Errors::default();
    let engine = Engine::builder(&db.path)
        .clock(clock.clone())
        .busy_timeout(secs(4))
        .error_handler(errors.clone())
        .build()?;
    let t = tracker(&engine, "solo", "u0");
    assert!(t.wait_leader().wait());
    let (locked, is_locked) = std::sync::mpsc::channel();
    let path = db.path.clone();
    let other = std::thread::spawn(move || -> rusqlite::Result<()> {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        locked.send(()).expect("send");
        // Longer than a quarter of the busy timeout, well within it.
        std::thread::sleep(Duration::from_millis(1500));
        conn.execute_batch("COMMIT")
    });
    is_locked.recv()?;
    clock.advance(secs(30)); // renewal due
    engine.settle();
    other.join().expect("other")?;
    assert_eq!(errors.seen(), Vec::<String>::new(), "the renewal waited");
    let lease = engine.lease(&key("solo"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(90)), "renewed");
    assert!(t.is_leader());
    Ok(())
}

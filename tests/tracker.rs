//! Trackers and tickets (research/juju.md §6, "Tracker"), on a manual clock.
//!
//! The background thread works asynchronously; tests meet it explicitly with
//! `Engine::settle` (it returns once the thread has caught up with the
//! current engine time) or by waiting on tickets.

mod support;

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use leasehold::leadership::{Ticket, Tracker};
use leasehold::rusqlite::TransactionBehavior;
use leasehold::{Engine, Error, HandleError, Key, LeaseTracker, ManualClock, Txn};
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

/// Revokes lease `name` and claims it for `to`, atomically.
fn hand_over(engine: &Engine, name: &str, to: &str) -> leasehold::Result<()> {
    let mut conn = engine.connection()?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    engine.in_txn(&tx)?.revoke(&key(name))?;
    engine.in_txn(&tx)?.claim(&key(name), to, secs(600))?;
    tx.commit().expect("commit");
    Ok(())
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
fn a_tracker_on_a_vacant_lease_leads() -> R {
    let s = setup();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    assert!(t.claim_leader().wait());
    assert!(t.is_leader());
    assert_eq!(t.epoch(), Some(1));
    assert_eq!(t.wait_minion().try_wait(), None, "not a minion");
    assert_eq!(Tracker::application_name(&t), "a");
    assert_eq!(Tracker::claim_duration(&t), secs(30));
    let lease = s.engine.lease(&key("a"))?.expect("lease");
    assert_eq!(
        lease.expires_at(),
        Some(t0() + secs(60)),
        "claims twice the guarantee"
    );
    Ok(())
}

#[test]
fn a_waker_may_call_back_into_its_tracker() -> R {
    // An executor may poll a task right inside `wake`, and the task may ask
    // its tracker something: the driver must not be holding its lock then.
    struct Reentrant {
        tracker: Arc<LeaseTracker>,
        done: Mutex<Option<std::sync::mpsc::Sender<bool>>>,
    }
    impl Wake for Reentrant {
        fn wake(self: Arc<Self>) {
            let leading = self.tracker.is_leader();
            if let Some(tx) = self.done.lock().expect("lock").take() {
                let _ = tx.send(leading);
            }
        }
    }
    let s = setup();
    s.engine.claim(&key("a"), "other", secs(600))?;
    let t = Arc::new(tracker(&s.engine, "a", "u0"));
    assert!(t.wait_minion().wait());
    let (tx, rx) = std::sync::mpsc::channel();
    let waker = Waker::from(Arc::new(Reentrant {
        tracker: Arc::clone(&t),
        done: Mutex::new(Some(tx)),
    }));
    let mut ticket = pin!(t.wait_leader());
    let mut cx = Context::from_waker(&waker);
    assert!(ticket.as_mut().poll(&mut cx).is_pending());
    s.engine.release(&key("a"), "other")?;
    // Deadlocked if the waker ran under the driver's lock.
    let leading = rx.recv_timeout(Duration::from_secs(60))?;
    assert!(leading);
    assert_eq!(ticket.as_mut().poll(&mut cx), Poll::Ready(true));
    Ok(())
}

#[test]
fn a_denied_tracker_is_a_minion() -> R {
    let s = setup();
    s.engine.claim(&key("a"), "other", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    assert!(!t.claim_leader().wait());
    assert_eq!(t.wait_leader().try_wait(), None);
    assert!(!t.is_leader());
    Ok(())
}

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
fn a_leader_renews_when_half_its_lease_is_left() -> R {
    let s = setup();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    s.clock.advance(secs(29));
    s.engine.settle();
    let lease = s.engine.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(60)), "not yet");
    s.clock.advance(secs(1));
    s.engine.settle();
    let lease = s.engine.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(90)));
    assert_eq!(lease.epoch(), 1, "a renewal keeps the tenure");
    Ok(())
}

#[test]
fn a_claim_ticket_after_the_renewal_point_renews_first() -> R {
    let s = setup();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    s.clock.advance(secs(45));
    assert!(t.claim_leader().wait());
    let lease = s.engine.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(105)));
    Ok(())
}

#[test]
fn losing_the_lease_on_renewal_makes_a_minion() -> R {
    let s = setup();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    let minion = t.wait_minion();
    // An administrator hands the lease to someone else, in one transaction
    // (the tracker would otherwise claim the vacant lease back at once).
    hand_over(&s.engine, "a", "other")?;
    assert!(minion.wait(), "noticed at once, not at the next renewal");
    assert!(!t.is_leader());
    assert!(!t.claim_leader().wait());
    Ok(())
}

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

#[test]
fn a_renewal_kept_from_the_write_lock_is_reported_with_its_lease() -> R {
    let db = TempDb::new();
    let clock = ManualClock::new(t0());
    let errors = Errors::default();
    let engine = Engine::builder(&db.path)
        .clock(clock.clone())
        .busy_timeout(Duration::from_millis(50))
        .error_handler(errors.clone())
        .build()?;
    let t = tracker(&engine, "locked", "u0");
    assert!(t.wait_leader().wait());
    // Another connection holds the write lock while the renewal falls due.
    let mut other = leasehold::rusqlite::Connection::open(&db.path)?;
    let lock = other.transaction_with_behavior(TransactionBehavior::Immediate)?;
    clock.advance(secs(31)); // renewal due
    engine.settle();
    lock.rollback()?;
    let seen = errors.seen();
    assert!(
        seen.iter()
            .any(|e| e.contains("renew") && e.contains("test/locked") && e.contains("u0")),
        "the failure names the lease and holder: {seen:?}"
    );
    t.stop();
    Ok(())
}

// Minions

#[test]
fn a_minion_takes_over_when_the_leader_releases() -> R {
    let s = setup();
    s.engine.claim(&key("a"), "other", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    let leader = t.wait_leader();
    s.engine.release(&key("a"), "other")?;
    assert!(leader.wait());
    assert_eq!(t.epoch(), Some(2));
    Ok(())
}

#[test]
fn a_minion_takes_over_when_the_lease_expires() -> R {
    let s = setup();
    s.engine.claim(&key("a"), "other", secs(60))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    let leader = t.wait_leader();
    s.clock.advance(secs(59));
    s.engine.settle();
    assert_eq!(leader.try_wait(), None);
    s.clock.advance(secs(1));
    assert!(leader.wait());
    Ok(())
}

#[test]
fn a_release_seen_but_lost_to_another_claimant_blocks_again() -> R {
    let s = setup();
    s.engine.claim(&key("a"), "x", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    let leader = t.wait_leader();
    // x releases and y claims in one transaction: the tracker sees the
    // change, but the key is never vacant.
    let mut conn = s.engine.connection()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    s.engine.in_txn(&tx)?.release(&key("a"), "x")?;
    s.engine.in_txn(&tx)?.claim(&key("a"), "y", secs(600))?;
    tx.commit()?;
    s.engine.settle();
    assert_eq!(leader.try_wait(), None);
    assert_eq!(holder(&s.engine, "a").as_deref(), Some("y"));
    s.engine.release(&key("a"), "y")?;
    assert!(leader.wait());
    Ok(())
}

#[test]
fn a_pinned_lease_keeps_minions_waiting_until_unpinned() -> R {
    let s = setup();
    s.engine.claim(&key("a"), "x", secs(10))?;
    s.engine.pin(&key("a"), "machine-0", "upgrade", None)?;
    let t = tracker(&s.engine, "a", "u0");
    let leader = t.wait_leader();
    s.clock.advance(secs(3600));
    s.engine.settle();
    assert_eq!(leader.try_wait(), None);
    s.engine.unpin(&key("a"), "machine-0")?;
    assert!(leader.wait());
    Ok(())
}

// Tickets and stopping

#[test]
fn stopping_resolves_pending_tickets_false_and_releases() -> R {
    let s = setup();
    let leader = tracker(&s.engine, "a", "u0");
    assert!(leader.wait_leader().wait());
    let leader_minion = leader.wait_minion();
    let follower = tracker(&s.engine, "a", "u1");
    assert!(follower.wait_minion().wait());
    let follower_leader = follower.wait_leader();
    leader.stop();
    assert_eq!(leader_minion.try_wait(), Some(false));
    assert!(follower_leader.wait(), "the successor took over at once");
    drop(follower);
    assert_eq!(follower_leader.try_wait(), Some(true));
    s.engine.settle();
    assert_eq!(holder(&s.engine, "a"), None, "dropping released too");
    Ok(())
}

#[test]
fn a_tracker_can_leave_its_lease_to_expire() -> R {
    let s = setup();
    let t = s
        .engine
        .tracker(&key("a"), "u0")
        .release_on_stop(false)
        .build()?;
    assert!(t.wait_leader().wait());
    t.stop();
    assert_eq!(holder(&s.engine, "a").as_deref(), Some("u0"));
    Ok(())
}

#[test]
fn shutting_the_engine_down_stops_every_tracker() -> R {
    let s = setup();
    let trackers: Vec<_> = (0..5)
        .map(|i| tracker(&s.engine, &format!("k{i}"), "u0"))
        .collect();
    for t in &trackers {
        assert!(t.wait_leader().wait());
    }
    let minions: Vec<_> = trackers.iter().map(LeaseTracker::wait_minion).collect();
    s.engine.shutdown();
    for m in minions {
        assert_eq!(m.try_wait(), Some(false));
    }
    assert_eq!(trackers[0].claim_leader().try_wait(), Some(false));
    let reopened = Engine::open(s.engine.path())?;
    assert!(reopened.leases("test")?.is_empty(), "all released");
    Ok(())
}

#[test]
fn bad_tracker_settings_are_refused() {
    let s = setup();
    let k = key("a");
    assert!(s.engine.tracker(&k, "").build().is_err());
    assert!(
        s.engine
            .tracker(&k, "u")
            .guarantee(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        s.engine
            .tracker(&k, "u")
            .guarantee(leasehold::MAX_DURATION)
            .build()
            .is_err()
    );
    assert!(
        s.engine
            .tracker(&k, "u")
            .guarantee(secs(10))
            .safety_margin(secs(10))
            .build()
            .is_err()
    );
}

// Batching

#[test]
fn renewals_falling_due_together_share_a_transaction() -> R {
    let s = setup();
    let trackers: Vec<_> = (0..300)
        .map(|i| tracker(&s.engine, &format!("k{i}"), "u0"))
        .collect();
    for t in &trackers {
        assert!(t.wait_leader().wait());
    }
    s.engine.settle();
    let before = s.engine.background_stats();
    s.clock.advance(secs(30));
    s.engine.settle();
    let after = s.engine.background_stats();
    assert_eq!(after.claims - before.claims, 300);
    assert_eq!(after.write_transactions - before.write_transactions, 1);
    for t in &trackers {
        assert!(t.is_leader());
    }
    Ok(())
}

// The scoped helper

#[test]
fn while_leading_hands_over_the_token_and_signals_loss() -> R {
    let s = setup();
    s.engine
        .connection()?
        .execute_batch("CREATE TABLE work (epoch INTEGER)")?;
    let t = tracker(&s.engine, "a", "u0");
    let result = t.while_leading(|leading| -> leasehold::Result<bool> {
        let mut txn = Txn::new();
        leading.token().add_to(&mut txn);
        txn.execute("INSERT INTO work VALUES (?)", [leading.epoch()]);
        s.engine.commit(&txn)?;
        // Leadership is taken away mid-closure.
        hand_over(&s.engine, "a", "usurper").expect("hand over");
        assert!(leading.lost().wait());
        assert!(leading.is_lost());
        let mut txn = Txn::new();
        leading.token().add_to(&mut txn);
        txn.execute("INSERT INTO work VALUES (?)", [leading.epoch()]);
        Ok(s.engine.commit(&txn).is_err())
    })??;
    assert!(result, "the write after the loss was refused");
    let n: i64 = s
        .engine
        .connection()?
        .query_row("SELECT count(*) FROM work", [], |r| r.get(0))?;
    assert_eq!(n, 1);
    Ok(())
}

// Async

/// A minimal executor: polls a future on this thread, parking between wakes.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn a_ticket_can_be_awaited() -> R {
    let s = setup();
    s.engine.claim(&key("a"), "other", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    let leader = t.wait_leader();
    let engine = s.engine.clone();
    let releaser = std::thread::spawn(move || engine.release(&key("a"), "other"));
    let (led, then) = block_on(async move {
        let led = leader.await;
        (led, "after the await")
    });
    assert!(led);
    assert_eq!(then, "after the await");
    releaser.join().expect("join")?;
    assert!(Ticket::wait(&t.claim_leader()));
    Ok(())
}

#[test]
fn many_trackers_in_one_process_are_ordinary() -> R {
    let s = setup();
    let trackers: Vec<_> = (0..2000)
        .map(|i| {
            s.engine
                .tracker(&Key::new("many", format!("k{i}")).expect("key"), "u0")
                .guarantee(secs(30))
                .build()
                .expect("tracker")
        })
        .collect();
    s.engine.settle();
    assert_eq!(s.engine.leases("many")?.len(), 2000);
    s.clock.advance(secs(30));
    s.engine.settle();
    assert!(trackers.iter().all(LeaseTracker::is_leader));
    assert!(s.engine.background_stats().write_transactions <= 12);
    Ok(())
}

// Regressions found in review.

#[test]
fn a_sole_leader_revoked_by_an_administrator_leads_again() -> R {
    let s = setup();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    s.clock.advance(secs(10)); // a long, stable tenure
    s.engine.settle();
    let lost = t.wait_minion();
    s.engine.revoke(&key("a"))?;
    assert!(lost.wait());
    assert!(
        t.wait_leader().wait(),
        "it sees the vacancy and claims again"
    );
    assert_eq!(t.epoch(), Some(2));
    Ok(())
}

#[test]
fn a_leader_that_lost_to_another_takes_over_when_that_one_lapses() -> R {
    let s = setup();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    s.clock.advance(secs(10));
    s.engine.settle();
    hand_over(&s.engine, "a", "other")?; // held for 600 s, never renewed
    assert!(t.wait_minion().wait());
    s.engine.settle();
    let leader = t.wait_leader();
    s.clock.advance(secs(599));
    s.engine.settle();
    assert_eq!(leader.try_wait(), None);
    s.clock.advance(secs(1)); // the other's lease lapses: no event is logged
    assert!(leader.wait());
    Ok(())
}

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
fn a_tracker_that_must_not_reclaim_stays_a_minion_after_a_revoke() -> R {
    let s = setup();
    let t = s.engine.tracker(&key("a"), "u0").reclaim(false).build()?;
    assert!(t.wait_leader().wait());
    s.engine.revoke(&key("a"))?;
    assert!(t.wait_minion().wait());
    s.clock.advance(secs(100));
    s.engine.settle();
    assert!(!t.is_leader());
    assert_eq!(
        holder(&s.engine, "a"),
        None,
        "it did not take the lease back"
    );
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
fn a_timeout_too_long_to_express_waits_without_panicking() -> R {
    let s = setup();
    // Vacant: returns at once, whatever the timeout.
    s.engine
        .block_until_released_timeout(&key("free"), Duration::MAX)?;
    s.engine.claim(&key("held"), "other", secs(1))?;
    assert!(!s.engine.wait_for_events(None, 0, Duration::MAX)?.is_empty());
    let engine = s.engine.clone();
    let waiter = std::thread::spawn(move || {
        engine.block_until_released_timeout(&key("held"), Duration::MAX)
    });
    s.engine.release(&key("held"), "other")?;
    waiter.join().expect("waiter")?;
    Ok(())
}

#[test]
fn a_release_stuck_on_the_write_lock_does_not_delay_another_leaders_step_down() -> R {
    // Real time: the point is what happens while the lock is held.
    let db = TempDb::new();
    let engine = Engine::builder(&db.path).busy_timeout(secs(120)).build()?;
    let a = engine
        .tracker(&key("a"), "u0")
        .guarantee(Duration::from_millis(300))
        .build()?;
    let b = engine
        .tracker(&key("b"), "u0")
        .guarantee(secs(30))
        .build()?;
    assert!(a.wait_leader().wait() && b.wait_leader().wait());
    // Someone holds the write lock; B is stopped, so the background thread
    // sets out to release B's lease and must wait for the lock.
    let mut conn = engine.connection()?;
    let blocker = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let minion = a.wait_minion();
    drop(b); // stops without waiting
    // A cannot renew either: it must step down by its deadline, not when
    // the release gives up two minutes from now.
    assert_eq!(minion.wait_timeout(secs(60)), Some(true));
    drop(blocker);
    Ok(())
}

//! Trackers and tickets (research/juju.md §6, "Tracker"), on a manual clock.
//!
//! The background thread works asynchronously; tests meet it explicitly with
//! `Engine::settle` (it returns once the thread has caught up with the
//! current engine time) or by waiting on tickets. (SQLite's fault-injection
//! tests, whose triggers make writes fail, are in `tests/tracker.rs`.)

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use leasehold::engine::{Engine, LeaseTracker};
use leasehold::leadership::{Ticket, Tracker};
use leasehold::{Backend, Error, HandleError, Key, ManualClock};

use crate::harness::{Harness, Options, Step};
use crate::support::{key, secs, t0};

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

struct Setup<H: Harness> {
    db: H::Database,
    engine: Engine<H::Backend>,
    clock: ManualClock,
}

fn setup<H: Harness>() -> Setup<H> {
    let db = H::database();
    let clock = ManualClock::new(t0());
    let engine = H::open(&db, Options::manual(&clock).errors(Errors::default())).expect("engine");
    Setup { db, engine, clock }
}

fn tracker<B: Backend>(engine: &Engine<B>, name: &str, holder: &str) -> LeaseTracker<B> {
    engine
        .tracker(&key(name), holder)
        .guarantee(secs(30))
        .build()
        .expect("tracker")
}

/// Hands lease `name` over from `from` to `to` (held for 600 s), in one
/// transaction of the caller's own: release, then claim.
fn hand_over<H: Harness>(
    engine: &Engine<H::Backend>,
    name: &str,
    from: &str,
    to: &str,
) -> leasehold::Result<()> {
    let k = key(name);
    H::transaction(
        engine,
        &mut [Step::Release(&k, from), Step::Claim(&k, to, secs(600))],
    )
}

fn holder<B: Backend>(engine: &Engine<B>, name: &str) -> Option<String> {
    engine
        .lease(&key(name))
        .expect("lease")
        .and_then(|l| l.holder().map(str::to_owned))
}

// Initial claim

pub fn a_tracker_on_a_vacant_lease_leads<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_waker_may_call_back_into_its_tracker<H: Harness>() -> R {
    // An executor may poll a task right inside `wake`, and the task may ask
    // its tracker something: the driver must not be holding its lock then.
    struct Reentrant<B: Backend> {
        tracker: Arc<LeaseTracker<B>>,
        done: Mutex<Option<std::sync::mpsc::Sender<bool>>>,
    }
    impl<B: Backend> Wake for Reentrant<B> {
        fn wake(self: Arc<Self>) {
            let leading = self.tracker.is_leader();
            if let Some(tx) = self.done.lock().expect("lock").take() {
                let _ = tx.send(leading);
            }
        }
    }
    let s = setup::<H>();
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

pub fn a_denied_tracker_is_a_minion<H: Harness>() -> R {
    let s = setup::<H>();
    s.engine.claim(&key("a"), "other", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    assert!(!t.claim_leader().wait());
    assert_eq!(t.wait_leader().try_wait(), None);
    assert!(!t.is_leader());
    Ok(())
}

// Renewal

pub fn a_leader_renews_when_half_its_lease_is_left<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_claim_ticket_after_the_renewal_point_renews_first<H: Harness>() -> R {
    let s = setup::<H>();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    s.clock.advance(secs(45));
    assert!(t.claim_leader().wait());
    let lease = s.engine.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(105)));
    Ok(())
}

pub fn losing_the_lease_on_renewal_makes_a_minion<H: Harness>() -> R {
    let s = setup::<H>();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    let minion = t.wait_minion();
    // An administrator hands the lease to someone else, in one transaction
    // (the tracker would otherwise claim the vacant lease back at once).
    hand_over::<H>(&s.engine, "a", "u0", "other")?;
    assert!(minion.wait(), "noticed at once, not at the next renewal");
    assert!(!t.is_leader());
    assert!(!t.claim_leader().wait());
    Ok(())
}

pub fn a_renewal_kept_from_the_write_lock_is_reported_with_its_lease<H: Harness>() -> R {
    let db = H::database();
    let clock = ManualClock::new(t0());
    let errors = Errors::default();
    let engine = H::open(
        &db,
        Options::manual(&clock)
            .busy_timeout(Duration::from_millis(50))
            .errors(errors.clone()),
    )?;
    let t = tracker(&engine, "locked", "u0");
    // The first claim runs under the short busy timeout too: on a loaded
    // machine it may run out, and the tracker tries again after a backoff on
    // the engine's (manual) clock. Move the clock on until it leads.
    let leader = t.wait_leader();
    while leader.wait_timeout(Duration::from_millis(200)).is_none() {
        clock.advance(Duration::from_millis(100));
    }
    assert!(leader.wait());
    let before = errors.seen().len();
    // Another engine's transaction holds the write lock while the renewal
    // falls due (a guard on the lease: SQLite's write lock; a row lock on a
    // server).
    let other = H::open(&db, Options::manual(&clock))?;
    let token = other.token(&key("locked"), "u0")?;
    H::transaction(
        &other,
        &mut [
            Step::Check(&token),
            Step::Put("lock", "held"),
            Step::Run(&mut || {
                clock.advance(secs(31)); // renewal due
                engine.settle();
            }),
        ],
    )?;
    let seen = errors.seen().split_off(before);
    assert!(
        seen.iter()
            .any(|e| e.contains("renew") && e.contains("test/locked") && e.contains("u0")),
        "the failure names the lease and holder: {seen:?}"
    );
    t.stop();
    Ok(())
}

// Minions

pub fn a_minion_takes_over_when_the_leader_releases<H: Harness>() -> R {
    let s = setup::<H>();
    s.engine.claim(&key("a"), "other", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    let leader = t.wait_leader();
    s.engine.release(&key("a"), "other")?;
    assert!(leader.wait());
    assert_eq!(t.epoch(), Some(2));
    Ok(())
}

pub fn a_minion_takes_over_when_the_lease_expires<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_release_seen_but_lost_to_another_claimant_blocks_again<H: Harness>() -> R {
    let s = setup::<H>();
    s.engine.claim(&key("a"), "x", secs(600))?;
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_minion().wait());
    let leader = t.wait_leader();
    // x releases and y claims in one transaction: the tracker sees the
    // change, but the key is never vacant.
    hand_over::<H>(&s.engine, "a", "x", "y")?;
    s.engine.settle();
    assert_eq!(leader.try_wait(), None);
    assert_eq!(holder(&s.engine, "a").as_deref(), Some("y"));
    s.engine.release(&key("a"), "y")?;
    assert!(leader.wait());
    Ok(())
}

pub fn a_pinned_lease_keeps_minions_waiting_until_unpinned<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn stopping_resolves_pending_tickets_false_and_releases<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_tracker_can_leave_its_lease_to_expire<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn shutting_the_engine_down_stops_every_tracker<H: Harness>() -> R {
    let s = setup::<H>();
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
    let reopened = H::open(&s.db, Options::default())?;
    assert!(reopened.leases("test")?.is_empty(), "all released");
    Ok(())
}

pub fn bad_tracker_settings_are_refused<H: Harness>() {
    let s = setup::<H>();
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

pub fn renewals_falling_due_together_share_a_transaction<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn while_leading_hands_over_the_token_and_signals_loss<H: Harness>() -> R {
    let s = setup::<H>();
    let t = tracker(&s.engine, "a", "u0");
    let result = t.while_leading(|leading| -> leasehold::Result<bool> {
        let epoch = leading.epoch().to_string();
        H::guarded_write(&s.engine, Some(leading.token()), "work-1", &epoch)?;
        // Leadership is taken away mid-closure.
        hand_over::<H>(&s.engine, "a", "u0", "usurper").expect("hand over");
        assert!(leading.lost().wait());
        assert!(leading.is_lost());
        Ok(H::guarded_write(&s.engine, Some(leading.token()), "work-2", &epoch).is_err())
    })??;
    assert!(result, "the write after the loss was refused");
    let n = ["work-1", "work-2"]
        .iter()
        .filter(|name| H::read_back(&s.engine, name).expect("read").is_some())
        .count();
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

pub fn a_ticket_can_be_awaited<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn many_trackers_in_one_process_are_ordinary<H: Harness>() -> R {
    let s = setup::<H>();
    // Started while a transaction holds the database, so that the
    // background thread meets them together however the threads are
    // scheduled (else a fast backend may claim them a few at a time as
    // they come).
    let mut trackers = Vec::new();
    H::transaction(
        &s.engine,
        &mut [
            Step::Put("lock", "held"),
            Step::Run(&mut || {
                trackers = (0..2000)
                    .map(|i| {
                        s.engine
                            .tracker(&Key::new("many", format!("k{i}")).expect("key"), "u0")
                            .guarantee(secs(30))
                            .build()
                            .expect("tracker")
                    })
                    .collect();
            }),
        ],
    )?;
    s.engine.settle();
    assert_eq!(s.engine.leases("many")?.len(), 2000);
    s.clock.advance(secs(30));
    s.engine.settle();
    assert!(trackers.iter().all(LeaseTracker::is_leader));
    assert!(s.engine.background_stats().write_transactions <= 12);
    Ok(())
}

// Regressions found in review.

pub fn a_sole_leader_revoked_by_an_administrator_leads_again<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_leader_that_lost_to_another_takes_over_when_that_one_lapses<H: Harness>() -> R {
    let s = setup::<H>();
    let t = tracker(&s.engine, "a", "u0");
    assert!(t.wait_leader().wait());
    s.clock.advance(secs(10));
    s.engine.settle();
    hand_over::<H>(&s.engine, "a", "u0", "other")?; // held for 600 s, never renewed
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

pub fn a_tracker_that_must_not_reclaim_stays_a_minion_after_a_revoke<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_timeout_too_long_to_express_waits_without_panicking<H: Harness>() -> R {
    let s = setup::<H>();
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

pub fn a_release_stuck_on_the_write_lock_does_not_delay_another_leaders_step_down<H: Harness>() -> R
{
    // Real time: the point is what happens while the lock is held.
    let db = H::database();
    let engine = H::open(&db, Options::default().busy_timeout(secs(120)))?;
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
    let mut b = Some(b);
    let mut blocked = || {
        let minion = a.wait_minion();
        drop(b.take()); // stops without waiting
        // A cannot renew either: it must step down by its deadline, not
        // when the release gives up two minutes from now.
        assert_eq!(minion.wait_timeout(secs(60)), Some(true));
    };
    // The lock: guards on both leases (SQLite's write lock; row locks on a
    // server).
    let (guard_a, guard_b) = (
        engine.token(&key("a"), "u0")?,
        engine.token(&key("b"), "u0")?,
    );
    H::transaction(
        &engine,
        &mut [
            Step::Check(&guard_a),
            Step::Check(&guard_b),
            Step::Put("lock", "held"),
            Step::Run(&mut blocked),
        ],
    )?;
    Ok(())
}

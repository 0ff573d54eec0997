//! Waiting until a lease is released (DESIGN.md semantics 8), and the
//! Juju-style leadership traits as far as they are backend-neutral
//! (SQLite's `Token` — `check_in`, SQL guards, `Txn` — is tested in
//! `tests/leadership.rs`).

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use leasehold::Error;
use leasehold::leadership::{self, Claimer};

use crate::harness::{Harness, manual_engine};
use crate::support::{key, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// Application code written against the `Claimer` trait: claim, then
/// write only while leading.
fn lead_and_write<H: Harness>(
    svc: &leasehold::engine::Engine<H::Backend>,
    unit: &str,
) -> leasehold::Result<()> {
    svc.claim_leadership("wordpress", unit, secs(30))?;
    let token = svc.token(&leadership::key("wordpress")?, unit)?;
    H::guarded_write(svc, Some(&token), "settings", unit)
}

pub fn the_claimer_trait_claims_leadership<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    lead_and_write::<H>(&engine, "wordpress/0")?;
    assert_eq!(
        H::read_back(&engine, "settings")?.as_deref(),
        Some("wordpress/0")
    );
    assert!(matches!(
        engine.claim_leadership("wordpress", "wordpress/1", secs(30)),
        Err(Error::ClaimDenied { current_holder, .. }) if current_holder == "wordpress/0"
    ));
    assert!(lead_and_write::<H>(&engine, "wordpress/1").is_err());
    let lease = engine
        .lease(&leadership::key("wordpress")?)?
        .expect("lease");
    assert_eq!(lease.key().namespace(), leadership::NAMESPACE);
    let token = engine.token(&leadership::key("wordpress")?, "wordpress/1")?;
    assert!(matches!(token.check(), Err(Error::GuardFailed { .. })));
    assert!(H::guarded_write(&engine, Some(&token), "settings", "wordpress/1").is_err());
    assert_eq!(
        H::read_back(&engine, "settings")?.as_deref(),
        Some("wordpress/0")
    );
    assert!(leadership::key("").is_err());
    Ok(())
}

pub fn blocking_returns_at_once_for_a_vacant_key<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    engine.block_until_leadership_released("nobody-leads")?;
    engine.block_until_released(&key("never-claimed"))?;
    Ok(())
}

pub fn blocking_wakes_when_the_leader_releases<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    engine.claim_leadership("app", "app/0", secs(3600))?;
    let (started, blocked) = mpsc::channel();
    let waiter = {
        let engine = engine.clone();
        thread::spawn(move || {
            started.send(()).expect("send");
            engine.block_until_leadership_released("app")
        })
    };
    blocked.recv()?;
    engine.release(&leadership::key("app")?, "app/0")?;
    waiter.join().expect("waiter")?;
    Ok(())
}

pub fn blocking_wakes_when_the_lease_expires_on_the_clock<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(60))?;
    let (started, blocked) = mpsc::channel();
    let waiter = {
        let engine = engine.clone();
        thread::spawn(move || {
            started.send(()).expect("send");
            engine.block_until_released(&key("a"))
        })
    };
    blocked.recv()?;
    clock.advance(secs(59));
    assert!(engine.lease(&key("a"))?.expect("lease").is_held());
    clock.advance(secs(1));
    waiter.join().expect("waiter")?;
    Ok(())
}

pub fn a_change_of_holder_keeps_waiters_blocked<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(60))?;
    engine.revoke(&key("a"))?;
    engine.claim(&key("a"), "h2", secs(60))?;
    let err = engine
        .block_until_released_timeout(&key("a"), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    Ok(())
}

pub fn shutting_down_fails_waiters_with_stopped<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(3600))?;
    let (started, blocked) = mpsc::channel();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            let started = started.clone();
            thread::spawn(move || {
                started.send(()).expect("send");
                engine.block_until_released(&key("a"))
            })
        })
        .collect();
    for _ in 0..3 {
        blocked.recv()?;
    }
    engine.shutdown();
    for w in waiters {
        let err = w.join().expect("waiter").unwrap_err();
        assert!(matches!(err, Error::Stopped { .. }), "{err}");
    }
    assert!(matches!(
        engine.claim(&key("b"), "h1", secs(1)),
        Err(Error::Stopped { .. })
    ));
    Ok(())
}

//! The Juju-style leadership traits, and blocking until a lease is released.

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use leasehold::leadership::{self, Checker, Claimer, Token};
use leasehold::rusqlite::TransactionBehavior;
use leasehold::{Error, Txn};
use support::{key, manual_engine, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// Application code written against the traits only: claim, then write
/// inside a transaction only while leading.
fn lead_and_write<C>(
    svc: &C,
    conn: &mut leasehold::rusqlite::Connection,
    unit: &str,
) -> leasehold::Result<()>
where
    C: Claimer + Checker,
{
    svc.claim_leadership("wordpress", unit, secs(30))?;
    let token = svc.leadership_check("wordpress", unit)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    token.check_in(&tx)?;
    tx.execute_batch("CREATE TABLE settings (k TEXT)")
        .expect("write");
    tx.commit().expect("commit");
    Ok(())
}

#[test]
fn traits_mirror_the_seed_interface() -> R {
    let (_db, engine, _clock) = manual_engine();
    let mut conn = engine.connection()?;
    lead_and_write(&engine, &mut conn, "wordpress/0")?;
    assert!(matches!(
        engine.claim_leadership("wordpress", "wordpress/1", secs(30)),
        Err(Error::ClaimDenied { current_holder, .. }) if current_holder == "wordpress/0"
    ));
    let lease = engine
        .lease(&leadership::key("wordpress")?)?
        .expect("lease");
    assert_eq!(lease.key().namespace(), leadership::NAMESPACE);
    let token = engine.leadership_check("wordpress", "wordpress/1")?;
    assert!(matches!(
        Token::check(&token),
        Err(Error::GuardFailed { .. })
    ));
    let mut txn = Txn::new();
    Token::add_to(&token, &mut txn);
    assert!(engine.commit(&txn).is_err());
    assert!(Token::guard(&token).sql().contains("leasehold_leases"));
    assert!(engine.leadership_check("", "wordpress/0").is_err());
    Ok(())
}

#[test]
fn blocking_returns_at_once_for_a_vacant_key() -> R {
    let (_db, engine, _clock) = manual_engine();
    engine.block_until_leadership_released("nobody-leads")?;
    engine.block_until_released(&key("never-claimed"))?;
    Ok(())
}

#[test]
fn blocking_wakes_when_the_leader_releases() -> R {
    let (_db, engine, _clock) = manual_engine();
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

#[test]
fn blocking_wakes_when_the_lease_expires_on_the_clock() -> R {
    let (_db, engine, clock) = manual_engine();
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

#[test]
fn a_change_of_holder_keeps_waiters_blocked() -> R {
    let (_db, engine, _clock) = manual_engine();
    engine.claim(&key("a"), "h1", secs(60))?;
    engine.revoke(&key("a"))?;
    engine.claim(&key("a"), "h2", secs(60))?;
    let err = engine
        .block_until_released_timeout(&key("a"), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    Ok(())
}

#[test]
fn shutting_down_fails_waiters_with_stopped() -> R {
    let (_db, engine, _clock) = manual_engine();
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

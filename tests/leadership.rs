//! The Juju-style leadership traits in SQLite's types (`Token`: `check_in`,
//! the SQL guard, `Txn`). Blocking until a lease is released, and the
//! backend-neutral traits, are in the conformance suite
//! (`tests/conformance/leadership.rs`).

mod support;

use leasehold::leadership::{self, Checker, Claimer, Token};
use leasehold::rusqlite::TransactionBehavior;
use leasehold::{Error, Txn};
use support::{manual_engine, secs};

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

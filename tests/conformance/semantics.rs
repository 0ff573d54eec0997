//! DESIGN.md semantics 1–5 and 7, one test (or a few) per line, on a manual
//! clock; then history, listing and import. Guards (semantics 6) are in
//! `guards.rs`.

use leasehold::{Error, EventKind, Found, Key, ManualClock};

use crate::harness::{Harness, Options, manual_engine};
use crate::support::{key, secs, t0};

type R = Result<(), Box<dyn std::error::Error>>;

// 1. Claim

pub fn claiming_a_vacant_key_starts_epoch_one<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let tenure = engine.claim(&key("a"), "h1", secs(10))?;
    assert_eq!(tenure.epoch(), 1);
    assert!(!tenure.is_extension());
    assert_eq!(tenure.started_at(), t0());
    assert_eq!(tenure.expires_at(), t0() + secs(10));
    let lease = engine.lease(&key("a"))?.expect("lease");
    assert_eq!((lease.holder(), lease.epoch()), (Some("h1"), 1));
    Ok(())
}

pub fn the_holder_reclaiming_extends_with_the_same_epoch<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(5));
    let again = engine.claim(&key("a"), "h1", secs(10))?;
    assert!(again.is_extension());
    assert_eq!(again.epoch(), 1);
    assert_eq!(again.started_at(), t0());
    assert_eq!(again.expires_at(), t0() + secs(15));
    Ok(())
}

/// `Engine::claim` remembers the tenures it claimed and extends them in one
/// statement when claimed again; whatever happened to the lease meanwhile,
/// through this engine or another, the answer is the full path's.
pub fn reclaiming_after_changes_elsewhere_answers_as_a_fresh_claim_would<H: Harness>() -> R {
    let (db, engine, clock) = manual_engine::<H>();
    let other = H::open(&db, Options::manual(&clock))?;
    let a = key("a");
    let first = engine.claim(&a, "h1", secs(10))?;
    assert_eq!(first.epoch(), 1);

    // Revoked elsewhere: the next claim is a new tenure.
    other.revoke(&a)?;
    let second = engine.claim(&a, "h1", secs(10))?;
    assert_eq!((second.epoch(), second.is_extension()), (2, false));

    // Ran out: a new tenure, not an extension of the lapsed one.
    clock.advance(secs(11));
    let third = engine.claim(&a, "h1", secs(10))?;
    assert_eq!((third.epoch(), third.is_extension()), (3, false));
    assert_eq!(third.started_at(), t0() + secs(11));

    // Released and taken by someone else elsewhere: denied.
    engine.release(&a, "h1")?;
    other.claim(&a, "h2", secs(10))?;
    assert!(matches!(
        engine.claim(&a, "h1", secs(10)),
        Err(Error::ClaimDenied { .. })
    ));

    // h2 releases, h1 claims (epoch 5); the same holder in another engine
    // extends it for longer; claiming again here keeps, and says, the
    // longer expiry.
    other.release(&a, "h2")?;
    let fifth = engine.claim(&a, "h1", secs(10))?;
    assert_eq!(fifth.epoch(), 5);
    other.claim(&a, "h1", secs(100))?;
    let again = engine.claim(&a, "h1", secs(10))?;
    assert_eq!((again.epoch(), again.is_extension()), (5, true));
    assert_eq!(again.started_at(), fifth.started_at());
    assert_eq!(again.expires_at(), t0() + secs(111));
    let stored = engine.lease(&a)?.expect("lease");
    assert_eq!(stored.expires_at(), Some(again.expires_at()));

    // Extended through this engine: the next claim's expiry stays exact.
    let longer = engine.extend(&again, secs(500))?;
    clock.advance(secs(1));
    let exact = engine.claim(&a, "h1", secs(10))?;
    assert_eq!(exact.expires_at(), longer.expires_at());
    assert_eq!(
        engine.lease(&a)?.expect("lease").expires_at(),
        Some(exact.expires_at())
    );
    Ok(())
}

pub fn extend_all_renews_each_tenure_or_says_why_not<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let keys = [key("a"), key("b"), key("c")];
    let tenures = keys
        .iter()
        .map(|k| engine.claim(k, "h1", secs(10)))
        .collect::<Result<Vec<_>, _>>()?;
    engine.revoke(&keys[1])?;
    clock.advance(secs(5));

    let out = engine.extend_all(&tenures, secs(30))?;
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_ref().ok(), Some(&(t0() + secs(35))));
    assert!(matches!(out[1], Err(Error::NotHeld { .. })), "{:?}", out[1]);
    assert_eq!(out[2].as_ref().ok(), Some(&(t0() + secs(35))));
    assert_eq!(
        engine.lease(&keys[2])?.and_then(|l| l.expires_at()),
        Some(t0() + secs(35))
    );

    // A bad duration: the same refusal for every tenure, nothing written.
    let out = engine.extend_all(&tenures, secs(0))?;
    assert!(
        out.iter()
            .all(|r| matches!(r, Err(Error::InvalidArgument { .. })))
    );
    assert_eq!(
        engine.lease(&keys[0])?.and_then(|l| l.expires_at()),
        Some(t0() + secs(35))
    );

    // Claiming again afterwards says the renewed expiry.
    let again = engine.claim(&keys[0], "h1", secs(1))?;
    assert_eq!((again.epoch(), again.is_extension()), (1, true));
    assert_eq!(again.expires_at(), t0() + secs(35));
    Ok(())
}

pub fn another_holder_is_denied_by_name<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    match engine.claim(&key("a"), "h2", secs(10)) {
        Err(Error::ClaimDenied {
            key,
            holder,
            current_holder,
        }) => {
            assert_eq!((key.name(), holder.as_str()), ("a", "h2"));
            assert_eq!(current_holder, "h1");
        }
        other => panic!("expected ClaimDenied, got {other:?}"),
    }
    let lease = engine.lease(&key("a"))?.expect("lease");
    assert_eq!(
        (lease.holder(), lease.epoch()),
        (Some("h1"), 1),
        "unchanged"
    );
    Ok(())
}

pub fn the_previous_holder_reclaiming_after_a_lapse_gets_a_new_epoch<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let first = engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(10));
    let second = engine.claim(&key("a"), "h1", secs(10))?;
    assert!(!second.is_extension());
    assert_eq!(second.epoch(), 2);
    assert!(
        first.token().check().is_err(),
        "the lapsed tenure's token fails"
    );
    second.token().check()?;
    Ok(())
}

pub fn keys_are_isolated_by_namespace_and_name<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    engine.claim(&Key::new("ns1", "x")?, "h1", secs(10))?;
    engine.claim(&Key::new("ns2", "x")?, "h2", secs(10))?;
    engine.claim(&Key::new("ns1", "y")?, "h3", secs(10))?;
    let ns1: Vec<_> = engine
        .leases("ns1")?
        .into_iter()
        .map(|l| l.holder().map(str::to_owned))
        .collect();
    assert_eq!(ns1, [Some("h1".to_owned()), Some("h3".to_owned())]);
    assert_eq!(engine.leases("ns2")?.len(), 1);
    assert!(engine.leases("ns3")?.is_empty());
    Ok(())
}

// 2. Guarantee

pub fn the_lease_is_held_until_call_start_plus_duration<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(10) - std::time::Duration::from_millis(1));
    assert!(engine.claim(&key("a"), "h2", secs(1)).is_err());
    assert_eq!(
        engine
            .lease(&key("a"))?
            .and_then(|l| l.holder().map(str::to_owned)),
        Some("h1".into())
    );
    clock.advance(std::time::Duration::from_millis(1));
    assert!(!engine.lease(&key("a"))?.expect("lease").is_held());
    assert_eq!(engine.claim(&key("a"), "h2", secs(1))?.epoch(), 2);
    Ok(())
}

pub fn sub_millisecond_durations_round_up<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let t = engine.claim(&key("a"), "h1", std::time::Duration::from_micros(1))?;
    assert_eq!(t.expires_at(), t0() + std::time::Duration::from_millis(1));
    clock.advance(std::time::Duration::from_micros(999));
    assert!(engine.lease(&key("a"))?.expect("lease").is_held());
    Ok(())
}

pub fn the_guarantee_counts_from_the_instant_not_the_millisecond<H: Harness>() -> R {
    let db = H::database();
    let clock = ManualClock::new(t0() + std::time::Duration::from_micros(700));
    let engine = H::open(&db, Options::manual(&clock))?;
    let token = engine
        .claim(&key("a"), "h1", std::time::Duration::from_millis(1000))?
        .token();
    clock.advance(std::time::Duration::from_micros(999_900)); // call start + 999.9 ms
    token.check()?;
    Ok(())
}

// 3. Never shorten

pub fn an_extension_never_shortens<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(60))?;
    clock.advance(secs(1));
    let t = engine.claim(&key("a"), "h1", secs(1))?;
    assert_eq!(t.expires_at(), t0() + secs(60));
    Ok(())
}

// 4. Release and revoke

pub fn release_ends_the_tenure_and_keeps_the_epoch_counter<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let first = engine.claim(&key("a"), "h1", secs(60))?;
    engine.release(&key("a"), "h1")?;
    let lease = engine.lease(&key("a"))?.expect("lease");
    assert_eq!((lease.holder(), lease.epoch()), (None, 1));
    assert!(first.token().check().is_err());
    assert_eq!(engine.claim(&key("a"), "h1", secs(60))?.epoch(), 2);
    Ok(())
}

pub fn release_by_a_non_holder_is_not_held_and_changes_nothing<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    assert!(matches!(
        engine.release(&key("never"), "h1"),
        Err(Error::NotHeld {
            current_holder: None,
            ..
        })
    ));
    engine.claim(&key("a"), "h1", secs(60))?;
    match engine.release(&key("a"), "h2") {
        Err(Error::NotHeld {
            holder,
            current_holder,
            ..
        }) => assert_eq!(
            (holder.as_str(), current_holder.as_deref()),
            ("h2", Some("h1"))
        ),
        other => panic!("expected NotHeld, got {other:?}"),
    }
    assert_eq!(
        engine.lease(&key("a"))?.expect("lease").holder(),
        Some("h1")
    );
    Ok(())
}

pub fn releasing_a_lapsed_lease_is_not_held<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(1))?;
    clock.advance(secs(2));
    assert!(matches!(
        engine.release(&key("a"), "h1"),
        Err(Error::NotHeld {
            current_holder: None,
            ..
        })
    ));
    Ok(())
}

pub fn revoke_ends_anyones_tenure<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    assert!(
        engine.revoke(&key("a"))?.is_none(),
        "absent key: nothing to revoke"
    );
    let t = engine.claim(&key("a"), "h1", secs(60))?;
    let ended = engine.revoke(&key("a"))?.expect("a tenure was ended");
    assert_eq!((ended.holder(), ended.epoch()), (Some("h1"), 1));
    assert!(
        engine.revoke(&key("a"))?.is_none(),
        "vacant key: nothing to revoke"
    );
    assert!(t.token().check().is_err());
    assert_eq!(engine.claim(&key("a"), "h2", secs(60))?.epoch(), 2);
    Ok(())
}

// 5. Pins

pub fn a_pinned_lease_does_not_expire_and_others_are_still_denied<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    engine.pin(&key("a"), "machine-0", "series upgrade", None)?;
    clock.advance(secs(3600));
    let lease = engine.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.holder(), Some("h1"));
    assert_eq!(lease.pins().len(), 1);
    assert_eq!(lease.pins()[0].reason(), "series upgrade");
    assert!(matches!(
        engine.claim(&key("a"), "h2", secs(10)),
        Err(Error::ClaimDenied { .. })
    ));
    let t = engine.claim(&key("a"), "h1", secs(10))?;
    assert!(t.is_extension(), "the holder still extends");
    assert_eq!(t.epoch(), 1);
    Ok(())
}

pub fn pins_are_a_multiset_of_entities<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    engine.pin(&key("a"), "e1", "", None)?;
    engine.pin(&key("a"), "e1", "again", None)?; // idempotent per entity
    engine.pin(&key("a"), "e2", "", None)?;
    assert_eq!(engine.lease(&key("a"))?.expect("lease").pins().len(), 2);
    clock.advance(secs(60));
    assert!(engine.unpin(&key("a"), "e1")?);
    assert!(!engine.unpin(&key("a"), "e1")?, "e1 has no pin left");
    assert!(!engine.unpin(&key("a"), "e3")?);
    assert_eq!(
        engine.lease(&key("a"))?.expect("lease").holder(),
        Some("h1"),
        "e2 still pins"
    );
    assert!(engine.unpin(&key("a"), "e2")?);
    assert!(
        !engine.lease(&key("a"))?.expect("lease").is_held(),
        "normal expiry resumes"
    );
    assert_eq!(engine.claim(&key("a"), "h2", secs(10))?.epoch(), 2);
    Ok(())
}

pub fn pinning_a_vacant_key_pins_the_next_tenure<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.pin(&key("a"), "e1", "maintenance", None)?;
    let lease = engine.lease(&key("a"))?.expect("a pinned key exists");
    assert_eq!(
        (lease.holder(), lease.epoch(), lease.is_pinned()),
        (None, 0, true)
    );
    let t = engine.claim(&key("a"), "h1", secs(10))?;
    assert_eq!(t.epoch(), 1);
    clock.advance(secs(100));
    assert_eq!(
        engine.lease(&key("a"))?.expect("lease").holder(),
        Some("h1")
    );
    Ok(())
}

pub fn a_pin_can_expire_by_itself<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    engine.pin(&key("a"), "e1", "forgettable", Some(secs(100)))?;
    clock.advance(secs(99));
    assert!(engine.lease(&key("a"))?.expect("lease").is_held());
    clock.advance(secs(1));
    let lease = engine.lease(&key("a"))?.expect("lease");
    assert!(!lease.is_held());
    assert!(lease.pins().is_empty());
    Ok(())
}

pub fn pinning_a_lapsed_tenure_does_not_revive_it<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let old = engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(20));
    engine.pin(&key("a"), "e1", "", None)?;
    assert!(!engine.lease(&key("a"))?.expect("lease").is_held());
    assert!(old.token().check().is_err());
    assert_eq!(engine.claim(&key("a"), "h2", secs(10))?.epoch(), 2);
    Ok(())
}

pub fn revoking_a_pinned_lease_keeps_the_pin_for_the_next_tenure<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    engine.pin(&key("a"), "e1", "", None)?;
    engine.revoke(&key("a"))?.expect("revoked");
    engine.claim(&key("a"), "h2", secs(10))?;
    clock.advance(secs(100));
    let lease = engine.lease(&key("a"))?.expect("lease");
    assert_eq!((lease.holder(), lease.epoch()), (Some("h2"), 2));
    Ok(())
}

// 7. Time

pub fn a_clock_stepping_back_does_not_revive_an_expired_lease<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let t = engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(20));
    assert!(t.token().check().is_err());
    clock.step_back(secs(15)); // back to t0 + 5s, inside the old tenure
    assert!(!engine.lease(&key("a"))?.expect("lease").is_held());
    assert!(t.token().check().is_err());
    assert!(engine.claim(&key("a"), "h2", secs(10)).is_ok());
    Ok(())
}

pub fn a_clock_stepping_back_does_not_lengthen_a_tenure<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(5));
    engine.lease(&key("a"))?; // the engine observes t0 + 5s
    clock.step_back(secs(60));
    // The extension is measured from engine time (t0 + 5s), not the clock.
    let t = engine.claim(&key("a"), "h1", secs(10))?;
    assert_eq!(t.expires_at(), t0() + secs(15));
    assert_eq!(engine.now(), t0() + secs(5));
    Ok(())
}

pub fn extending_a_tenure_written_by_a_clock_ahead_measures_from_the_row<H: Harness>() -> R {
    // Two engines on one file; B's clock is 10 s behind A's, and B opened
    // before A wrote, so B's own time is still behind the row A writes.
    let (db, a, clock) = manual_engine::<H>();
    let behind = ManualClock::new(t0());
    let b = H::open(&db, Options::manual(&behind))?;
    clock.advance(secs(10));
    let tenure = a.claim(&key("a"), "h1", secs(30))?; // t0+10s .. t0+40s
    // B renews that very tenure: measured from the row's time (t0+10s), not
    // from B's clock (t0), so the renewal is not shorter than it says.
    let renewed = b.extend(&tenure, secs(60))?;
    assert_eq!(renewed.epoch(), 1);
    let lease = b.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(70)));
    // Once it has run out, it cannot be renewed.
    behind.advance(secs(100));
    assert!(matches!(
        b.extend(&tenure, secs(1)),
        Err(Error::NotHeld { .. })
    ));
    Ok(())
}

pub fn claiming_again_a_tenure_written_by_a_clock_ahead_measures_from_the_row<H: Harness>() -> R {
    // As above, through `claim` by the holder (Juju's way of renewing).
    let (db, a, clock) = manual_engine::<H>();
    let behind = ManualClock::new(t0());
    let b = H::open(&db, Options::manual(&behind))?;
    clock.advance(secs(10));
    a.claim(&key("a"), "h1", secs(30))?; // t0+10s .. t0+40s
    let again = b.claim(&key("a"), "h1", secs(60))?;
    assert!(again.is_extension());
    assert_eq!(again.epoch(), 1);
    assert_eq!(again.expires_at(), t0() + secs(70));
    let lease = b.lease(&key("a"))?.expect("lease");
    assert_eq!(lease.expires_at(), Some(t0() + secs(70)));
    Ok(())
}

pub fn a_new_engine_never_starts_behind_the_persisted_time<H: Harness>() -> R {
    let (db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(30));
    // Any write persists the high-water mark (at most once a second).
    engine.claim(&key("b"), "h1", secs(1))?;
    drop(engine);
    let behind = ManualClock::new(t0());
    let reopened = H::open(&db, Options::manual(&behind))?;
    if !H::TIME_MARK {
        // Per row only (see `Harness::TIME_MARK`): row `a`, last written at
        // t0, is judged from there; `each_lease_row_remembers_its_last_write_time`
        // covers that rule.
        return Ok(());
    }
    assert_eq!(reopened.now(), t0() + secs(30));
    assert!(!reopened.lease(&key("a"))?.expect("lease").is_held());
    Ok(())
}

pub fn a_clock_step_back_is_persisted_at_once_for_engines_opened_later<H: Harness>() -> R {
    // Issue 11: A claims for 10 s and reads the lease after it expired; the
    // host clock then steps back an hour. B, opened after that on the same
    // file, must not see the lease held again: A persists the time it had
    // used as soon as it sees its clock behind it, even on a read.
    let (db, a, clock) = manual_engine::<H>();
    a.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(11));
    assert!(!a.lease(&key("a"))?.expect("lease").is_held());
    clock.step_back(secs(3600));
    assert!(!a.lease(&key("a"))?.expect("lease").is_held());
    let b = H::open(
        &db,
        Options::manual(&ManualClock::new(t0() + secs(11) - secs(3600))),
    )?;
    if !H::TIME_MARK {
        // Per row only: row `a` was last written at t0 (see above).
        return Ok(());
    }
    assert_eq!(b.now(), t0() + secs(11));
    assert!(!b.lease(&key("a"))?.expect("lease").is_held());
    assert_eq!(b.claim(&key("a"), "h2", secs(10))?.epoch(), 2);
    Ok(())
}

pub fn each_lease_row_remembers_its_last_write_time<H: Harness>() -> R {
    let (db, engine, clock) = manual_engine::<H>();
    clock.advance(secs(100));
    // The first write after open persists t0+100s; the next one, within a
    // second, does not persist t0+100.5s, but the row records it.
    engine.claim(&key("x"), "h1", secs(1))?;
    clock.advance(std::time::Duration::from_millis(500));
    engine.claim(&key("a"), "h1", secs(1))?;
    engine.release(&key("a"), "h1")?;
    drop(engine);
    let reopened = H::open(&db, Options::manual(&ManualClock::new(t0())))?;
    // The row's last write was at t0+100.5s: judged no earlier than that.
    let err = reopened.token(&key("a"), "h1")?.check().unwrap_err();
    assert!(
        matches!(
            err,
            Error::GuardFailed {
                found: Found::Vacant { epoch: 1 },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        reopened.claim(&key("a"), "h2", secs(1))?.started_at(),
        t0() + secs(100) + std::time::Duration::from_millis(500)
    );
    Ok(())
}

// History

pub fn transitions_are_recorded_in_the_history<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let k = key("a");
    engine.claim(&k, "h1", secs(10))?;
    engine.claim(&k, "h1", secs(10))?; // extension: not logged
    clock.advance(secs(20));
    engine.claim(&k, "h2", secs(10))?; // h1 lapsed, h2 claimed
    engine.pin(&k, "e1", "why", None)?;
    engine.unpin(&k, "e1")?;
    engine.release(&k, "h2")?;
    engine.claim(&k, "h3", secs(10))?;
    engine.revoke(&k)?;
    let kinds: Vec<(EventKind, Option<String>, u64)> = engine
        .history(&k, 100)?
        .iter()
        .map(|e| (e.kind(), e.holder().map(str::to_owned), e.epoch()))
        .collect();
    use EventKind::*;
    let h = |s: &str| Some(s.to_owned());
    assert_eq!(
        kinds,
        [
            (Claimed, h("h1"), 1),
            (Lapsed, h("h1"), 1),
            (Claimed, h("h2"), 2),
            (Pinned, h("h2"), 2),
            (Unpinned, h("h2"), 2),
            (Released, h("h2"), 2),
            (Claimed, h("h3"), 3),
            (Revoked, h("h3"), 3),
        ]
    );
    let lapsed = &engine.history(&k, 100)?[1];
    assert_eq!(
        lapsed.at(),
        t0() + secs(10),
        "a lapse is dated at the expiry"
    );
    Ok(())
}

pub fn history_is_bounded<H: Harness>() -> R {
    let db = H::database();
    let engine = H::open(&db, Options::default().event_retention(5))?;
    let k = key("a");
    for i in 0..100 {
        engine.claim(&k, &format!("h{i}"), secs(10))?;
        engine.release(&k, &format!("h{i}"))?;
    }
    // The newest 5 are kept; older ones are trimmed 64 at a time.
    let history = engine.history(&k, 1000)?;
    assert!((5..5 + 64).contains(&history.len()), "{}", history.len());
    assert_eq!(history.last().map(|e| e.kind()), Some(EventKind::Released));
    assert_eq!(history.last().map(|e| e.epoch()), Some(100));
    Ok(())
}

// Listing

pub fn listing_shows_held_leases_or_all_keys<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    engine.claim(&key("b"), "h1", secs(10))?;
    engine.claim(&key("a"), "h2", secs(100))?;
    engine.pin(&key("c"), "e1", "", None)?;
    clock.advance(secs(50));
    let held: Vec<String> = engine
        .leases("test")?
        .iter()
        .map(|l| l.key().name().to_owned())
        .collect();
    assert_eq!(held, ["a"]);
    let all: Vec<(String, bool, usize)> = engine
        .all_leases("test")?
        .iter()
        .map(|l| (l.key().name().to_owned(), l.is_held(), l.pins().len()))
        .collect();
    assert_eq!(
        all,
        [
            ("a".into(), true, 0),
            ("b".into(), false, 0),
            ("c".into(), false, 1)
        ]
    );
    Ok(())
}

// Import

pub fn importing_a_lapsed_tenure_does_not_revive_it<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let stale = engine.claim(&key("a"), "h1", secs(10))?.token();
    let snapshot = engine.export()?;
    clock.advance(secs(20)); // h1's tenure lapses here
    let err = engine.import(&snapshot, secs(60)).unwrap_err();
    assert!(
        matches!(err, Error::ImportRefused { field: "epoch", .. }),
        "{err}"
    );
    assert!(
        stale.check().is_err(),
        "the lapsed tenure's token stays dead"
    );
    // While it is still held, re-importing the same tenure refreshes it.
    let t = engine.claim(&key("a"), "h1", secs(10))?;
    let snapshot = engine.export()?;
    engine.import(&snapshot, secs(60))?;
    t.token().check()?;
    assert_eq!(
        engine.lease(&key("a"))?.expect("lease").expires_at(),
        Some(engine.now() + secs(60))
    );
    Ok(())
}

pub fn an_unpin_that_ends_a_tenure_logs_the_lapse_at_the_unpin<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let k = key("a");
    engine.claim(&k, "h1", secs(10))?;
    engine.pin(&k, "e1", "upgrade", None)?;
    clock.advance(secs(60)); // long past the expiry, held by the pin
    engine.unpin(&k, "e1")?;
    clock.advance(secs(10));
    engine.claim(&k, "h2", secs(10))?;
    let history: Vec<(String, leasehold::chrono::DateTime<leasehold::chrono::Utc>)> = engine
        .history(&k, 100)?
        .iter()
        .map(|e| (e.kind().as_str().to_owned(), e.at()))
        .collect();
    let kinds: Vec<&str> = history.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["claimed", "pinned", "unpinned", "lapsed", "claimed"],
        "{history:?}"
    );
    assert_eq!(
        history[3].1,
        t0() + secs(60),
        "the lapse is the unpin's moment"
    );
    Ok(())
}

pub fn claim_new_begins_a_tenure_or_nothing_even_for_the_holder<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let k = key("once");
    assert_eq!(engine.claim_new(&k, "h1", secs(10))?.epoch(), 1);
    match engine.claim_new(&k, "h1", secs(10)) {
        Err(Error::ClaimDenied { current_holder, .. }) => assert_eq!(current_holder, "h1"),
        other => panic!("expected a denial naming h1, got {other:?}"),
    }
    engine.release(&k, "h1")?;
    assert_eq!(engine.claim_new(&k, "h1", secs(10))?.epoch(), 2);
    Ok(())
}

//! DESIGN.md semantics 6: a token guards a write inside the backend's own
//! caller transaction (the harness's [`Step`]s), and its standalone check
//! agrees. SQLite's other two ways (the `Txn` builder, the SQL predicate)
//! are in `tests/guards.rs`.

use std::time::Duration;

use leasehold::engine::{Engine, LeaseToken};
use leasehold::{Error, Found, ManualClock};

use crate::harness::{Harness, Options, Step, manual_engine};
use crate::support::{key, secs, t0};

type R = Result<(), Box<dyn std::error::Error>>;

// A guard inside the caller's transaction.

pub fn check_in_an_immediate_transaction<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    H::guarded_write(&engine, Some(&token), "v", "guarded")?;
    assert_eq!(H::read_back(&engine, "v")?.as_deref(), Some("guarded"));
    engine.revoke(&key("a"))?;
    assert!(matches!(
        H::guarded_write(&engine, Some(&token), "v", "after the revoke"),
        Err(Error::GuardFailed {
            found: Found::Vacant { epoch: 1 },
            ..
        })
    ));
    assert_eq!(H::read_back(&engine, "v")?.as_deref(), Some("guarded"));
    Ok(())
}

pub fn an_epoch_token_fails_after_the_same_holder_reclaims<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let fenced = engine.claim(&key("a"), "h1", secs(10))?.token();
    let unfenced = engine.token(&key("a"), "h1")?;
    clock.advance(secs(10));
    engine.claim(&key("a"), "h1", secs(10))?; // a new tenure, epoch 2
    let err = H::guarded_write(&engine, Some(&fenced), "fenced", "x").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::GuardFailed {
                found: Found::Held { epoch: 2, .. },
                expected_epoch: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(H::read_back(&engine, "fenced")?, None);
    H::guarded_write(&engine, Some(&unfenced), "unfenced", "x")?;
    assert_eq!(H::read_back(&engine, "unfenced")?.as_deref(), Some("x"));
    Ok(())
}

/// Each way a tenure ends fails its token, checked alone or guarding a
/// write, and the write is not committed.
pub fn a_token_fails_after_release_revoke_expiry_or_a_new_tenure<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    type End<'a, B> = &'a dyn Fn(&Engine<B>, &str);
    let endings: [(&str, End<'_, H::Backend>); 4] = [
        ("release", &|e, name| {
            e.release(&key(name), "h1").expect("release")
        }),
        ("revoke", &|e, name| {
            drop(e.revoke(&key(name)).expect("revoke"))
        }),
        ("expiry", &|_, _| clock.advance(secs(10))),
        ("new tenure", &|e, name| {
            e.release(&key(name), "h1").expect("release");
            e.claim(&key(name), "h1", secs(10)).expect("claim");
        }),
    ];
    for (what, end) in endings {
        let token = engine.claim(&key(what), "h1", secs(10))?.token();
        token.check()?;
        H::guarded_write(&engine, Some(&token), what, "while held")?;
        end(&engine, what);
        let err = token.check().unwrap_err();
        assert!(matches!(err, Error::GuardFailed { .. }), "{what}: {err}");
        let err = H::guarded_write(&engine, Some(&token), what, "after").unwrap_err();
        assert!(matches!(err, Error::GuardFailed { .. }), "{what}: {err}");
        assert_eq!(
            H::read_back(&engine, what)?.as_deref(),
            Some("while held"),
            "{what}: the refused write left nothing"
        );
    }
    Ok(())
}

/// A failed guard rolls back the writes before it in the transaction, and
/// says which lease, holder and tenure it expected and what it found.
pub fn a_failed_guard_writes_nothing_and_says_what_holds<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let stale = engine.claim(&key("a"), "h1", secs(10))?.token();
    clock.advance(secs(10));
    engine.claim(&key("a"), "h2", secs(10))?;
    let check = |err: Error| match err {
        Error::GuardFailed {
            op,
            label,
            key,
            holder,
            expected_epoch,
            found,
        } => {
            assert_eq!((op, label), (None, None));
            assert_eq!(
                (key.name(), holder.as_str(), expected_epoch),
                ("a", "h1", Some(1))
            );
            assert_eq!(
                found,
                Found::Held {
                    holder: "h2".into(),
                    epoch: 2
                }
            );
        }
        other => panic!("expected GuardFailed, got {other:?}"),
    };
    check(H::guarded_write(&engine, Some(&stale), "after", "x").unwrap_err());
    check(
        H::transaction(
            &engine,
            &mut [Step::Put("before", "x"), Step::Check(&stale)],
        )
        .unwrap_err(),
    );
    assert_eq!(H::read_back(&engine, "before")?, None);
    assert_eq!(H::read_back(&engine, "after")?, None);
    Ok(())
}

pub fn an_unfenced_token_follows_its_holder_across_tenures<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let k = key("a");
    let unfenced = engine.token(&k, "h1")?;
    assert!(matches!(
        H::guarded_write(&engine, Some(&unfenced), "v", "never claimed"),
        Err(Error::GuardFailed {
            found: Found::Absent,
            ..
        })
    ));
    engine.claim(&k, "h1", secs(10))?;
    H::guarded_write(&engine, Some(&unfenced), "v", "epoch 1")?;
    clock.advance(secs(10));
    assert!(unfenced.check().is_err(), "lapsed");
    engine.claim(&k, "h1", secs(10))?;
    H::guarded_write(&engine, Some(&unfenced), "v", "epoch 2")?;
    engine.release(&k, "h1")?;
    engine.claim(&k, "h2", secs(10))?;
    assert!(matches!(
        H::guarded_write(&engine, Some(&unfenced), "v", "h2 holds"),
        Err(Error::GuardFailed {
            found: Found::Held { epoch: 3, .. },
            ..
        })
    ));
    assert_eq!(H::read_back(&engine, "v")?.as_deref(), Some("epoch 2"));
    Ok(())
}

/// The guard inside a transaction and the standalone check must agree in
/// every state (as SQLite's SQL guard must: `tests/guards.rs`).
pub fn the_guarded_write_agrees_with_the_check<H: Harness>() -> R {
    let (_db, engine, clock) = manual_engine::<H>();
    let k = key("a");
    let agree = |what: &str, token: &LeaseToken<H::Backend>| {
        let written = match H::guarded_write(&engine, Some(token), what, "x") {
            Ok(()) => true,
            Err(Error::GuardFailed { .. }) => false,
            Err(e) => panic!("{what}: {e}"),
        };
        assert_eq!(
            H::read_back(&engine, what).expect("read back").is_some(),
            written,
            "{what}: committed exactly when the guard passed"
        );
        let checked = token.check().is_ok();
        assert_eq!(
            written, checked,
            "{what}: the guarded write says {written}, check says {checked}"
        );
        written
    };
    let never = engine.token(&k, "h1")?;
    assert!(!agree("absent", &never));
    let t1 = engine.claim(&k, "h1", secs(10))?;
    assert!(agree("held", &t1.token()));
    assert!(agree("held, unfenced", &never));
    assert!(!agree("other holder", &engine.token(&k, "h2")?));
    clock.advance(secs(10));
    assert!(!agree("expired", &t1.token()));
    engine.pin(&k, "e", "", None)?;
    assert!(!agree("pinned after lapse", &t1.token()));
    let t2 = engine.claim(&k, "h1", secs(10))?;
    assert!(!agree("old epoch", &t1.token()));
    clock.advance(secs(100));
    assert!(agree("pinned past expiry", &t2.token()));
    engine.unpin(&k, "e")?;
    assert!(!agree("unpinned past expiry", &t2.token()));
    let t3 = engine.claim(&k, "h1", secs(10))?;
    clock.step_back(secs(1000));
    assert!(agree("clock stepped back, still held", &t3.token()));
    engine.release(&k, "h1")?;
    assert!(!agree("released", &t3.token()));
    Ok(())
}

/// The backend's promise 2: once a guard passes inside a transaction, no
/// other tenure can begin and the tenure cannot be ended until that
/// transaction ends — even if the lease's expiry passes meanwhile. A rival
/// engine (another process, as far as the database knows) waits for the
/// transaction and gives up after its busy timeout.
pub fn a_passed_guard_holds_until_its_transaction_ends<H: Harness>() -> R {
    let db = H::database();
    let clock = ManualClock::new(t0());
    let engine = H::open(&db, Options::manual(&clock))?;
    let rival = H::open(
        &db,
        Options::manual(&clock).busy_timeout(Duration::from_millis(50)),
    )?;
    let k = key("a");
    let token = engine.claim(&k, "h1", secs(10))?.token();
    let mut inside = || {
        clock.advance(secs(11)); // the lease runs out: only the open transaction keeps it
        for (what, outcome) in [
            ("claim", rival.claim(&k, "h2", secs(10)).map(drop)),
            ("revoke", rival.revoke(&k).map(drop)),
            ("release", rival.release(&k, "h1")),
        ] {
            let err = outcome.expect_err(what);
            assert!(matches!(err, Error::Busy { .. }), "{what}: {err}");
        }
    };
    H::transaction(
        &engine,
        &mut [
            Step::Check(&token),
            Step::Put("v", "guarded"),
            Step::Run(&mut inside),
        ],
    )?;
    assert_eq!(H::read_back(&engine, "v")?.as_deref(), Some("guarded"));
    // Once it committed, the lapsed lease goes to another holder: a new
    // tenure. (Claimed through the engine with the default busy timeout: the
    // rival's 50 ms may run out on a loaded machine.)
    assert_eq!(engine.claim(&k, "h2", secs(10))?.epoch(), 2);
    assert!(token.check().is_err());
    Ok(())
}

pub fn a_token_of_another_database_is_refused<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let (_other_db, other, _other_clock) = manual_engine::<H>();
    let foreign = other.claim(&key("a"), "h1", secs(10))?.token();
    engine.claim(&key("a"), "h1", secs(10))?;
    let err = H::guarded_write(&engine, Some(&foreign), "v", "x").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(H::read_back(&engine, "v")?, None);
    // Another engine on the same database is the same database.
    let (db, engine, clock) = manual_engine::<H>();
    let same = H::open(&db, Options::manual(&clock))?;
    let token = same.claim(&key("a"), "h1", secs(10))?.token();
    H::guarded_write(&engine, Some(&token), "v", "x")?;
    Ok(())
}

/// Lease operations in the caller's transaction commit or roll back with
/// it: "claim the migration lease, apply the migration, record its
/// version" as one unit.
pub fn lease_operations_commit_or_roll_back_with_the_callers_transaction<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let k = key("schema-migration");
    let busy = key("busy");
    engine.claim(&busy, "someone-else", secs(600))?;

    // A step that fails rolls the claim back with it.
    let err = H::transaction(
        &engine,
        &mut [
            Step::Claim(&k, "host-1", secs(60)),
            Step::Put("applied", "7"),
            Step::Claim(&busy, "host-1", secs(60)),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, Error::ClaimDenied { .. }), "{err}");
    assert!(engine.lease(&k)?.is_none(), "the claim rolled back");
    assert!(engine.history(&k, 10)?.is_empty(), "and so did its event");
    assert_eq!(H::read_back(&engine, "applied")?, None);

    H::transaction(
        &engine,
        &mut [
            Step::Claim(&k, "host-1", secs(60)),
            Step::Put("applied", "7"),
        ],
    )?;
    let lease = engine.lease(&k)?.expect("lease");
    assert_eq!((lease.holder(), lease.epoch()), (Some("host-1"), 1));
    assert_eq!(H::read_back(&engine, "applied")?.as_deref(), Some("7"));

    // A release rolled back leaves the tenure as it was.
    let before = engine.lease(&k)?;
    let err = H::transaction(
        &engine,
        &mut [Step::Release(&k, "host-1"), Step::Release(&busy, "host-1")],
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err}");
    assert_eq!(engine.lease(&k)?, before);
    engine.token(&k, "host-1")?.check()?;
    Ok(())
}

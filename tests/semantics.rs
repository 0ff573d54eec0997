//! SQLite's share of DESIGN.md semantics 1–5 and 7: what only raw SQL on
//! the lease tables can try. Every other line of the semantics is pinned by
//! the conformance suite (`tests/conformance/semantics.rs`), for every
//! backend.

mod support;

use support::{key, manual_engine, secs};

type R = Result<(), Box<dyn std::error::Error>>;

// 4. Release and revoke: epochs are never reused

#[test]
fn epochs_survive_attempts_to_delete_rows() -> R {
    let (_db, engine, _clock) = manual_engine();
    engine.claim(&key("a"), "h1", secs(60))?;
    let conn = engine.connection()?;
    let err = conn
        .execute("DELETE FROM leasehold_leases", [])
        .expect_err("deletes are refused");
    assert!(err.to_string().contains("never deleted"), "{err}");
    let err = conn
        .execute("UPDATE leasehold_leases SET epoch = 0", [])
        .expect_err("lowering an epoch is refused");
    assert!(err.to_string().contains("never decreases"), "{err}");
    Ok(())
}

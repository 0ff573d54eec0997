//! A tour of leasehold in one process: claim, guard a write, lose the lease,
//! and watch the old leader's guarded write be refused.
//!
//! Run with `cargo run --example basics`.

use std::time::Duration;

use leasehold::rusqlite::TransactionBehavior;
use leasehold::{Engine, Error, Key, ManualClock};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("app.db");
    // A manual clock lets the tour jump past a lease's expiry instantly.
    let clock = ManualClock::new(leasehold::chrono::Utc::now());
    let engine = Engine::builder(&path).clock(clock.clone()).build()?;
    engine
        .connection()?
        .execute_batch("CREATE TABLE ledger (entry TEXT, epoch INTEGER)")?;
    let key = Key::new("app", "ledger-writer")?;

    let a = engine.claim(&key, "replica-a", Duration::from_secs(10))?;
    println!("replica-a leads {key} at epoch {}", a.epoch());
    write(&engine, &a, "first entry")?;

    match engine.claim(&key, "replica-b", Duration::from_secs(10)) {
        Err(Error::ClaimDenied { current_holder, .. }) => {
            println!("replica-b is denied: {current_holder} leads");
        }
        other => return Err(format!("unexpected: {other:?}").into()),
    }

    println!("replica-a pauses for 15 s (a GC pause, a SIGSTOP)...");
    clock.advance(Duration::from_secs(15));
    let b = engine.claim(&key, "replica-b", Duration::from_secs(10))?;
    println!("replica-b takes over at epoch {}", b.epoch());
    write(&engine, &b, "second entry")?;

    println!("replica-a wakes up and tries to write:");
    match write(&engine, &a, "stale entry") {
        Err(e) => println!("  refused: {e}"),
        Ok(()) => return Err("a stale leader wrote".into()),
    }

    let conn = engine.connection()?;
    let mut stmt = conn.prepare("SELECT entry, epoch FROM ledger ORDER BY rowid")?;
    println!("the ledger:");
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (entry, epoch) = row?;
        println!("  {entry:<14} written at epoch {epoch}");
    }
    Ok(())
}

/// Appends to the ledger only while `tenure` is current.
fn write(
    engine: &Engine,
    tenure: &leasehold::Tenure,
    entry: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = engine.connection()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tenure.token().check_in(&tx)?;
    tx.execute(
        "INSERT INTO ledger VALUES (?1, ?2)",
        (entry, tenure.epoch()),
    )?;
    tx.commit()?;
    println!("  {} wrote {entry:?}", tenure.holder());
    Ok(())
}

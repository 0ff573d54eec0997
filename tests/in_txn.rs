//! Lease operations inside a transaction the caller owns, and the edges a
//! caller's connection can reach (regressions found in review).

mod support;

use leasehold::rusqlite::{Connection, TransactionBehavior};
use leasehold::{Engine, Error, Found, ManualClock, Op, Txn};
use support::{TempDb, key, manual_engine, secs, t0};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn claim_migrate_and_record_commit_as_one_unit() -> R {
    let (_db, engine, _clock) = manual_engine();
    let mut conn = engine.connection()?;
    conn.execute_batch("CREATE TABLE applied (version INTEGER)")?;
    let k = key("schema-migration");

    // A failed migration rolls the claim back with it.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    engine.in_txn(&tx)?.claim(&k, "host-1", secs(60))?;
    tx.execute("INSERT INTO applied VALUES (7)", [])?;
    tx.rollback()?;
    assert!(engine.lease(&k)?.is_none(), "the claim rolled back");
    assert!(engine.history(&k, 10)?.is_empty(), "and so did its event");

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let tenure = engine.in_txn(&tx)?.claim(&k, "host-1", secs(60))?;
    tx.execute("INSERT INTO applied VALUES (7)", [])?;
    tx.commit()?;
    assert_eq!(tenure.epoch(), 1);
    tenure.token().check()?;
    Ok(())
}

#[test]
fn every_operation_rolls_back_with_the_caller() -> R {
    let (_db, engine, _clock) = manual_engine();
    let k = key("a");
    engine.claim(&k, "h1", secs(60))?;
    engine.pin(&k, "e1", "", None)?;
    let before = engine.lease(&k)?;
    let mut conn = engine.connection()?;
    for step in 0..4 {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ops = engine.in_txn(&tx)?;
        match step {
            0 => ops.release(&k, "h1")?,
            1 => drop(ops.revoke(&k)?),
            2 => ops.pin(&k, "e2", "", None)?,
            _ => assert!(ops.unpin(&k, "e1")?),
        }
        tx.rollback()?;
        assert_eq!(engine.lease(&k)?, before, "step {step} rolled back");
    }
    Ok(())
}

#[test]
fn a_refused_operation_writes_nothing_in_the_callers_transaction() -> R {
    let (_db, engine, clock) = manual_engine();
    engine.claim(&key("a"), "h1", secs(600))?;
    clock.advance(secs(100)); // the high-water mark is due for persisting
    let mut conn = engine.connection()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let before = tx.total_changes();
    assert!(matches!(
        engine.in_txn(&tx)?.claim(&key("a"), "h2", secs(1)),
        Err(Error::ClaimDenied { .. })
    ));
    assert!(matches!(
        engine.in_txn(&tx)?.release(&key("a"), "h2"),
        Err(Error::NotHeld { .. })
    ));
    assert_eq!(tx.total_changes(), before);
    Ok(())
}

#[test]
fn in_txn_requires_a_transaction_on_the_same_database() -> R {
    let (db, engine, _clock) = manual_engine();
    let conn = engine.connection()?;
    assert!(matches!(
        engine.in_txn(&conn),
        Err(Error::InvalidArgument { .. })
    ));
    let mut other = Connection::open(db.dir.path().join("other.db"))?;
    let tx = other.transaction()?;
    assert!(matches!(
        engine.in_txn(&tx),
        Err(Error::InvalidArgument { .. })
    ));
    Ok(())
}

#[test]
fn a_txn_applied_in_a_deferred_transaction_is_refused_on_a_stale_snapshot() -> R {
    let (_db, engine, _clock) = manual_engine();
    let mut conn = engine.connection()?;
    conn.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (0);")?;
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let _: i64 = tx.query_row("SELECT v FROM t", [], |r| r.get(0))?; // snapshot taken
    engine.revoke(&key("a"))?;
    engine.claim(&key("a"), "h2", secs(10))?;
    let mut txn = Txn::new();
    token.add_to(&mut txn);
    txn.execute("UPDATE t SET v = 1", ());
    // The snapshot still shows h1 holding the lease, but the write is refused.
    let err = txn.apply(&tx).unwrap_err();
    assert!(err.is_transient(), "{err}");
    drop(tx);
    let v: i64 = conn.query_row("SELECT v FROM t", [], |r| r.get(0))?;
    assert_eq!(v, 0);
    Ok(())
}

#[test]
fn replacing_a_lease_row_cannot_lower_its_epoch() -> R {
    let (_db, engine, _clock) = manual_engine();
    let fenced = engine.claim(&key("a"), "h1", secs(60))?.token();
    engine.release(&key("a"), "h1")?;
    let conn = engine.connection()?;
    let err = conn
        .execute(
            "INSERT OR REPLACE INTO leasehold_leases
             (namespace, name, holder, epoch, started_ms, expiry_ms, updated_ms)
             VALUES ('test', 'a', NULL, 0, 0, 0, 0)",
            [],
        )
        .expect_err("refused");
    assert!(err.to_string().contains("never decreases"), "{err}");
    assert_eq!(engine.claim(&key("a"), "h1", secs(60))?.epoch(), 2);
    assert!(fenced.check().is_err());
    Ok(())
}

#[test]
fn a_temp_table_cannot_stand_in_for_the_lease_table() -> R {
    let (_db, engine, _clock) = manual_engine();
    let token = engine.claim(&key("a"), "h1", secs(60))?.token();
    engine.release(&key("a"), "h1")?;
    let mut conn = engine.connection()?;
    conn.execute_batch(
        "CREATE TEMP TABLE leasehold_leases AS SELECT * FROM main.leasehold_leases;
         UPDATE temp.leasehold_leases SET holder = 'h1', expiry_ms = 9e15;",
    )?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    assert!(matches!(
        token.check_in(&tx),
        Err(Error::GuardFailed {
            found: Found::Vacant { .. },
            ..
        })
    ));
    let mut txn = Txn::new();
    token.add_to(&mut txn);
    assert!(txn.apply(&tx).is_err());
    let guard = token.guard();
    let passes: bool = tx.query_row(
        &format!("SELECT {}", guard.sql()),
        leasehold::rusqlite::params_from_iter(guard.params()),
        |r| r.get(0),
    )?;
    assert!(!passes);
    Ok(())
}

#[test]
fn a_txn_cannot_end_its_own_transaction() -> R {
    let (_db, engine, _clock) = manual_engine();
    let conn = engine.connection()?;
    conn.execute_batch("CREATE TABLE t (v INTEGER)")?;
    drop(conn);
    let token = engine.claim(&key("a"), "h1", secs(60))?.token();
    for sneaky in [
        "COMMIT",
        "ROLLBACK",
        "END",
        "BEGIN",
        "SAVEPOINT x",
        "RELEASE leasehold_txn",
        "SELECT 1",
    ] {
        let mut txn = Txn::new();
        token.add_to(&mut txn);
        txn.execute(sneaky, ());
        txn.execute("INSERT INTO t VALUES (1)", ());
        let err = engine.commit(&txn).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    what: "statement",
                    ..
                }
            ),
            "{sneaky}: {err}"
        );
    }
    let mut txn = Txn::new();
    txn.op(Op::new().assert_exists("UPDATE t SET v = 2", ()));
    assert!(matches!(
        engine.commit(&txn),
        Err(Error::InvalidArgument {
            what: "statement",
            ..
        })
    ));
    let conn = engine.connection()?;
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    assert_eq!(n, 0);
    Ok(())
}

#[test]
fn a_connection_left_in_a_transaction_returns_to_the_pool_clean() -> R {
    let db = TempDb::new();
    let engine = Engine::builder(&db.path).pool_size(1).build()?;
    {
        let conn = engine.connection()?;
        conn.execute_batch("BEGIN; CREATE TABLE forgotten (x);")?;
    }
    engine.claim(&key("a"), "h1", secs(60))?;
    let conn = engine.connection()?;
    assert!(conn.is_autocommit());
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'forgotten')",
        [],
        |r| r.get(0),
    )?;
    assert!(!exists, "the forgotten transaction was rolled back");
    Ok(())
}

#[test]
fn denied_claims_do_not_move_the_persisted_mark_and_reads_are_remembered() -> R {
    let (db, engine, clock) = manual_engine();
    engine.claim(&key("a"), "h1", secs(100))?;
    let stored = |engine: &Engine| -> i64 {
        engine
            .connection()
            .expect("conn")
            .query_row("SELECT high_water_ms FROM leasehold_clock", [], |r| {
                r.get(0)
            })
            .expect("mark")
    };
    let after_claim = stored(&engine);
    for _ in 0..50 {
        clock.advance(secs(1));
        assert!(matches!(
            engine.claim(&key("a"), "h2", secs(1)),
            Err(Error::ClaimDenied { .. })
        ));
    }
    assert_eq!(stored(&engine), after_claim, "denied claims wrote nothing");
    // Only a read observes t0 + 150 s; dropping the engine persists it.
    clock.advance(secs(100));
    assert!(!engine.lease(&key("a"))?.expect("lease").is_held());
    drop(engine);
    let reopened = Engine::builder(&db.path)
        .clock(ManualClock::new(t0() + secs(5)))
        .build()?;
    assert!(
        !reopened.lease(&key("a"))?.expect("lease").is_held(),
        "not revived"
    );
    assert_eq!(reopened.now(), t0() + secs(150));
    Ok(())
}

#[test]
fn the_applications_own_commits_on_an_engine_connection_keep_the_wal_bounded() -> R {
    // SQLite's automatic checkpoints are off on engine connections; the
    // engine's WAL hook must see these commits too, or a service that keeps
    // one connection for its own writes grows the WAL forever.
    let (db, engine, _clock) = manual_engine();
    let conn = engine.connection()?;
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 0);",
    )?;
    for _ in 0..5_000 {
        // One page per commit: 5,000 frames (20 MB) if nothing checkpoints.
        conn.execute("UPDATE t SET v = v + 1 WHERE id = 1", [])?;
    }
    let wal = std::fs::metadata(db.path.with_extension("db-wal"))?.len();
    assert!(
        wal < 8 << 20,
        "WAL of {wal} bytes after 5,000 one-page commits"
    );
    Ok(())
}

#[test]
fn a_reader_left_open_does_not_hold_commits_for_the_busy_timeout() -> R {
    // Past the WAL size limit the engine's WAL hook runs RESTART
    // checkpoints, which hold the write lock while they wait for readers.
    // Here the reader sits on the committing thread itself, so a checkpoint
    // that waited with the full busy timeout (a minute) would stall commit
    // after commit for a minute each.
    let db = TempDb::new();
    let engine = Engine::builder(&db.path)
        .busy_timeout(secs(60))
        .wal_size_limit(1 << 20)
        .build()?;
    let writer = engine.connection()?;
    writer.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 0);",
    )?;
    let reader = engine.connection()?;
    reader.execute_batch("BEGIN")?;
    let _: i64 = reader.query_row("SELECT v FROM t", [], |r| r.get(0))?;
    let began = std::time::Instant::now();
    for _ in 0..3_000 {
        writer.execute("UPDATE t SET v = v + 1 WHERE id = 1", [])?;
    }
    let took = began.elapsed();
    reader.execute_batch("COMMIT")?;
    // Not a speed test: 3,000 one-row commits take well under a second; a
    // single checkpoint waiting out the busy timeout would take 60 s.
    assert!(
        took < secs(30),
        "3,000 commits took {took:?} with a reader open"
    );
    let v: i64 = writer.query_row("SELECT v FROM t", [], |r| r.get(0))?;
    assert_eq!(v, 3_000);
    Ok(())
}

#[test]
fn a_txn_that_makes_sqlite_roll_back_your_transaction_says_so() -> R {
    let (_db, engine, _clock) = manual_engine();
    let mut conn = engine.connection()?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("INSERT INTO t VALUES (2)", [])?;
    let mut txn = Txn::new();
    txn.execute("INSERT OR ROLLBACK INTO t VALUES (?)", [1]);
    let err = txn.apply(&tx).expect_err("a duplicate key");
    assert!(matches!(err, Error::TransactionLost { .. }), "{err}");
    assert!(tx.is_autocommit(), "SQLite ended the transaction");
    drop(tx);
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    assert_eq!(rows, 1, "row 2 went with the transaction");
    Ok(())
}

#[test]
fn writes_in_your_transactions_persist_the_clock_mark_once_per_second() -> R {
    let (_db, engine, clock) = manual_engine();
    let mut conn = engine.connection()?;
    let stored = |conn: &Connection| -> i64 {
        conn.query_row("SELECT high_water_ms FROM leasehold_clock", [], |r| {
            r.get(0)
        })
        .expect("mark")
    };
    let mut marks = Vec::new();
    for _ in 0..10 {
        clock.advance(std::time::Duration::from_millis(300));
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        engine.in_txn(&tx)?.claim(&key("a"), "h1", secs(60))?;
        tx.commit()?;
        marks.push(stored(&conn));
    }
    // 3 s of engine time in 300 ms steps: the mark moved at most once per
    // second of it, not at each of the ten commits.
    marks.dedup();
    assert!(marks.len() <= 4, "mark written at {marks:?}");
    assert!(*marks.last().expect("mark") >= (t0() + secs(2)).timestamp_millis());
    Ok(())
}

#[test]
fn a_rolled_back_transaction_does_not_stop_the_engine_persisting_the_clock_mark() -> R {
    let (_db, engine, clock) = manual_engine();
    let mut conn = engine.connection()?;
    clock.advance(secs(5));
    let now = (t0() + secs(5)).timestamp_millis();
    // Your transaction writes the mark, then rolls back.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    engine.in_txn(&tx)?.claim(&key("a"), "h1", secs(60))?;
    tx.rollback()?;
    // The engine's own next write still persists it.
    engine.claim(&key("b"), "h1", secs(60))?;
    let stored: i64 = conn.query_row("SELECT high_water_ms FROM leasehold_clock", [], |r| {
        r.get(0)
    })?;
    assert_eq!(stored, now);
    Ok(())
}

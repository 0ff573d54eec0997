//! DESIGN.md semantics 6 on SQLite: the `Txn` builder, `check_in` on a
//! caller's `rusqlite` transaction (its edges: other databases, deferred
//! transactions), and the SQL guard. The guard cases every backend keeps —
//! a token failing after release, revoke, expiry or a new tenure, a guard
//! holding until its transaction ends, a failed guard writing nothing —
//! are in the conformance suite (`tests/conformance/guards.rs`).

mod support;

use leasehold::rusqlite::{Connection, TransactionBehavior, params_from_iter};
use leasehold::{Engine, Error, Found, Op, Txn};
use support::{key, manual_engine, secs};

type R = Result<(), Box<dyn std::error::Error>>;

fn setup_table(engine: &Engine) -> R {
    engine.connection()?.execute_batch(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         INSERT OR IGNORE INTO items VALUES (1, 'one'), (2, 'two');",
    )?;
    Ok(())
}

fn values(engine: &Engine) -> Vec<String> {
    let conn = engine.connection().expect("conn");
    let mut stmt = conn
        .prepare("SELECT v FROM items ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

// a. The Txn builder

#[test]
fn txn_commits_all_ops_when_guards_hold() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let tenure = engine.claim(&key("a"), "h1", secs(10))?;
    let mut txn = Txn::new();
    tenure.token().add_to(&mut txn);
    txn.op(Op::new()
        .assert_exists("SELECT 1 FROM items WHERE id = ?", [1])
        .execute("UPDATE items SET v = ? WHERE id = ?", ("uno", 1)));
    txn.execute("INSERT INTO items VALUES (?, ?)", (3, "tres"));
    assert_eq!(engine.commit(&txn)?, vec![0, 1, 1]);
    assert_eq!(values(&engine), ["uno", "two", "tres"]);
    Ok(())
}

#[test]
fn txn_with_a_failed_lease_guard_writes_nothing_and_names_the_op() -> R {
    let (_db, engine, clock) = manual_engine();
    setup_table(&engine)?;
    let stale = engine.claim(&key("a"), "h1", secs(10))?.token();
    clock.advance(secs(10));
    engine.claim(&key("a"), "h2", secs(10))?;
    let mut txn = Txn::new();
    txn.execute("UPDATE items SET v = 'changed' WHERE id = 1", ());
    txn.op(Op::new()
        .label("leader only")
        .assert_lease(&stale)
        .execute("DELETE FROM items", ()));
    match engine.commit(&txn) {
        Err(Error::GuardFailed {
            op,
            label,
            key,
            holder,
            expected_epoch,
            found,
        }) => {
            assert_eq!((op, label.as_deref()), (Some(1), Some("leader only")));
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
    }
    assert_eq!(values(&engine), ["one", "two"]);
    Ok(())
}

#[test]
fn txn_with_a_failed_assertion_writes_nothing() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let mut txn = Txn::new();
    txn.execute("UPDATE items SET v = 'changed' WHERE id = 1", ());
    txn.op(Op::new()
        .label("needs 9")
        .assert_exists("SELECT 1 FROM items WHERE id = ?", [9]));
    let err = engine.commit(&txn).unwrap_err();
    assert!(
        matches!(&err, Error::AssertionFailed { op: 1, label: Some(l), .. } if l == "needs 9"),
        "{err:?}"
    );
    assert_eq!(values(&engine), ["one", "two"]);
    Ok(())
}

#[test]
fn txn_asserts_everything_before_mutating_anything() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let mut txn = Txn::new();
    txn.execute("DELETE FROM items WHERE id = 1", ());
    txn.assert_exists("SELECT 1 FROM items WHERE id = 1", ());
    assert_eq!(
        engine.commit(&txn)?,
        vec![1, 0],
        "the assertion saw the state before op 0"
    );
    Ok(())
}

#[test]
fn txn_rolls_back_earlier_mutations_when_a_statement_fails() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let mut txn = Txn::new();
    txn.execute("UPDATE items SET v = 'changed' WHERE id = 1", ());
    txn.op(Op::new()
        .label("dup")
        .execute("INSERT INTO items VALUES (2, 'dup')", ()));
    let err = engine.commit(&txn).unwrap_err();
    assert!(
        matches!(&err, Error::StatementFailed { op: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("op 1 (dup): statement failed:"),
        "{err}"
    );
    assert_eq!(values(&engine), ["one", "two"]);
    Ok(())
}

#[test]
fn txn_rejects_unconvertible_parameters_before_running() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let mut txn = Txn::new();
    txn.execute("UPDATE items SET v = 'changed' WHERE id = 1", ());
    struct Unrepresentable;
    impl leasehold::rusqlite::ToSql for Unrepresentable {
        fn to_sql(
            &self,
        ) -> leasehold::rusqlite::Result<leasehold::rusqlite::types::ToSqlOutput<'_>> {
            Err(leasehold::rusqlite::Error::ToSqlConversionFailure(
                "too big".into(),
            ))
        }
    }
    txn.execute("UPDATE items SET v = 'x' WHERE id = ?", [Unrepresentable]);
    assert!(matches!(
        engine.commit(&txn),
        Err(Error::InvalidArgument {
            what: "parameter",
            ..
        })
    ));
    assert_eq!(values(&engine), ["one", "two"]);
    Ok(())
}

#[test]
fn txn_applies_inside_the_callers_transaction_within_a_savepoint() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    let mut conn = engine.connection()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("UPDATE items SET v = 'mine' WHERE id = 1", [])?;
    let mut failing = Txn::new();
    failing.execute("UPDATE items SET v = 'lost' WHERE id = 2", ());
    failing.assert_exists("SELECT 1 FROM items WHERE id = 9", ());
    assert!(failing.apply(&tx).is_err());
    let mut good = Txn::new();
    token.add_to(&mut good);
    good.execute("UPDATE items SET v = 'dos' WHERE id = 2", ());
    good.apply(&tx)?;
    tx.commit()?;
    assert_eq!(values(&engine), ["mine", "dos"]);
    assert!(matches!(
        Txn::new().apply(&conn),
        Err(Error::InvalidArgument { .. })
    ));
    Ok(())
}

// b. Inside the caller's transaction

#[test]
fn check_in_refuses_connections_outside_a_transaction_or_database() -> R {
    let (db, engine, _clock) = manual_engine();
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    let conn = engine.connection()?;
    let err = token.check_in(&conn).unwrap_err();
    assert!(
        err.to_string().contains("not inside a transaction"),
        "{err}"
    );
    let mut other = Connection::open(db.dir.path().join("other.db"))?;
    let tx = other.transaction()?;
    let err = token.check_in(&tx).unwrap_err();
    assert!(err.to_string().contains("is not connected to"), "{err}");
    // The same file through another path (a symlink) is the same database.
    let link = db.dir.path().join("link.db");
    std::os::unix::fs::symlink(&db.path, &link)?;
    let mut same = Connection::open(&link)?;
    let tx = same.transaction()?;
    token.check_in(&tx)?;
    Ok(())
}

#[test]
fn a_deferred_transaction_with_a_stale_snapshot_cannot_write() -> R {
    let (_db, engine, clock) = manual_engine();
    setup_table(&engine)?;
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    let mut conn = engine.connection()?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    token.check_in(&tx)?; // passes, and pins the transaction's snapshot
    // Meanwhile, on another connection: the lease lapses and h2 takes over.
    clock.advance(secs(10));
    engine.claim(&key("a"), "h2", secs(10))?;
    let err = tx
        .execute("UPDATE items SET v = 'stale' WHERE id = 1", [])
        .expect_err("the snapshot is stale");
    match &err {
        leasehold::rusqlite::Error::SqliteFailure(e, _) => {
            assert_eq!(e.extended_code, 517, "SQLITE_BUSY_SNAPSHOT");
        }
        other => panic!("expected SQLITE_BUSY_SNAPSHOT, got {other:?}"),
    }
    tx.rollback()?;
    // The documented retry: a new transaction sees the new tenure.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    assert!(matches!(
        token.check_in(&tx),
        Err(Error::GuardFailed { .. })
    ));
    drop(tx);
    assert_eq!(values(&engine), ["one", "two"]);
    Ok(())
}

// c. The SQL fragment

#[test]
fn the_sql_guard_gates_an_update_by_row_count() -> R {
    let (_db, engine, _clock) = manual_engine();
    setup_table(&engine)?;
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    let conn = engine.connection()?;
    let update = |v: &str| -> leasehold::rusqlite::Result<usize> {
        let guard = token.guard();
        let sql = format!("UPDATE items SET v = ? WHERE id = ? AND {}", guard.sql());
        conn.prepare_cached(&sql)?
            .execute(params_from_iter(guard.bind(&[&v, &1])))
    };
    assert_eq!(update("first")?, 1);
    engine.release(&key("a"), "h1")?;
    assert_eq!(update("second")?, 0);
    assert_eq!(values(&engine), ["first", "two"]);
    Ok(())
}

#[test]
fn a_guard_kept_for_later_reads_the_time_when_used() -> R {
    let (_db, engine, clock) = manual_engine();
    setup_table(&engine)?;
    let token = engine.claim(&key("a"), "h1", secs(10))?.token();
    let guard = token.guard(); // made while held...
    clock.advance(secs(11)); // ...used after the lease ran out, unclaimed
    let conn = engine.connection()?;
    let sql = format!("UPDATE items SET v = ? WHERE id = ? AND {}", guard.sql());
    let changed = conn.execute(&sql, params_from_iter(guard.bind(&[&"late", &1])))?;
    assert_eq!(changed, 0);
    Ok(())
}

/// The SQL guard and the Rust check must agree in every state.
#[test]
fn the_sql_guard_agrees_with_the_check() -> R {
    let (_db, engine, clock) = manual_engine();
    let k = key("a");
    let conn = engine.connection()?;
    let agree = |what: &str, token: &leasehold::LeaseToken| {
        let guard = token.guard();
        let sql: bool = conn
            .query_row(
                &format!("SELECT {}", guard.sql()),
                params_from_iter(guard.params()),
                |r| r.get(0),
            )
            .expect("guard query");
        let checked = token.check().is_ok();
        assert_eq!(
            sql, checked,
            "{what}: SQL guard says {sql}, check says {checked}"
        );
        sql
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

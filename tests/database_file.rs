//! The database file: opening reads before it writes, read-only engines
//! leave it untouched, a file deleted or replaced under a live engine ends
//! its tenures, and readers of the history are told when they missed
//! events. (Hardening issues 11 and 12.)

mod support;

use std::time::Duration;

use leasehold::rusqlite::{Connection, TransactionBehavior};
use leasehold::{Engine, Error, Gap};
use support::{TempDb, key, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// The bytes of every file in the database's directory, by name.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read file"),
            )
        })
        .collect();
    files.sort();
    files
}

/// An application's own database (rollback journal, no leasehold schema).
fn application_db(db: &TempDb) {
    let conn = Connection::open(&db.path).expect("open");
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);
         INSERT INTO orders (item) VALUES ('tea'), ('coffee');",
    )
    .expect("the application's schema");
}

#[test]
fn opening_a_current_database_neither_writes_nor_waits_for_a_writer() -> R {
    let db = TempDb::new();
    Engine::open(&db.path)?.claim(&key("a"), "h1", secs(600))?;
    // Another process holds the write lock (an application's long
    // transaction): opening, for reads or writes, must not wait for it.
    let mut writer = Connection::open(&db.path)?;
    let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE app (x)")?;
    let engine = Engine::builder(&db.path)
        .busy_timeout(Duration::from_millis(50))
        .build()?;
    assert_eq!(
        engine
            .lease(&key("a"))?
            .and_then(|l| l.holder().map(str::to_owned)),
        Some("h1".into())
    );
    let reader = Engine::builder(&db.path).read_only(true).build()?;
    assert!(reader.lease(&key("a"))?.is_some_and(|l| l.is_held()));
    tx.commit()?;
    Ok(())
}

#[test]
fn a_read_only_engine_leaves_an_applications_file_byte_identical() -> R {
    let db = TempDb::new();
    application_db(&db);
    let before = snapshot(db.dir.path());
    let err = Engine::builder(&db.path)
        .read_only(true)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::NotMigrated { found: 0, expected, .. } if expected == leasehold::SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("leasehold migrate"), "{err}");
    // No leasehold tables, no WAL, no -lhwait, no journal: nothing.
    assert_eq!(snapshot(db.dir.path()), before);
    Ok(())
}

#[test]
fn a_read_only_engine_reads_and_writes_nothing() -> R {
    let db = TempDb::new();
    {
        let engine = Engine::open(&db.path)?;
        engine.claim(&key("a"), "h1", secs(600))?;
        engine.pin(&key("b"), "ops", "maintenance", None)?;
    }
    // The writer's signal file, to see whether the reader makes one.
    std::fs::remove_file(db.dir.path().join("test.db-lhwait"))?;
    let before = snapshot(db.dir.path());
    {
        let reader = Engine::builder(&db.path).read_only(true).build()?;
        assert_eq!(reader.all_leases("test")?.len(), 2);
        assert_eq!(reader.history(&key("a"), 10)?.len(), 1);
        assert_eq!(reader.export()?.leases.len(), 2);
        // Waiting works (the background thread only reads).
        reader.block_until_released_timeout(&key("c"), secs(5))?;
        let err = reader.claim(&key("c"), "h2", secs(60)).unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }
    let after = snapshot(db.dir.path());
    let main = |files: &[(String, Vec<u8>)]| {
        files
            .iter()
            .find(|(n, _)| n == "test.db")
            .map(|(_, b)| b.clone())
    };
    assert_eq!(
        main(&after),
        main(&before),
        "the database file is unchanged"
    );
    assert!(
        !after.iter().any(|(n, _)| n.ends_with("-lhwait")),
        "no -lhwait: {:?}",
        after.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn an_applications_conflicting_table_is_refused_and_the_file_left_as_it_was() -> R {
    let db = TempDb::new();
    {
        let conn = Connection::open(&db.path)?;
        conn.execute_batch(
            "CREATE TABLE leasehold_leases (id INTEGER PRIMARY KEY, note TEXT);
             INSERT INTO leasehold_leases (note) VALUES ('mine');",
        )?;
    }
    let before = snapshot(db.dir.path());
    let err = Engine::open(&db.path).unwrap_err();
    assert!(
        matches!(&err, Error::SchemaConflict { name, kind, .. } if name == "leasehold_leases" && kind == "table"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.len() < 300 && !text.contains('\n'),
        "one short line: {text}"
    );
    assert_eq!(snapshot(db.dir.path()), before, "not even switched to WAL");
    Ok(())
}

#[test]
fn a_directory_is_not_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Engine::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { what: "path", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn a_database_file_deleted_under_a_tracker_ends_its_tenure() -> R {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    let tracker = engine
        .tracker(&key("a"), "h1")
        .guarantee(secs(60))
        .build()?;
    assert!(tracker.wait_leader().wait_timeout(secs(10)) == Some(true));
    let lost = tracker.wait_minion();
    std::fs::remove_file(&db.path)?;
    // Noticed within a second or so; generous bound for a loaded machine.
    assert_eq!(lost.wait_timeout(secs(20)), Some(true), "stepped down");
    assert!(!tracker.is_leader());
    let err = engine.claim(&key("b"), "h1", secs(60)).unwrap_err();
    assert!(matches!(err, Error::DatabaseReplaced { .. }), "{err:?}");
    Ok(())
}

#[test]
fn a_database_file_replaced_by_another_is_noticed_by_operations() -> R {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    engine.claim(&key("a"), "h1", secs(600))?;
    // Another file, with no lease, moved over the path: a new epoch 1 must
    // not be handed out next to the old one.
    let other = db.dir.path().join("other.db");
    Engine::open(&other)?;
    std::fs::rename(&other, &db.path)?;
    let deadline = std::time::Instant::now() + secs(20);
    let err = loop {
        match engine.claim(&key("b"), "h2", secs(60)) {
            Err(e) => break e,
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) => panic!("the replacement was never noticed"),
        }
    };
    assert!(matches!(err, Error::DatabaseReplaced { .. }), "{err:?}");
    assert!(err.to_string().contains("deleted or replaced"), "{err}");
    Ok(())
}

#[test]
fn a_reader_behind_the_retention_is_told_it_missed_events() -> R {
    let db = TempDb::new();
    let engine = Engine::builder(&db.path).event_retention(64).build()?;
    engine.claim(&key("a"), "h1", secs(600))?;
    let first = engine.wait_for_events(None, 0, Duration::ZERO)?;
    assert_eq!(first.len(), 1);
    assert_eq!(first.gap(), None);
    let cursor = first.cursor();
    // Far more transitions than the history keeps (trimmed 64 at a time).
    for i in 0..200 {
        let k = key(&format!("k{i}"));
        engine.claim(&k, "h1", secs(600))?;
    }
    let next = engine.wait_for_events(None, cursor, Duration::ZERO)?;
    match next.gap() {
        Some(Gap::Missed { from, to }) => {
            assert_eq!(from, cursor + 1);
            assert!(to > from, "{from}..{to}");
            assert_eq!(next.events()[0].1.id(), to);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    // Read on from the cursor: no gap any more.
    let rest = engine.wait_for_events(None, next.cursor(), Duration::ZERO)?;
    assert_eq!(rest.gap(), None);
    Ok(())
}

#[test]
fn a_history_cut_by_hand_is_reported_and_does_not_blind_waiters() -> R {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    for i in 0..5 {
        engine.claim(&key(&format!("k{i}")), "h1", secs(600))?;
    }
    let cursor = engine.wait_for_events(None, 0, Duration::ZERO)?.cursor();
    assert_eq!(cursor, 5);
    // An operator empties the history; ids start again from 1.
    Connection::open(&db.path)?.execute("DELETE FROM leasehold_events", [])?;
    engine.claim(&key("after"), "h1", secs(600))?;
    let next = engine.wait_for_events(None, cursor, Duration::ZERO)?;
    assert_eq!(next.gap(), Some(Gap::Restarted));
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next.cursor(), 1);

    // A minion tracker in another engine (its own background thread) must
    // still notice a release promptly, although the event ids it had seen
    // were cut and reused: not only at the holder's expiry, an hour away.
    let holder = Engine::open(&db.path)?;
    let k = key("leader");
    holder.claim(&k, "old", secs(3600))?;
    let tracker = engine.tracker(&k, "new").guarantee(secs(30)).build()?;
    let leads = tracker.wait_leader();
    assert_eq!(leads.wait_timeout(Duration::from_millis(200)), None);
    engine.settle();
    // The release is logged with id 1, below every id the tracker's
    // background thread has seen.
    Connection::open(&db.path)?.execute("DELETE FROM leasehold_events", [])?;
    holder.release(&k, "old")?;
    assert_eq!(leads.wait_timeout(secs(30)), Some(true));
    Ok(())
}

//! Hostile files: a database corrupted inside the lease pages, one cut
//! short, and a WAL left behind by a process killed mid-write. Each gets a
//! typed error or a clean recovery; nothing panics; what was committed
//! before survives where the bytes holding it survive.
//!
//! (Read-only directories, full databases and foreign tables are in
//! `bad_input.rs`; long and non-UTF-8 names and malformed imports through
//! the CLI in `cli.rs`.)

mod support;

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};

use leasehold::rusqlite::{Connection, ErrorCode};
use leasehold::{Engine, Error, Key};
use support::{TempDb, role, secs};

type R = Result<(), Box<dyn std::error::Error>>;

fn key(name: &str) -> Key {
    Key::new("hostile", name).expect("key")
}

/// A database with many leases, closed cleanly (no WAL left).
fn populated(db: &TempDb) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::open(&db.path)?;
    for i in 0..300 {
        engine.claim(&key(&format!("k{i:03}")), "h1", secs(3600))?;
    }
    Ok(())
}

fn page_of(conn: &Connection, table: &str) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(conn.query_row(
        "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
        [table],
        |r| r.get(0),
    )?)
}

#[test]
fn a_corrupted_lease_page_gets_a_typed_error_not_a_panic() -> R {
    let db = TempDb::new();
    populated(&db)?;
    let (page_size, root) = {
        let conn = Connection::open(&db.path)?;
        let size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        (size, page_of(&conn, "leasehold_leases")?)
    };
    // Overwrite the middle of the lease table's root page.
    let mut f = std::fs::OpenOptions::new().write(true).open(&db.path)?;
    f.seek(SeekFrom::Start((root - 1) * page_size + 16))?;
    f.write_all(&[0xA5; 512])?;
    drop(f);

    // Opening may already notice; if not, the first read of leases does.
    let outcome = Engine::open(&db.path).and_then(|engine| {
        (0..300)
            .map(|i| engine.lease(&key(&format!("k{i:03}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(drop)
    });
    let err = outcome.expect_err("the corruption is noticed");
    assert_eq!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt),
        "{err:?}"
    );
    assert!(err.to_string().contains("malformed"), "{err}");
    Ok(())
}

#[test]
fn a_truncated_file_gets_a_typed_error() -> R {
    let db = TempDb::new();
    populated(&db)?;
    let len = std::fs::metadata(&db.path)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db.path)?
        .set_len(len / 3)?;
    let outcome = Engine::open(&db.path).and_then(|engine| {
        (0..300)
            .map(|i| engine.lease(&key(&format!("k{i:03}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(drop)
    });
    let err = outcome.expect_err("the truncation is noticed");
    assert!(
        matches!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        ),
        "{err:?}"
    );
    Ok(())
}

/// The child: claims, commits guarded writes, reports, then waits to be
/// killed with the WAL still holding its commits.
#[test]
fn crashing_writer() {
    if role().as_deref() != Some("crashing-writer") {
        return;
    }
    let db = std::env::var("LEASEHOLD_TEST_DB").expect("db");
    let engine = Engine::open(&db).expect("open");
    engine
        .connection()
        .expect("conn")
        .execute_batch("CREATE TABLE IF NOT EXISTS notes (n INTEGER)")
        .expect("table");
    let tenure = engine
        .claim(&key("survivor"), "crasher", secs(3600))
        .expect("claim");
    for n in 0..50 {
        let mut txn = leasehold::Txn::new();
        tenure.token().add_to(&mut txn);
        txn.execute("INSERT INTO notes VALUES (?)", [n]);
        engine.commit(&txn).expect("commit");
    }
    // Begin one more transaction and die inside it.
    let mut conn = engine.connection().expect("conn");
    let tx = conn
        .transaction_with_behavior(leasehold::rusqlite::TransactionBehavior::Immediate)
        .expect("begin");
    tx.execute("INSERT INTO notes VALUES (999)", [])
        .expect("insert");
    println!("@committed");
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_wal_left_by_a_killed_process_is_recovered() -> R {
    let db = TempDb::new();
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "crashing_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LEASEHOLD_ROLE", "crashing-writer")
        .env("LEASEHOLD_TEST_DB", &db.path)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    for line in out.lines() {
        if line?.contains("@committed") {
            break;
        }
    }
    child.kill()?; // SIGKILL, inside an open write transaction
    child.wait()?;
    let wal = db.path.with_extension("db-wal");
    assert!(
        wal.exists() && std::fs::metadata(&wal)?.len() > 0,
        "the WAL was left behind"
    );

    let engine = Engine::open(&db.path)?;
    let lease = engine
        .lease(&key("survivor"))?
        .expect("the committed claim survived");
    assert_eq!((lease.holder(), lease.epoch()), (Some("crasher"), 1));
    let conn = engine.connection()?;
    let notes: i64 = conn.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?;
    assert_eq!(
        notes, 50,
        "every committed write survived; the open transaction did not"
    );
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    assert_eq!(ok, "ok");
    // And the engine carries on.
    engine.revoke(&key("survivor"))?;
    assert_eq!(engine.claim(&key("survivor"), "next", secs(1))?.epoch(), 2);
    assert!(matches!(
        engine.claim(&key("survivor"), "third", secs(1)),
        Err(Error::ClaimDenied { .. })
    ));
    Ok(())
}

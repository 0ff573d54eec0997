//! Bad input gets a typed error naming what was wrong, and changes nothing:
//! SQLite's paths, files, builder settings and disks. Bad names and
//! durations are refused by every backend: see the conformance suite
//! (`tests/conformance/bad_input.rs`).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use leasehold::rusqlite::{Connection, TransactionBehavior};
use leasehold::{Engine, Error, Key, SCHEMA_VERSION};
use support::{TempDb, key, manual_engine, secs};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn paths_that_cannot_be_shared_are_refused() {
    for path in ["", ":memory:", "file:x.db?mode=memory"] {
        let err = Engine::open(path).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { what: "path", .. }),
            "{path}: {err}"
        );
    }
}

#[test]
fn bad_builder_settings_are_refused() {
    let db = TempDb::new();
    assert!(matches!(
        Engine::builder(&db.path).pool_size(0).build(),
        Err(Error::InvalidArgument {
            what: "pool size",
            ..
        })
    ));
    assert!(matches!(
        Engine::builder(&db.path)
            .busy_timeout(Duration::from_secs(86_400))
            .build(),
        Err(Error::InvalidArgument {
            what: "busy timeout",
            ..
        })
    ));
    assert!(!db.path.exists(), "nothing was created");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() -> R {
    let db = TempDb::new();
    let text = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&db.path, &text)?;
    match Engine::open(&db.path) {
        Err(Error::NotADatabase { path }) => assert_eq!(path, db.path),
        other => panic!("expected NotADatabase, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&db.path)?, text);
    Ok(())
}

#[test]
fn a_missing_directory_is_an_open_error_naming_the_path() {
    let db = TempDb::new();
    let path = db.dir.path().join("no/such/dir/app.db");
    let err = Engine::open(&path).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("no/such/dir/app.db"), "{err}");
}

#[test]
fn a_newer_schema_is_refused_with_both_versions_and_left_alone() -> R {
    let db = TempDb::new();
    {
        let engine = Engine::open(&db.path)?;
        engine.claim(&key("a"), "h1", secs(60))?;
    }
    let conn = Connection::open(&db.path)?;
    conn.execute(
        "INSERT INTO leasehold_schema VALUES (?1, 'from-the-future', 'x', 0)",
        [SCHEMA_VERSION + 7],
    )?;
    match Engine::open(&db.path) {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 7, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let holder: String = conn.query_row("SELECT holder FROM leasehold_leases", [], |r| r.get(0))?;
    assert_eq!(holder, "h1", "the lease committed before survives");
    Ok(())
}

#[test]
fn the_applications_own_tables_and_user_version_are_untouched() -> R {
    let db = TempDb::new();
    let conn = Connection::open(&db.path)?;
    conn.execute_batch(
        "PRAGMA user_version = 42; CREATE TABLE leases (id INTEGER); CREATE TABLE events (x);",
    )?;
    let engine = Engine::open(&db.path)?;
    engine.claim(&key("a"), "h1", secs(60))?;
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    assert_eq!(v, 42);
    let n: i64 = conn.query_row("SELECT count(*) FROM leases", [], |r| r.get(0))?;
    assert_eq!(n, 0);
    Ok(())
}

#[test]
fn a_full_database_fails_the_claim_and_changes_nothing() -> R {
    let (_db, engine, _clock) = manual_engine();
    engine.claim(&key("before"), "h1", secs(60))?;
    let mut conn = engine.connection()?;
    // Cap the file at its current size, as a full disk would.
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    conn.pragma_update(None, "max_page_count", pages)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut err = None;
    for i in 0..10_000 {
        match engine
            .in_txn(&tx)?
            .claim(&Key::new("fill", format!("{i:0>200}"))?, "h1", secs(60))
        {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the database filled up");
    assert_eq!(
        err.sqlite_error_code(),
        Some(leasehold::rusqlite::ErrorCode::DiskFull),
        "{err}"
    );
    assert!(err.to_string().contains("full"), "{err}");
    // SQLite may already have rolled the transaction back on SQLITE_FULL.
    drop(tx);
    drop(conn);
    assert_eq!(engine.leases("fill")?.len(), 0);
    assert_eq!(
        engine
            .lease(&key("before"))?
            .and_then(|l| l.holder().map(str::to_owned)),
        Some("h1".into())
    );
    Ok(())
}

/// Makes `dir` unwritable even for root (who ignores permission bits), and
/// undoes it on drop.
struct ReadOnlyDir<'a>(&'a Path);

impl<'a> ReadOnlyDir<'a> {
    fn new(dir: &'a Path) -> ReadOnlyDir<'a> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        if root {
            let ok = Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .map(|s| s.success());
            assert!(
                matches!(ok, Ok(true)),
                "chattr +i is needed to make a directory read-only for root"
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        }
        ReadOnlyDir(dir)
    }
}

impl Drop for ReadOnlyDir<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn a_read_only_directory_is_an_open_error_and_leases_survive() -> R {
    let db = TempDb::new();
    {
        let engine = Engine::open(&db.path)?;
        engine.claim(&key("a"), "h1", secs(600))?;
    }
    // A clean close removed the -wal and -shm files; they cannot be created now.
    assert!(!db.path.with_extension("db-wal").exists());
    {
        let _ro = ReadOnlyDir::new(db.dir.path());
        // Issue 12: the error names the directory and why SQLite needs it,
        // not "attempt to write a readonly database" — for reads too.
        let err = Engine::open(&db.path).unwrap_err();
        assert!(matches!(err, Error::DirectoryNotWritable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("test.db-wal")
                && text.contains("test.db-shm")
                && text.contains("directory"),
            "{text}"
        );
        let err = Engine::builder(&db.path)
            .read_only(true)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::DirectoryNotWritable { .. }), "{err:?}");
        let fresh = db.dir.path().join("new.db");
        assert!(matches!(
            Engine::open(&fresh),
            Err(Error::DirectoryNotWritable { .. })
        ));
        assert!(!fresh.exists());
        // The command line says the same, for reads and writes (exit 7).
        for args in [&["list"][..], &["claim", "test", "b", "h2", "--for", "1m"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_leasehold"))
                .env_remove("LEASEHOLD_DB")
                .arg("--db")
                .arg(&db.path)
                .args(args)
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(7), "{args:?}: {err}");
            assert!(
                err.contains("test.db-wal") && err.contains("directory"),
                "{args:?}: {err}"
            );
            assert!(!err.contains("readonly database"), "{err}");
        }
    }
    let engine = Engine::open(&db.path)?;
    assert_eq!(
        engine
            .lease(&key("a"))?
            .and_then(|l| l.holder().map(str::to_owned)),
        Some("h1".into())
    );
    Ok(())
}

#[test]
fn invisible_format_characters_are_refused_in_names() {
    for bad in [
        "a\u{202E}b",
        "a\u{2028}b",
        "zero\u{200B}width",
        "\u{FEFF}bom",
    ] {
        let err = leasehold::Key::new("ops", bad).expect_err(bad);
        assert!(err.to_string().contains("control character"), "{err}");
    }
    leasehold::Key::new("ops", "café-ünïcode").expect("ordinary letters are fine");
}

//! The guard for SQL clients (issue 16), used carelessly and then
//! hostilely: shadowing tables, savepoints, deferred transactions, clients
//! that carry on after errors, old schemas.

mod support;

use std::process::Command;
use std::time::Duration;

use leasehold::postgres::client::{Client, NoTls};
use leasehold::rusqlite::Connection;
use leasehold::{Engine, GuardSql};
use support::guarded_app::{app_rows, key, pg_db, pg_rows, sqlite_db};
use support::{TempDb, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// A temporary table named like leasehold's (a careless snapshot of the
/// leases for a report, say) must not stand in for the real one: pg_temp is
/// searched first for tables unless the search_path names it.
#[test]
fn on_postgres_a_temp_table_cannot_stand_in_for_the_leases() -> R {
    let Some((_db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    // A snapshot taken while h1 held the lease...
    client
        .batch_execute("CREATE TEMP TABLE leasehold_leases AS SELECT * FROM lh.leasehold_leases")?;
    // ...and the tenure ends.
    engine.revoke(&k)?;
    let guard = GuardSql::postgres("lh", &k, "h1", Some(1))?;
    let mut tx = client.transaction()?;
    let passed = tx.batch_execute(guard.statement()).is_ok();
    drop(tx);
    assert!(
        !passed,
        "the guard passed on a temporary copy of the leases"
    );
    let holds: bool = client
        .query_one(&format!("SELECT {}", guard.predicate()), &[])?
        .get(0);
    assert!(
        !holds,
        "the predicate held on a temporary copy of the leases"
    );
    Ok(())
}

/// A guard passed inside a savepoint that is then rolled back to: on
/// PostgreSQL the rollback releases the row lock the guard took, so the
/// rest of the transaction is no longer held against a revoke.
#[test]
fn on_postgres_rolling_back_to_a_savepoint_before_the_guard_drops_its_hold() -> R {
    let Some((_db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let mut tx = client.transaction()?;
    tx.batch_execute("SAVEPOINT s")?;
    tx.batch_execute(GuardSql::postgres("lh", &k, "h1", Some(1))?.statement())?;
    tx.batch_execute("ROLLBACK TO SAVEPOINT s")?;
    // The engine's own busy timeout (5 s): a revoke expected to go through
    // at once must not fail for a short budget on a loaded machine.
    let revoked = engine.revoke(&k).is_ok();
    tx.execute("INSERT INTO public.app VALUES ('after')", &[])?;
    tx.commit()?;
    // What PostgreSQL does: the hold is gone (documented in the README).
    assert!(
        revoked,
        "a revoke waited for a guard rolled back to its savepoint"
    );
    assert_eq!(pg_rows(&mut client), ["after"]);
    Ok(())
}

/// Under REPEATABLE READ, a guard run after the snapshot was taken and the
/// tenure ended (the row changed since) is refused, not judged on the
/// snapshot.
#[test]
fn on_postgres_the_guard_in_repeatable_read_sees_a_tenure_ended_after_the_snapshot() -> R {
    let Some((_db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let mut tx = client
        .build_transaction()
        .isolation_level(leasehold::postgres::client::IsolationLevel::RepeatableRead)
        .start()?;
    tx.query("SELECT count(*) FROM public.app", &[])?;
    engine.revoke(&k)?;
    let guard = GuardSql::postgres("lh", &k, "h1", Some(1))?;
    assert!(tx.batch_execute(guard.statement()).is_err());
    drop(tx);
    let mut tx = client
        .build_transaction()
        .isolation_level(leasehold::postgres::client::IsolationLevel::Serializable)
        .start()?;
    tx.query("SELECT count(*) FROM public.app", &[])?;
    engine.claim(&k, "h2", secs(600))?;
    let holds = tx.query_one(&format!("SELECT {}", guard.predicate()), &[]);
    assert!(!matches!(holds.map(|r| r.get::<_, bool>(0)), Ok(true)));
    Ok(())
}

/// A role that may not lock the lease row is refused (fails closed).
#[test]
fn on_postgres_a_role_without_rights_is_refused() -> R {
    let Some((db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let role = format!("mig_{}", std::process::id());
    client.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; \
         GRANT USAGE ON SCHEMA lh TO {role}; GRANT SELECT ON lh.leasehold_leases TO {role}; \
         GRANT ALL ON public.app TO {role}"
    ))?;
    let url = db.url().to_owned();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut other = Client::connect(&format!("{url}{sep}user={role}"), NoTls)
        .or_else(|_| Client::connect(&format!("{url} user={role}"), NoTls))?;
    let guard = GuardSql::postgres("lh", &k, "h1", Some(1))?;
    let err = other
        .batch_execute(guard.statement())
        .expect_err("no UPDATE right, no FOR SHARE");
    eprintln!("{err:?}");
    client.batch_execute(
        "REVOKE EXECUTE ON FUNCTION lh.leasehold_guard(text, text, text, bigint) FROM PUBLIC",
    )?;
    let err = other
        .batch_execute(guard.statement())
        .expect_err("no EXECUTE");
    eprintln!("{err:?}");
    Ok(())
}

// ---------------------------------------------------------------- SQLite --

/// In a deferred transaction that read first, the tenure ended since: the
/// guard must not pass on the old snapshot.
#[test]
fn on_sqlite_a_deferred_transaction_that_read_first_is_refused_once_the_tenure_ended() -> R {
    let (_db, engine, conn) = sqlite_db()?;
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let guard = GuardSql::sqlite(&k, "h1", Some(1))?;
    conn.execute_batch("BEGIN")?;
    let _: i64 = conn.query_row("SELECT count(*) FROM main.leasehold_leases", [], |r| {
        r.get(0)
    })?;
    engine.revoke(&k)?;
    engine.claim(&k, "h2", secs(600))?;
    let r = conn.execute_batch(guard.statement());
    eprintln!("{r:?}");
    assert!(r.is_err());
    conn.execute_batch("ROLLBACK")?;
    // The predicate in a deferred transaction too.
    conn.execute_batch("BEGIN")?;
    let _: i64 = conn.query_row("SELECT count(*) FROM main.leasehold_leases", [], |r| {
        r.get(0)
    })?;
    engine.revoke(&k)?;
    let p = GuardSql::sqlite(&k, "h2", Some(2))?;
    let r = conn.execute(
        &format!("INSERT INTO app SELECT 'pred' WHERE {}", p.predicate()),
        [],
    );
    eprintln!("{r:?}");
    assert!(!matches!(r, Ok(1)));
    conn.execute_batch("ROLLBACK")?;
    assert!(app_rows(&conn).is_empty());
    Ok(())
}

/// On SQLite, rolling back to a savepoint keeps the write lock the guard
/// took: the hold lasts until the transaction ends.
#[test]
fn on_sqlite_rolling_back_to_a_savepoint_keeps_the_hold() -> R {
    let (db, engine, conn) = sqlite_db()?;
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    conn.execute_batch("SAVEPOINT s")?;
    conn.execute_batch(GuardSql::sqlite(&k, "h1", Some(1))?.statement())?;
    conn.execute_batch("ROLLBACK TO s")?;
    let quick = Engine::builder(&db.path)
        .busy_timeout(Duration::from_millis(200))
        .build()?;
    assert!(quick.revoke(&k).is_err(), "the revoke waits");
    conn.execute_batch("INSERT INTO app VALUES ('x'); RELEASE s")?;
    quick.revoke(&k)?;
    Ok(())
}

/// The predicate in an UPDATE of many rows: evaluated against one moment;
/// all rows or none.
#[test]
fn on_sqlite_the_predicate_in_a_many_row_update_is_all_or_nothing() -> R {
    let (_db, engine, conn) = sqlite_db()?;
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO app SELECT 'a' FROM n",
    )?;
    let p = GuardSql::sqlite(&k, "h1", Some(1))?;
    let n = conn.execute(
        &format!("UPDATE app SET v = 'b' WHERE {}", p.predicate()),
        [],
    )?;
    assert_eq!(n, 20000);
    engine.revoke(&k)?;
    let n = conn.execute(
        &format!("UPDATE app SET v = 'c' WHERE {}", p.predicate()),
        [],
    )?;
    assert_eq!(n, 0);
    Ok(())
}

/// What `sqlite3` without -bail does with a refused guard in a script it
/// reads from its input (as the README's recipe feeds it): carries on and
/// commits the rest unguarded (documented; the recipe uses -bail). Given
/// the script as an argument, it stops at the first error either way.
#[test]
fn sqlite3_without_bail_commits_after_a_refused_guard() -> R {
    use std::io::Write;
    let (db, engine, conn) = sqlite_db()?;
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let guard = GuardSql::sqlite(&k, "h2", None)?;
    let script = |v: &str| {
        format!(
            "BEGIN IMMEDIATE;\n{};\nINSERT INTO app VALUES ('{v}');\nCOMMIT;\n",
            guard.statement()
        )
    };
    let feed = |args: &[&str], v: &str| -> std::io::Result<std::process::ExitStatus> {
        let mut child = Command::new("sqlite3")
            .args(args)
            .arg(&db.path)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script(v).as_bytes())?;
        child.wait()
    };
    assert!(!feed(&["-bail"], "bail")?.success());
    feed(&[], "nobail")?;
    let out = Command::new("sqlite3")
        .arg(&db.path)
        .arg(script("arg"))
        .output()?;
    assert!(!out.status.success());
    assert_eq!(app_rows(&conn), ["nobail"]);
    Ok(())
}

/// psql carrying on after errors: with -1 (or BEGIN) a refused guard
/// aborts the transaction and nothing commits; but with ON_ERROR_ROLLBACK
/// (a common ~/.psqlrc setting; the recipe's -X skips it) psql rolls back
/// only the failed statement and commits the rest, unguarded.
#[test]
fn psql_carrying_on_commits_nothing_unless_on_error_rollback() -> R {
    let Some((db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let guard = GuardSql::postgres("lh", &k, "h2", None)?;
    let psql = |extra: &[&str], v: &str| {
        Command::new("psql")
            .args(["-X", "-q", "-d", db.url()])
            .args(extra)
            .args(["-c", guard.statement()])
            .args(["-c", &format!("INSERT INTO public.app VALUES ('{v}')")])
            .output()
            .expect("psql")
    };
    psql(&["-1"], "single");
    assert!(pg_rows(&mut client).is_empty());
    psql(&["-1", "-v", "ON_ERROR_ROLLBACK=on"], "on_error_rollback");
    assert_eq!(pg_rows(&mut client), ["on_error_rollback"]);
    Ok(())
}

/// A SQLite file at schema 4 (before the guard): the guard statement is
/// refused there (no view), read-only commands still read it, and an
/// engine opened on it migrates it to 5, after which the guard works.
#[test]
fn a_schema_4_file_reads_and_migrates_to_the_guard() -> R {
    let db = TempDb::new();
    let conn = Connection::open(&db.path)?;
    for m in &leasehold::migrations()[..4] {
        conn.execute_batch(&m.script())?;
    }
    assert_eq!(leasehold::schema_version(&conn)?, 4);
    let now = leasehold::testing::wall_ms();
    conn.execute_batch(&format!(
        "INSERT INTO leasehold_leases (namespace, name, holder, epoch, started_ms, expiry_ms, updated_ms) \
         VALUES ('ops', 'migration', 'h1', 3, {now}, {}, {now})",
        now + 600_000
    ))?;
    let k = key("ops", "migration");
    let guard = GuardSql::sqlite(&k, "h1", Some(3))?;
    let err = conn
        .execute_batch(&format!("BEGIN IMMEDIATE; {}; COMMIT", guard.statement()))
        .expect_err("no guard before schema 5");
    assert!(err.to_string().contains("leasehold_guard"), "{err}");
    conn.execute_batch("ROLLBACK")?;
    let path = db.path.to_str().expect("utf-8");
    for args in [&["list"][..], &["show", "ops", "migration"], &["export"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .env_remove("LEASEHOLD_DB")
            .args(["--db", path])
            .args(args)
            .output()?;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(leasehold::schema_version(&conn)?, 4, "reads leave it at 4");
    let engine = Engine::open(&db.path)?;
    assert_eq!(leasehold::schema_version(&conn)?, 5);
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {}; COMMIT", guard.statement()))?;
    engine.revoke(&k)?;
    assert!(
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {}; COMMIT", guard.statement()))
            .is_err()
    );
    Ok(())
}

/// While a guarded transaction holds the write lock, nobody can take the
/// lease, and nobody can renew it either: `run`'s own renewals wait too.
/// So `run` stops a command whose guarded transaction outlasts the
/// renewals' slack (about half of --for), and exits 4, though nobody else
/// took the lease; what the transaction wrote never commits. The README
/// says to give --for at least twice the longest guarded transaction plus
/// the grace: then the migration commits and run exits 0. (A transaction
/// held open past the lease would end the tenure anyway: a renewal must
/// come before the expiry.)
#[test]
fn run_keeps_a_guarded_migration_shorter_than_half_its_lease_and_stops_a_longer_one() -> R {
    let db = TempDb::new();
    Engine::open(&db.path)?;
    let conn = Connection::open(&db.path)?;
    conn.execute_batch("CREATE TABLE app (v TEXT)")?;
    let run = |lease: &str, hold: &str, value: &str| -> std::io::Result<std::process::Output> {
        let script = format!(
            "{{ echo 'BEGIN IMMEDIATE;'; printf '%s;\\n' \"$LEASEHOLD_GUARD_STATEMENT\"; \
               echo \"INSERT INTO app VALUES ('{value}');\"; sleep {hold}; echo 'COMMIT;'; }} \
             | sqlite3 -bail \"$LEASEHOLD_DB\""
        );
        Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .env_remove("LEASEHOLD_DB")
            .args(["--db", db.path.to_str().expect("utf-8")])
            .args(["run", "--for", lease, "--grace", "0", "ops", "m", "host"])
            .args(["--", "sh", "-c", &script])
            .output()
    };
    let rows = || -> Vec<String> {
        let mut st = conn.prepare("SELECT v FROM app").expect("app");
        st.query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let short = run("4s", "0.2", "short")?;
    assert!(
        short.status.success(),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    assert_eq!(rows(), ["short"]);
    let long = run("1s", "3", "long")?;
    assert_eq!(
        long.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&long.stderr)
    );
    assert_eq!(rows(), ["short"], "the stopped migration never committed");
    Ok(())
}

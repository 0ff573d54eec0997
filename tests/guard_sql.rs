//! The guard for SQL clients that are not this library (issue 16): the
//! guard statement and predicate in the schema, `leasehold guard`, and
//! `run` handing both to its command; applied by the real `sqlite3` and
//! `psql` commands.
//!
//! The `sqlite3` and `psql` tests need those commands (Debian: `sqlite3`,
//! `postgresql-client`; `.ci/install-postgres` installs both). Without them
//! the tests say so loudly and return; `LEASEHOLD_REQUIRE_CLIENTS=1` (set
//! by `.ci/run`) makes that a failure. The PostgreSQL tests need a server
//! as `tests/postgres.rs` does.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leasehold::chrono::{TimeDelta, Utc};
use leasehold::postgres::PgEngine;
use leasehold::postgres::client::{Client, NoTls};
use leasehold::rusqlite::Connection;
use leasehold::testing::PgServer;
use leasehold::{Engine, GuardSql, ManualClock};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::guarded_app::{app_rows, key, pg_db, pg_rows, sqlite_db};
use support::{TempDb, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// Names that a literal must keep inside it: quotes of both kinds,
/// statement ends, comments, backslashes, and text past the ASCII range.
const HOSTILE: &[&str] = &[
    "it's",
    "x'); DROP TABLE app; --",
    "a\\'; SELECT 1; --",
    "\"quoted\" -- and /* not */ a comment",
    "back\\slash\\",
    "$$dollar$$ $tag$",
    "naïve 名前 😀",
];

// ---------------------------------------------------------------- SQLite --

/// Runs `BEGIN IMMEDIATE; <guard>; INSERT v; COMMIT` as a client would; on
/// an error, rolls back (as `sqlite3 -bail` does on exit) and returns it.
fn apply_sqlite(conn: &Connection, guard: &GuardSql, v: &str) -> Result<(), String> {
    let sql = format!(
        "BEGIN IMMEDIATE; {}; INSERT INTO app VALUES ('{}'); COMMIT;",
        guard.statement(),
        v.replace('\'', "''")
    );
    conn.execute_batch(&sql).map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    })
}

/// The guard statement passes for the holder (in its epoch, or any), and
/// otherwise fails naming the key, the holder and what the database holds
/// instead; nothing of a refused transaction is kept.
#[test]
fn on_sqlite_the_guard_statement_passes_only_for_the_holder_and_says_why_not() -> R {
    let (_db, engine, conn) = sqlite_db()?;
    let k = key("ops", "migration");
    let tenure = engine.claim(&k, "h1", secs(600))?;
    assert_eq!(tenure.epoch(), 1);
    apply_sqlite(&conn, &GuardSql::sqlite(&k, "h1", Some(1))?, "fenced")?;
    apply_sqlite(&conn, &GuardSql::sqlite(&k, "h1", None)?, "any epoch")?;
    let refusals = [
        (
            GuardSql::sqlite(&k, "h2", None)?,
            r#"leasehold guard: ops/migration is not held by "h2": it is held by "h1" in epoch 1"#,
        ),
        (
            GuardSql::sqlite(&k, "h1", Some(2))?,
            r#"ops/migration is not held by "h1" in epoch 2: it is held by "h1" in epoch 1"#,
        ),
        (
            GuardSql::sqlite(&key("ops", "other"), "h1", None)?,
            "ops/other is not held by \"h1\": it was never claimed",
        ),
    ];
    for (guard, says) in &refusals {
        let err = apply_sqlite(&conn, guard, "refused").expect_err("refused");
        assert!(err.contains(says), "{err}");
    }
    engine.release(&k, "h1")?;
    let err = apply_sqlite(&conn, &GuardSql::sqlite(&k, "h1", Some(1))?, "refused")
        .expect_err("refused after release");
    assert!(
        err.contains("it is vacant (epoch 1 was released or revoked)"),
        "{err}"
    );
    // A new tenure of the same holder: the fenced guard of the old one is
    // refused, the unfenced one passes.
    engine.claim(&k, "h1", secs(600))?;
    let err = apply_sqlite(&conn, &GuardSql::sqlite(&k, "h1", Some(1))?, "refused")
        .expect_err("the old epoch");
    assert!(err.contains("held by \"h1\" in epoch 2"), "{err}");
    apply_sqlite(&conn, &GuardSql::sqlite(&k, "h1", None)?, "epoch 2")?;
    assert_eq!(app_rows(&conn), ["fenced", "any epoch", "epoch 2"]);
    Ok(())
}

/// The guard reads time in SQL (the database's clock plus the engines'
/// persisted offset), not the engine's: a tenure an engine dated an hour
/// ago, for ten minutes, has expired when the guard runs.
#[test]
fn on_sqlite_the_guard_judges_expiry_by_the_time_sql_reads() -> R {
    let db = TempDb::new();
    let past = ManualClock::new(Utc::now() - TimeDelta::hours(1));
    let engine = Engine::builder(&db.path).clock(past).build()?;
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let conn = Connection::open(&db.path)?;
    conn.execute_batch("CREATE TABLE app (v TEXT)")?;
    let err =
        apply_sqlite(&conn, &GuardSql::sqlite(&k, "h1", Some(1))?, "late").expect_err("expired");
    assert!(err.contains("epoch 1 of \"h1\" expired"), "{err}");
    assert!(app_rows(&conn).is_empty());
    // And the predicate agrees.
    let holds: bool = conn.query_row(
        &format!("SELECT {}", GuardSql::sqlite(&k, "h1", None)?.predicate()),
        [],
        |r| r.get(0),
    )?;
    assert!(!holds);
    Ok(())
}

/// Passing, the guard keeps the write lock to the end of the transaction,
/// in a deferred transaction too: nothing can end the tenure (a revoke, a
/// claim after expiry) until it commits.
#[test]
fn on_sqlite_a_passed_guard_holds_off_every_writer_until_commit() -> R {
    let (db, engine, conn) = sqlite_db()?;
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    conn.execute_batch(&format!(
        "BEGIN; {}",
        GuardSql::sqlite(&k, "h1", Some(1))?.statement()
    ))?;
    let other = Connection::open(&db.path)?;
    other.busy_timeout(Duration::ZERO)?;
    let err = other
        .execute_batch("BEGIN IMMEDIATE")
        .expect_err("the guard holds the write lock");
    assert!(err.to_string().contains("locked"), "{err}");
    let quick = Engine::builder(&db.path)
        .busy_timeout(Duration::from_millis(50))
        .build()?;
    assert!(quick.revoke(&k).is_err(), "a revoke waits for the commit");
    conn.execute_batch("INSERT INTO app VALUES ('guarded'); COMMIT")?;
    quick.revoke(&k)?;
    assert_eq!(app_rows(&conn), ["guarded"]);
    Ok(())
}

/// Names that hold quotes, semicolons, comments and backslashes stay
/// inside their literals: the guard passes for exactly that key and
/// holder, fails for a near miss, and nothing else runs.
#[test]
fn on_sqlite_hostile_names_cannot_leave_their_literals() -> R {
    let (_db, engine, conn) = sqlite_db()?;
    for (i, name) in HOSTILE.iter().enumerate() {
        let k = key("ops", name);
        engine.claim(&k, name, secs(600))?;
        apply_sqlite(&conn, &GuardSql::sqlite(&k, name, Some(1))?, name)?;
        let holds: bool = conn.query_row(
            &format!(
                "SELECT {}",
                GuardSql::sqlite(&k, name, Some(1))?.predicate()
            ),
            [],
            |r| r.get(0),
        )?;
        assert!(holds, "{name}");
        let near = format!("{name}x");
        let err = apply_sqlite(&conn, &GuardSql::sqlite(&k, &near, None)?, "no")
            .expect_err("a near miss");
        assert!(err.contains("leasehold guard"), "{err}");
        assert_eq!(app_rows(&conn).len(), i + 1);
    }
    assert_eq!(app_rows(&conn), HOSTILE);
    Ok(())
}

// ------------------------------------------------------------ PostgreSQL --

/// `BEGIN; <guard>; INSERT v; COMMIT` as a client would.
fn apply_pg(client: &mut Client, guard: &GuardSql, v: &str) -> Result<(), String> {
    let mut tx = client.transaction().map_err(|e| e.to_string())?;
    tx.batch_execute(guard.statement())
        .map_err(|e| pg_text(&e))?;
    tx.execute("INSERT INTO public.app VALUES ($1)", &[&v])
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

fn pg_text(e: &leasehold::postgres::client::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// As on SQLite: passes for the holder, else names what the database holds.
#[test]
fn on_postgres_the_guard_statement_passes_only_for_the_holder_and_says_why_not() -> R {
    let Some((_db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    let g = |holder: &str, epoch| GuardSql::postgres("lh", &k, holder, epoch);
    engine.claim(&k, "h1", secs(600))?;
    apply_pg(&mut client, &g("h1", Some(1))?, "a fenced")?;
    apply_pg(&mut client, &g("h1", None)?, "b any epoch")?;
    for (guard, says) in [
        (
            g("h2", None)?,
            r#"leasehold guard: ops/migration is not held by "h2": it is held by "h1" in epoch 1"#,
        ),
        (
            g("h1", Some(2))?,
            r#"not held by "h1" in epoch 2: it is held by "h1" in epoch 1"#,
        ),
        (
            GuardSql::postgres("lh", &key("ops", "other"), "h1", None)?,
            "it was never claimed",
        ),
    ] {
        let err = apply_pg(&mut client, &guard, "refused").expect_err("refused");
        assert!(err.contains(says), "{err}");
    }
    engine.release(&k, "h1")?;
    let err = apply_pg(&mut client, &g("h1", None)?, "refused").expect_err("vacant");
    assert!(err.contains("it is vacant (epoch 1"), "{err}");
    // Expiry by the server's clock: a tenure dated an hour ago (of a key
    // of its own: a row's last change dates any decision about it).
    let past = PgEngine::builder(_db.url())
        .schema("lh")
        .clock(ManualClock::new(Utc::now() - TimeDelta::hours(1)))
        .build()?;
    let old = key("ops", "old");
    past.claim(&old, "h3", secs(600))?;
    let err = apply_pg(
        &mut client,
        &GuardSql::postgres("lh", &old, "h3", None)?,
        "refused",
    )
    .expect_err("expired");
    assert!(err.contains("epoch 1 of \"h3\" expired"), "{err}");
    assert_eq!(pg_rows(&mut client), ["a fenced", "b any epoch"]);
    Ok(())
}

/// Passing, the guard holds the lease row until the transaction ends: a
/// revoke waits for its commit.
#[test]
fn on_postgres_a_passed_guard_holds_off_a_revoke_until_commit() -> R {
    let Some((db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    let k = key("ops", "migration");
    engine.claim(&k, "h1", secs(600))?;
    let mut tx = client.transaction()?;
    tx.batch_execute(GuardSql::postgres("lh", &k, "h1", Some(1))?.statement())?;
    let quick = PgEngine::builder(db.url())
        .schema("lh")
        .busy_timeout(Duration::from_millis(200))
        .build()?;
    assert!(quick.revoke(&k).is_err(), "the revoke waits for the guard");
    tx.execute("INSERT INTO public.app VALUES ('guarded')", &[])?;
    tx.commit()?;
    quick.revoke(&k)?;
    assert_eq!(pg_rows(&mut client), ["guarded"]);
    Ok(())
}

/// The predicate, in one statement: it writes only while the lease holds.
/// Hostile names stay inside their literals.
#[test]
fn on_postgres_the_predicate_gates_one_statement_and_hostile_names_stay_literal() -> R {
    let Some((_db, engine, mut client)) = pg_db() else {
        return Ok(());
    };
    for (i, name) in HOSTILE.iter().enumerate() {
        let k = key("ops", name);
        engine.claim(&k, name, secs(600))?;
        let yes = GuardSql::postgres("lh", &k, name, Some(1))?;
        let no = GuardSql::postgres("lh", &k, &format!("{name}x"), None)?;
        for guard in [&yes, &no] {
            client.batch_execute(&format!(
                "INSERT INTO public.app SELECT {} WHERE {}",
                quote_pg(name),
                guard.predicate()
            ))?;
        }
        apply_pg(&mut client, &yes, &format!("{i}"))?;
        assert!(apply_pg(&mut client, &no, "no").is_err());
    }
    let rows = pg_rows(&mut client);
    assert_eq!(rows.len(), 2 * HOSTILE.len(), "{rows:?}");
    for name in HOSTILE {
        assert!(rows.iter().any(|r| r == name), "{name}: {rows:?}");
    }
    Ok(())
}

fn quote_pg(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

// ------------------------------------------------- the command line ----

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.env_remove("LEASEHOLD_DB")
        .env_remove("LEASEHOLD_SCHEMA");
    cmd
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `leasehold guard` prints both forms in the dialect of --db, or one of
/// them, or JSON; bad input is refused with exit 5 and printed nothing.
#[test]
fn the_guard_command_prints_the_guard_in_the_database_s_dialect() -> R {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let o = bin()
        .arg("--db")
        .arg(&db)
        .args(["guard", "ops", "it's", "h1", "--epoch", "3"])
        .output()?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let expected = GuardSql::sqlite(&key("ops", "it's"), "h1", Some(3))?;
    assert!(
        out.contains(&format!("{};\n", expected.statement())),
        "{out}"
    );
    assert!(out.contains(expected.predicate()), "{out}");
    assert!(!db.exists(), "nothing is opened or created");

    let o = bin()
        .args([
            "--db",
            "postgres://u:secret@localhost/app",
            "--schema",
            "my app",
        ])
        .args(["guard", "ops", "m", "h1", "--statement"])
        .output()?;
    assert_eq!(
        text(&o.stdout),
        "SELECT \"my app\".leasehold_guard(E'ops', E'm', E'h1', NULL)\n"
    );
    let o = bin()
        .arg("--db")
        .arg(&db)
        .args(["--json", "guard", "ops", "m", "h1", "--predicate"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["dialect"], "sqlite");
    assert!(v.get("statement").is_none());
    assert!(
        v["predicate"]
            .as_str()
            .is_some_and(|p| p.starts_with("EXISTS"))
    );

    for bad in [
        &["guard", "ops", "m", "two\nlines"][..],
        &["guard", "ops", "", "h1"],
        &["guard", "ops", "m", " h1"],
    ] {
        let o = bin().arg("--db").arg(&db).args(bad).output()?;
        assert_eq!(o.status.code(), Some(5), "{bad:?}: {}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    let o = bin()
        .arg("--db")
        .arg(&db)
        .args(["--schema", "x", "guard", "ops", "m", "h1"])
        .output()?;
    assert_eq!(o.status.code(), Some(2));
    Ok(())
}

/// `sqlite3` or `psql`, if installed; a loud skip (or, with
/// `LEASEHOLD_REQUIRE_CLIENTS`, a failure) if not.
fn client_command(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let say = format!(
            "{name} not found: the tests applying migrations with it are skipped \
             (Debian: apt-get install sqlite3 postgresql-client; .ci/install-postgres does)"
        );
        assert!(
            std::env::var_os("LEASEHOLD_REQUIRE_CLIENTS").is_none(),
            "{say}"
        );
        eprintln!("SKIPPED: {say}");
    }
    found
}

/// Polls until `path` exists: the script under `run` writes it when it
/// reaches a step.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "waited for {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process group of process `pid` (run's watcher leads its command's).
fn pgid_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // pid (comm) state ppid pgrp …: comm may hold spaces; it ends at the last ')'.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split_whitespace()
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("pgrp")
}

/// A holder whose name would end a literal, a statement or a line if it
/// were not quoted: through `run`'s environment and a shell recipe.
const HOSTILE_HOLDER: &str = r#"it's "h1" \n\ -- ; x"#;

/// How the tenure of the migration under `run` ends, in the tests below.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// An administrator revokes it; another holder claims.
    Revoked,
    /// Its command (with `run` and the watcher, as when a whole host is
    /// paused) is SIGSTOPped past its lease; another holder claims.
    Paused,
}

/// A migration applied by a real SQL client under `leasehold run`: the
/// first commits while the lease holds. Then the script blocks (a FIFO);
/// `run`, its watcher and the script are stopped, standing for a host paused
/// as a whole (on resuming, the script may run before the watcher can stop
/// it) or a command that left the watcher's reach; the tenure ends
/// (`ending`) and another holder claims; the script is let go, and the same
/// migration's transaction is refused, with nothing of it visible.
struct UnderRun {
    dir: tempfile::TempDir,
    run: Child,
    script: i32,
}

impl UnderRun {
    /// Starts `leasehold <db_args> run ops migration h1 -- sh -c <script>`,
    /// where the script gets `$DIR` and applies the migration twice with
    /// `apply` (shell text using `$LEASEHOLD_*`, writing its exit status to
    /// `$DIR/<n>.status` and its stderr to `$DIR/<n>.err`), the second time
    /// after reading the FIFO `$DIR/go`.
    fn start(db_args: &[&str], holder: &str, lease: &str, apply: &str) -> UnderRun {
        let dir = tempfile::tempdir().expect("dir");
        let go = dir.path().join("go");
        nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let script = format!(
            "echo $$ > \"$DIR/pid.tmp\" && mv \"$DIR/pid.tmp\" \"$DIR/pid\"
             n=1; {apply}
             touch \"$DIR/first-done\"
             cat \"$DIR/go\" > /dev/null
             n=2; {apply}
             touch \"$DIR/second-done\""
        );
        let run = bin()
            .args(db_args)
            .args([
                "run",
                "ops",
                "migration",
                holder,
                "--for",
                lease,
                "--grace",
                "0",
            ])
            .args(["--", "sh", "-c", &script])
            .env("DIR", dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("leasehold run");
        let first = dir.path().join("first-done");
        wait_for(&first);
        let script: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .expect("pid")
            .trim()
            .parse()
            .expect("pid");
        UnderRun { dir, run, script }
    }

    fn status(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{n}.status")))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn err(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{n}.err"))).unwrap_or_default()
    }

    /// Stops run, the watcher and the script (not the script's group: the
    /// watcher leads it, and must stay stopped).
    fn pause(&self) {
        let watcher = pgid_of(self.script);
        for pid in [self.run.id() as i32, watcher, self.script] {
            kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
        }
    }

    /// Lets the script go on to its second application, and waits for it.
    fn resume_script(&self) {
        kill(Pid::from_raw(self.script), Signal::SIGCONT).expect("SIGCONT");
        std::fs::write(self.dir.path().join("go"), b"go\n").expect("open the FIFO");
        wait_for(&self.dir.path().join("second-done"));
    }
}

impl Drop for UnderRun {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.run.id()) {
            let group = pgid_of_or(self.script);
            let _ = kill(Pid::from_raw(-group), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.run.wait();
    }
}

fn pgid_of_or(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .map_or(pid, |_| pgid_of(pid))
}

/// Ends the tenure of `h1` (revoked, or left to expire while paused) and
/// has `h2` claim, through `claim` (which fails while the lease holds).
fn end_and_take_over(ending: Ending, revoke: impl Fn(), claim: impl Fn() -> bool) {
    if let Ending::Revoked = ending {
        revoke();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !claim() {
        assert!(Instant::now() < deadline, "h2 never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sqlite3_under_run(ending: Ending, holder: &str) -> R {
    let Some(sqlite3) = client_command("sqlite3") else {
        return Ok(());
    };
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    Connection::open(&db.path)?.execute_batch("CREATE TABLE app (v TEXT)")?;
    let apply = format!(
        "{{ echo 'BEGIN IMMEDIATE;'; printf '%s;\\n' \"$LEASEHOLD_GUARD_STATEMENT\"; \
           echo \"INSERT INTO app VALUES ('migration $n');\"; \
           echo \"INSERT INTO app VALUES ('migration $n, second row');\"; \
           echo 'COMMIT;'; }} | {} -bail \"$LEASEHOLD_DB\" 2> \"$DIR/$n.err\"; \
         echo $? > \"$DIR/$n.status\"",
        sqlite3.display()
    );
    let db_arg = db.path.to_str().expect("utf-8 path");
    let under = UnderRun::start(&["--db", db_arg], holder, "1s", &apply);
    assert_eq!(under.status(1), "0", "{}", under.err(1));
    let conn = Connection::open(&db.path)?;
    assert_eq!(app_rows(&conn), ["migration 1", "migration 1, second row"]);
    under.pause();
    let k = key("ops", "migration");
    end_and_take_over(
        ending,
        || {
            engine.revoke(&k).expect("revoke");
        },
        || engine.claim(&k, "h2", secs(600)).is_ok(),
    );
    under.resume_script();
    assert_ne!(under.status(2), "0");
    let err = under.err(2);
    assert!(
        err.contains("ops/migration is not held by")
            && err.contains("in epoch 1: it is held by \"h2\" in epoch 2"),
        "{err}"
    );
    assert_eq!(
        app_rows(&conn),
        ["migration 1", "migration 1, second row"],
        "nothing of the refused transaction is visible"
    );
    Ok(())
}

#[test]
fn a_sqlite3_migration_under_run_is_refused_once_its_tenure_is_revoked() -> R {
    sqlite3_under_run(Ending::Revoked, HOSTILE_HOLDER)
}

#[test]
fn a_sqlite3_migration_under_run_is_refused_once_paused_past_its_lease() -> R {
    sqlite3_under_run(Ending::Paused, "h1")
}

fn psql_under_run(ending: Ending, holder: &str) -> R {
    let Some(psql) = client_command("psql") else {
        return Ok(());
    };
    let Some(server) = PgServer::shared() else {
        return Ok(());
    };
    let db = server.create_database()?;
    let engine = PgEngine::builder(db.url()).schema("lh").build()?;
    let mut client = Client::connect(db.url(), NoTls)?;
    client.batch_execute("CREATE TABLE public.app (v text)")?;
    let dir = tempfile::tempdir()?;
    let migration = dir.path().join("migration.sql");
    std::fs::write(
        &migration,
        "INSERT INTO public.app VALUES ('migration ' || :'n');\n\
         INSERT INTO public.app VALUES ('migration ' || :'n' || ', second row');\n",
    )?;
    // One transaction (-1), stopping at the first error.
    let apply = format!(
        "{} -X -q -v ON_ERROR_STOP=1 -v n=$n -1 -d \"$LEASEHOLD_DB\" \
           -c \"$LEASEHOLD_GUARD_STATEMENT\" -f {} 2> \"$DIR/$n.err\"; \
         echo $? > \"$DIR/$n.status\"; \
         {} -X -q -v n=\"$n, carried on\" -d \"$LEASEHOLD_DB\" \
           -c 'BEGIN' -c \"$LEASEHOLD_GUARD_STATEMENT\" -f {} -c 'COMMIT' 2>> \"$DIR/$n.err\"",
        psql.display(),
        migration.display(),
        psql.display(),
        migration.display(),
    );
    let under = UnderRun::start(&["--db", db.url(), "--schema", "lh"], holder, "1s", &apply);
    assert_eq!(under.status(1), "0", "{}", under.err(1));
    let committed = [
        "migration 1",
        "migration 1, carried on",
        "migration 1, carried on, second row",
        "migration 1, second row",
    ];
    assert_eq!(pg_rows(&mut client), committed);
    under.pause();
    let k = key("ops", "migration");
    end_and_take_over(
        ending,
        || {
            engine.revoke(&k).expect("revoke");
        },
        || engine.claim(&k, "h2", secs(600)).is_ok(),
    );
    under.resume_script();
    assert_ne!(under.status(2), "0");
    let err = under.err(2);
    assert!(
        err.contains("ops/migration is not held by")
            && err.contains("in epoch 1: it is held by \"h2\" in epoch 2"),
        "{err}"
    );
    // Nothing of it, nor of the client that carried on past the error (its
    // COMMIT of an aborted transaction rolls back).
    assert_eq!(pg_rows(&mut client), committed);
    Ok(())
}

#[test]
fn a_psql_migration_under_run_is_refused_once_its_tenure_is_revoked() -> R {
    psql_under_run(Ending::Revoked, "h1")
}

#[test]
fn a_psql_migration_under_run_is_refused_once_paused_past_its_lease() -> R {
    psql_under_run(Ending::Paused, HOSTILE_HOLDER)
}

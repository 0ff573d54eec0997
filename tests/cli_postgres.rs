//! The `leasehold` binary on PostgreSQL, run for real against a database of
//! its own on the shared throwaway server ([`PgServer::shared`]): every
//! command, `migrate --print-sql`, reading commands on an unmigrated
//! database (which must create nothing), `run`, export and import across
//! backends, `watch`, and the demo. Every connection string the tests pass
//! holds a password (which the test server, trusting local connections,
//! ignores), and no output or error may ever show it.
//!
//! Without a server the tests return at once (the server prints a loud skip
//! line; `LEASEHOLD_REQUIRE_PG` turns that into a failure).

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use leasehold::postgres::client::config::Host;
use leasehold::postgres::client::{Client, Config, NoTls};
use leasehold::postgres::{PG_SCHEMA_VERSION, pg_migrations};
use leasehold::testing::{PgDatabase, PgServer};
use serde_json::Value;
use support::TempDb;
use support::output::{fails, json, ok, stderr, stdout};

type R = Result<(), Box<dyn std::error::Error>>;

/// The schema most tests use.
const SCHEMA: &str = "lh";

/// A database of the test's own, and ways to name it with a password.
struct Pg {
    db: PgDatabase,
    /// `postgres://user:password@…/name?host=…`.
    url: String,
    /// `host=… port=… user=… password=… dbname=…`.
    key_values: String,
    /// The password in both, which no output may show.
    secret: String,
}

impl Pg {
    /// A fresh database, or `None` without a server.
    fn new() -> Option<Pg> {
        let server = PgServer::shared()?;
        let db = server.create_database().expect("a fresh test database");
        let config: Config = db.url().parse().expect("the server's connection string");
        let user = config.get_user().unwrap_or("postgres").to_owned();
        // The server trusts local connections and ignores it; an external
        // server's own password is used as given.
        let secret = config.get_password().map_or_else(
            || "sekrit-Qx7pw".to_owned(),
            |p| String::from_utf8_lossy(p).into_owned(),
        );
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = db.name().to_owned();
        let (url, host) = match config.get_hosts().first() {
            Some(Host::Unix(dir)) => (
                format!(
                    "postgres://{user}:{secret}@/{name}?host={}&port={port}",
                    dir.display()
                ),
                dir.display().to_string(),
            ),
            Some(Host::Tcp(host)) => (
                format!("postgres://{user}:{secret}@{host}:{port}/{name}"),
                host.clone(),
            ),
            None => panic!("the test server has no host"),
        };
        let key_values =
            format!("host={host} port={port} user={user} password={secret} dbname={name}");
        Some(Pg {
            db,
            url,
            key_values,
            secret,
        })
    }

    /// A connection of the test's own.
    fn client(&self) -> Client {
        Client::connect(self.db.url(), NoTls).expect("connect to the test database")
    }

    /// Whether schema `name` exists.
    fn has_schema(&self, name: &str) -> bool {
        self.client()
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&name])
            .expect("pg_namespace")
            .is_some()
    }

    /// Every relation named `leasehold…` in the database, in any schema.
    fn leasehold_relations(&self) -> Vec<String> {
        self.client()
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname LIKE 'leasehold%' ORDER BY 1",
                &[],
            )
            .expect("pg_class")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// `leasehold --db URL --schema SCHEMA`, to add arguments to.
    fn on(&self, schema: &str) -> Command {
        let mut cmd = bin();
        cmd.arg("--db").arg(&self.url).args(["--schema", schema]);
        cmd
    }

    /// Runs `leasehold --db URL --schema lh args…`, checking that its
    /// output does not show the password.
    fn lh(&self, args: &[&str]) -> Output {
        self.output(self.on(SCHEMA).args(args))
    }

    /// Runs `cmd`, checking that its output does not show the password.
    #[track_caller]
    fn output(&self, cmd: &mut Command) -> Output {
        let o = cmd.output().expect("run leasehold");
        self.no_secret(&o);
        o
    }

    #[track_caller]
    fn no_secret(&self, o: &Output) {
        for (what, text) in [("stdout", stdout(o)), ("stderr", stderr(o))] {
            assert!(
                !text.contains(&self.secret),
                "the password is in {what}: {text}"
            );
        }
    }
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.env_remove("LEASEHOLD_DB")
        .env_remove("LEASEHOLD_SCHEMA");
    cmd
}

/// `leasehold --db PATH` on a SQLite file.
fn sqlite(path: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--db")
        .arg(path)
        .args(args)
        .output()
        .expect("run leasehold")
}

#[test]
fn every_command_works_on_a_fresh_postgres_database() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let migrated = ok(&pg.lh(&["migrate"]));
    assert!(
        migrated.contains(&format!("schema version {PG_SCHEMA_VERSION}")),
        "{migrated}"
    );
    assert!(migrated.contains("(schema lh)"), "{migrated}");
    // The connection string is shown with its password hidden.
    assert!(migrated.contains(":***@"), "{migrated}");
    let j = json(&pg.lh(&["--json", "migrate"]));
    assert_eq!(
        (j["version"].as_u64(), j["schema"].as_str()),
        (Some(u64::from(PG_SCHEMA_VERSION)), Some(SCHEMA))
    );
    assert!(pg.has_schema(SCHEMA));

    let claimed = ok(&pg.lh(&["claim", "ops", "a", "h1", "--for", "1h"]));
    assert!(claimed.contains("epoch 1"), "{claimed}");
    let again = json(&pg.lh(&["--json", "claim", "ops", "a", "h1", "--for", "1h"]));
    assert_eq!(
        (again["epoch"].as_u64(), again["extended"].as_bool()),
        (Some(1), Some(true))
    );
    let err = fails(&pg.lh(&["claim", "ops", "a", "h2", "--for", "1h"]), 3);
    assert!(err.contains("h1"), "{err}");

    let list = ok(&pg.lh(&["list"]));
    assert!(list.contains("ops/a") && list.contains("h1"), "{list}");
    let listed = json(&pg.lh(&["--json", "list", "ops"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let shown = json(&pg.lh(&["--json", "show", "ops", "a"]));
    assert_eq!(
        (
            shown["holder"].as_str(),
            shown["epoch"].as_u64(),
            shown["held"].as_bool()
        ),
        (Some("h1"), Some(1), Some(true))
    );
    fails(&pg.lh(&["show", "ops", "never"]), 4);

    ok(&pg.lh(&["pin", "ops", "a", "--entity", "m0", "--reason", "upgrade"]));
    assert!(ok(&pg.lh(&["show", "ops", "a"])).contains("pinned:   by m0"));
    ok(&pg.lh(&["unpin", "ops", "a", "--entity", "m0"]));
    fails(&pg.lh(&["unpin", "ops", "a", "--entity", "m0"]), 4);

    fails(&pg.lh(&["release", "ops", "a", "h2"]), 4);
    assert!(ok(&pg.lh(&["release", "ops", "a", "h1"])).contains("released ops/a"));
    assert!(ok(&pg.lh(&["claim", "ops", "a", "h2", "--for", "1h"])).contains("epoch 2"));
    assert!(ok(&pg.lh(&["revoke", "ops", "a"])).contains("revoked ops/a from h2 (epoch 2)"));
    assert!(ok(&pg.lh(&["revoke", "ops", "a"])).contains("nothing to revoke"));
    assert!(ok(&pg.lh(&["list"])).contains("no held leases"));
    assert!(ok(&pg.lh(&["list", "--all"])).contains("ops/a"));

    let history = ok(&pg.lh(&["history", "ops", "a"]));
    let kinds: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        kinds,
        [
            "claimed", "pinned", "unpinned", "released", "claimed", "revoked"
        ],
        "{history}"
    );
    // The tables are where --schema put them, and nowhere else.
    let relations = pg.leasehold_relations();
    assert!(
        relations.iter().all(|r| r.starts_with("lh.")),
        "{relations:?}"
    );
    Ok(())
}

#[test]
fn migrate_print_sql_prints_postgres_scripts_for_the_schema() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let text = ok(&pg.output(pg.on("app").args(["migrate", "--print-sql"])));
    assert!(text.contains("(PostgreSQL, schema app)"), "{text}");
    assert!(text.contains("CREATE SCHEMA \"app\""), "{text}");
    assert!(text.contains("leasehold_schema"), "{text}");
    // Printing changes nothing.
    assert!(!pg.has_schema("app"));
    let j = json(&pg.output(pg.on("app").args(["--json", "migrate", "--print-sql"])));
    assert_eq!(j["schema"], "app");
    let scripts = j["migrations"].as_array().expect("migrations");
    assert_eq!(scripts.len(), pg_migrations().len());
    // SQLite's without a PostgreSQL --db.
    let sqlite_sql = ok(&bin().args(["migrate", "--print-sql"]).output()?);
    assert!(!sqlite_sql.contains("CREATE SCHEMA"), "{sqlite_sql}");
    let err = fails(
        &bin()
            .args(["--schema", "app", "migrate", "--print-sql"])
            .output()?,
        2,
    );
    assert!(err.contains("--schema is for PostgreSQL"), "{err}");

    // The scripts, applied by another tool, are what the engine expects.
    let mut client = pg.client();
    for script in scripts {
        let mut tx = client.transaction()?;
        tx.batch_execute(script["sql"].as_str().expect("sql"))?;
        tx.commit()?;
    }
    let never = fails(&pg.output(pg.on("app").args(["show", "ops", "a"])), 4);
    assert!(never.contains("never claimed"), "{never}");
    assert!(
        ok(&pg.output(
            pg.on("app")
                .args(["claim", "ops", "a", "h1", "--for", "1m"])
        ))
        .contains("epoch 1")
    );
    Ok(())
}

#[test]
fn reading_commands_on_an_unmigrated_database_create_nothing() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    for schema in [SCHEMA, "public"] {
        let run = |args: &[&str]| pg.output(pg.on(schema).args(args));
        // Nothing to list (and, as on SQLite, nothing said).
        assert_eq!(ok(&run(&["list"])), "");
        assert_eq!(json(&run(&["--json", "list"])), Value::Array(Vec::new()));
        for args in [
            &["show", "ops", "a"][..],
            &["history", "ops", "a"],
            &["export"],
            &["watch", "--duration", "1s"],
        ] {
            let err = fails(&run(args), 4);
            assert!(err.contains("no leasehold schema"), "{args:?}: {err}");
        }
        let err = fails(&run(&["--json", "show", "ops", "a"]), 4);
        let err: Value = serde_json::from_str(&err)?;
        assert_eq!(err["error"]["kind"], "no_schema");
    }
    assert!(
        !pg.has_schema(SCHEMA),
        "a reading command created the schema"
    );
    assert_eq!(pg.leasehold_relations(), Vec::<String>::new());
    Ok(())
}

#[test]
fn key_value_connection_strings_and_the_schema_option() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    // key=value through the environment, schema too.
    let claimed = pg.output(
        bin()
            .current_dir(dir.path())
            .env("LEASEHOLD_DB", &pg.key_values)
            .env("LEASEHOLD_SCHEMA", "kv")
            .args(["claim", "ops", "a", "h1", "--for", "1h"]),
    );
    assert!(ok(&claimed).contains("epoch 1"));
    // The flags say the same; the flag beats the environment.
    let shown = pg.output(
        bin()
            .current_dir(dir.path())
            .env("LEASEHOLD_SCHEMA", "elsewhere")
            .args([
                "--db",
                &pg.key_values,
                "--schema",
                "kv",
                "--json",
                "show",
                "ops",
                "a",
            ]),
    );
    assert_eq!(json(&shown)["holder"], "h1");
    // The URL form names the same database.
    assert_eq!(
        json(&pg.output(pg.on("kv").args(["--json", "show", "ops", "a"])))["holder"],
        "h1"
    );
    // Another schema is another set of leases.
    fails(&pg.output(pg.on("other").args(["show", "ops", "a"])), 4);
    // Nothing landed on disk.
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);

    // A mistyped key=value string is an error, not a new SQLite file.
    let typo = format!("{} dbnmae=x", pg.key_values);
    let err = fails(
        &pg.output(
            bin()
                .current_dir(dir.path())
                .args(["--db", &typo, "claim", "ops", "a", "h", "--for", "1m"]),
        ),
        5,
    );
    assert!(err.contains("connection string"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);

    // --schema with a SQLite file is a usage error, and creates nothing.
    let file = dir.path().join("app.db");
    let err = fails(
        &bin()
            .arg("--db")
            .arg(&file)
            .args(["--schema", "kv", "claim", "ops", "a", "h", "--for", "1m"])
            .output()?,
        2,
    );
    assert!(err.contains("--schema is for PostgreSQL"), "{err}");
    assert!(!file.exists());
    // $LEASEHOLD_SCHEMA is ignored with SQLite: one environment serves both.
    ok(&bin()
        .env("LEASEHOLD_SCHEMA", "kv")
        .arg("--db")
        .arg(&file)
        .args(["claim", "ops", "a", "h", "--for", "1m"])
        .output()?);
    // An existing file whose name looks like key=value is a SQLite file.
    ok(&bin()
        .current_dir(dir.path())
        .args([
            "--db",
            "./dbname=x",
            "claim",
            "ops",
            "f",
            "h",
            "--for",
            "1m",
        ])
        .output()?);
    let listed = ok(&bin()
        .current_dir(dir.path())
        .args(["--db", "dbname=x", "list"])
        .output()?);
    assert!(listed.contains("ops/f"), "{listed}");
    Ok(())
}

#[test]
fn errors_never_show_the_password() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let secret = &pg.secret;
    let missing_dir = "/nonexistent-leasehold-socket-dir";
    // Where a value taken for a SQLite path would land.
    let cwd = tempfile::tempdir()?;
    // Each string, and the exit codes of list, claim and demo on it.
    for (db, codes) in [
        // No server there.
        (
            format!("postgres://postgres:{secret}@/x?host={missing_dir}"),
            [7, 7, 7],
        ),
        (
            format!("host={missing_dir} user=postgres password={secret} dbname=x"),
            [7, 7, 7],
        ),
        (
            format!("host={missing_dir} password='{secret} quoted' dbname=x"),
            [7, 7, 7],
        ),
        // A database that does not exist, on a server that does.
        (pg.url.replace(pg.db.name(), "no_such_database"), [7, 7, 7]),
        // Strings that do not parse.
        (
            format!("postgres://postgres:{secret}@/x?bogus=1"),
            [5, 5, 5],
        ),
        (
            format!("host={missing_dir} password={secret} bogus=1"),
            [5, 5, 5],
        ),
        (
            format!("host={missing_dir} password='{secret} unterminated"),
            [5, 5, 5],
        ),
        // Misspelt: a scheme that is none of PostgreSQL's is refused; a
        // first keyword that is no libpq keyword makes a SQLite path, which
        // errors then name with the password hidden.
        (format!("postgress://postgres:{secret}@/x"), [5, 5, 5]),
        (
            format!("hots={missing_dir} password={secret} dbname=x"),
            [5, 7, 7],
        ),
    ] {
        for json_flag in [false, true] {
            let commands: [&[&str]; 3] = [
                &["list"],
                &["claim", "ops", "a", "h", "--for", "1m"],
                &["demo", "--short"],
            ];
            for (args, code) in commands.into_iter().zip(codes) {
                let mut cmd = bin();
                cmd.current_dir(cwd.path()).args(["--db", &db]);
                if json_flag {
                    cmd.arg("--json");
                }
                let err = fails(&pg.output(cmd.args(args)), code);
                assert!(!err.contains(secret.as_str()), "{db}: {err}");
            }
            // Through the environment too.
            let mut cmd = bin();
            cmd.current_dir(cwd.path())
                .env("LEASEHOLD_DB", &db)
                .arg("list");
            let err = fails(&pg.output(&mut cmd), codes[0]);
            assert!(!err.contains(secret.as_str()), "{db}: {err}");
        }
    }
    // Nothing was made of any of them.
    assert_eq!(std::fs::read_dir(cwd.path())?.count(), 0);
    Ok(())
}

#[test]
fn run_on_postgres_holds_the_lease_and_passes_the_database_on() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    // The command checks what it was given without printing it, and uses
    // it: leasehold, run by the command, sees the lease held.
    let script = format!(
        "test \"$LEASEHOLD_DB\" = '{}' || exit 90; test \"$LEASEHOLD_SCHEMA\" = {SCHEMA} || exit 91; \
         echo \"$LEASEHOLD_NAMESPACE $LEASEHOLD_NAME $LEASEHOLD_HOLDER $LEASEHOLD_EPOCH\"; \
         \"$LH\" --db \"$LEASEHOLD_DB\" --schema \"$LEASEHOLD_SCHEMA\" --json show ops job; exit 7",
        pg.url
    );
    let o = pg.output(
        pg.on(SCHEMA)
            .env("LH", env!("CARGO_BIN_EXE_leasehold"))
            .args(["run", "ops", "job", "h1", "--", "sh", "-c", &script]),
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ops job h1 1"), "{out}");
    let seen: Value = serde_json::from_str(lines.next().unwrap_or(""))?;
    assert_eq!(
        (
            seen["holder"].as_str(),
            seen["held"].as_bool(),
            seen["epoch"].as_u64()
        ),
        (Some("h1"), Some(true), Some(1))
    );
    assert!(
        stderr(&o).contains("holding ops/job as h1 (epoch 1)"),
        "{}",
        stderr(&o)
    );
    // Given back when the command ended.
    assert!(ok(&pg.lh(&["list"])).contains("no held leases"));
    // A tenure of its own or none: denied while another holds it.
    ok(&pg.lh(&["claim", "ops", "job", "other", "--for", "1h"]));
    let err = fails(&pg.lh(&["run", "ops", "job", "h1", "--", "true"]), 3);
    assert!(err.contains("held by other"), "{err}");
    Ok(())
}

#[test]
fn run_on_postgres_exits_4_when_the_lease_is_revoked_while_it_runs() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("started");
    let script = format!("touch {}; exec sleep 60", marker.display());
    let child = pg
        .on(SCHEMA)
        .args([
            "run", "ops", "m", "h1", "--grace", "5s", "--", "sh", "-c", &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    support::wait_for_file(&marker, Duration::from_secs(30));
    let began = Instant::now();
    ok(&pg.lh(&["revoke", "ops", "m"]));
    let out = child.wait_with_output()?;
    pg.no_secret(&out);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("lost ops/m"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it was stopped by SIGTERM"),
        "{}",
        stderr(&out)
    );
    // Noticed at once (the revoke is pushed), not when the lease ran out.
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    // It did not take the revoked lease back.
    let history = ok(&pg.lh(&["history", "ops", "m"]));
    assert_eq!(history.matches("claimed").count(), 1, "{history}");
    Ok(())
}

/// The epoch and holder a `show --json` printed.
fn lease_of(o: &Output) -> (Option<u64>, Option<String>) {
    let j = json(o);
    (j["epoch"].as_u64(), j["holder"].as_str().map(str::to_owned))
}

#[test]
fn export_from_sqlite_import_into_postgres_and_back_never_lowers_epochs() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let src = TempDb::new();
    let s = &src.path;
    ok(&sqlite(s, &["claim", "ops", "a", "h1", "--for", "1h"]));
    ok(&sqlite(s, &["claim", "ops", "b", "h2", "--for", "1h"]));
    ok(&sqlite(s, &["release", "ops", "b", "h2"]));
    ok(&sqlite(s, &["claim", "ops", "b", "h3", "--for", "1h"]));
    ok(&sqlite(s, &["revoke", "ops", "b"]));
    ok(&sqlite(
        s,
        &["pin", "ops", "a", "--entity", "m0", "--reason", "upgrade"],
    ));
    let first = src.dir.path().join("first.jsonl");
    ok(&sqlite(s, &["export", "-o", first.to_str().expect("utf8")]));

    // SQLite → PostgreSQL.
    let msg = ok(&pg.lh(&["import", first.to_str().expect("utf8"), "--window", "2m"]));
    assert!(
        msg.contains("1 held lease, 1 vacant key and 1 pin"),
        "{msg}"
    );
    assert_eq!(
        lease_of(&pg.lh(&["--json", "show", "ops", "a"])),
        (Some(1), Some("h1".into()))
    );
    assert_eq!(
        lease_of(&pg.lh(&["--json", "show", "ops", "b"])),
        (Some(2), None)
    );
    assert_eq!(
        json(&pg.lh(&["--json", "show", "ops", "a"]))["pins"][0]["entity"],
        "m0"
    );
    // Epochs go on from the imported ones.
    assert!(ok(&pg.lh(&["claim", "ops", "b", "h4", "--for", "1h"])).contains("epoch 3"));
    // The older export would lower b's epoch: refused whole.
    let err = fails(&pg.lh(&["import", first.to_str().expect("utf8")]), 5);
    assert!(err.contains("field epoch"), "{err}");
    assert_eq!(
        lease_of(&pg.lh(&["--json", "show", "ops", "b"])),
        (Some(3), Some("h4".into()))
    );

    // PostgreSQL → a file (written whole) → SQLite, the original and a
    // fresh one.
    let second = src.dir.path().join("second.jsonl");
    ok(&pg.lh(&["export", "-o", second.to_str().expect("utf8")]));
    let dump = std::fs::read_to_string(&second)?;
    assert_eq!(dump.lines().count(), 5, "{dump}");
    assert!(!dump.contains(&pg.secret));
    ok(&sqlite(s, &["import", second.to_str().expect("utf8")]));
    assert_eq!(
        lease_of(&sqlite(s, &["--json", "show", "ops", "b"])),
        (Some(3), Some("h4".into()))
    );
    assert_eq!(
        lease_of(&sqlite(s, &["--json", "show", "ops", "a"])),
        (Some(1), Some("h1".into()))
    );
    let fresh = TempDb::new();
    ok(&sqlite(
        &fresh.path,
        &["import", second.to_str().expect("utf8")],
    ));
    assert_eq!(
        lease_of(&sqlite(&fresh.path, &["--json", "show", "ops", "b"])),
        (Some(3), Some("h4".into()))
    );
    assert!(ok(&sqlite(&fresh.path, &["revoke", "ops", "b"])).contains("epoch 3"));
    assert!(
        ok(&sqlite(
            &fresh.path,
            &["claim", "ops", "b", "h5", "--for", "1m"]
        ))
        .contains("epoch 4")
    );
    // And back into PostgreSQL once more: b moves on to 4, never back.
    let third = src.dir.path().join("third.jsonl");
    std::fs::write(&third, ok(&sqlite(&fresh.path, &["export"])))?;
    ok(&pg.lh(&["revoke", "ops", "b"]));
    ok(&pg.lh(&["import", third.to_str().expect("utf8")]));
    assert_eq!(
        lease_of(&pg.lh(&["--json", "show", "ops", "b"])),
        (Some(4), Some("h5".into()))
    );
    Ok(())
}

#[test]
fn watch_on_postgres_prints_claims_made_by_other_processes() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    ok(&pg.lh(&["migrate"]));
    let mut watcher = pg
        .on(SCHEMA)
        .args(["watch", "ops", "--duration", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(watcher.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    assert!(line.starts_with("watching ops"), "{line}");
    ok(&pg.lh(&["claim", "ops", "w", "h1", "--for", "1h"]));
    ok(&pg.lh(&["claim", "other", "w", "h1", "--for", "1h"]));
    ok(&pg.lh(&["release", "ops", "w", "h1"]));
    ok(&pg.lh(&["claim", "ops", "w", "h2", "--for", "300ms"]));
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        line.clear();
        assert!(
            out.read_line(&mut line)? > 0,
            "watch ended early: {kinds:?}"
        );
        // "<time>  ops/w  <kind>  <holder>  epoch <n>"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(1), Some(&"ops/w"), "{line}");
        kinds.push(format!("{} {} {}", words[2], words[3], words[5]));
    }
    assert_eq!(
        kinds,
        [
            "claimed h1 1",
            "released h1 1",
            "claimed h2 2",
            "lapsed h2 2"
        ]
    );
    watcher.kill()?;
    let rest = watcher.wait_with_output()?;
    pg.no_secret(&rest);
    Ok(())
}

/// The lines of a demo's report from "checks, from the database:" on.
fn verdict_lines(report: &str) -> Vec<String> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("checks, from the database:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_demo_on_postgres_passes_with_the_same_verdict() -> R {
    let Some(pg) = Pg::new() else { return Ok(()) };
    let on_pg = pg.output(pg.on("demo").args(["demo", "--short", "--workers", "3"]));
    let report = ok(&on_pg);
    let first = report.lines().next().unwrap_or("");
    assert!(
        first.contains("(schema demo)") && first.contains(":***@"),
        "{first}"
    );
    let on_sqlite = bin().args(["demo", "--short", "--workers", "3"]).output()?;
    let expected = verdict_lines(&ok(&on_sqlite));
    assert!(
        expected
            .last()
            .is_some_and(|l| l.starts_with("verdict: PASS")),
        "{expected:?}"
    );
    assert_eq!(verdict_lines(&report), expected, "{report}");
    assert!(
        report.contains("write REFUSED"),
        "the paused leader was refused: {report}"
    );
    // On PostgreSQL a third fault: a leader's link is cut past its lease,
    // and once healed that leader's next write is refused.
    let timeline: Vec<&str> = report.lines().collect();
    let cut = timeline
        .iter()
        .position(|l| l.contains("link CUT"))
        .unwrap_or_else(|| panic!("no cut: {report}"));
    let who = timeline[cut].split_whitespace().nth(1).unwrap_or("");
    let healed = timeline
        .iter()
        .position(|l| l.contains(who) && l.contains("link healed"))
        .unwrap_or_else(|| panic!("{who} was not healed: {report}"));
    assert!(healed > cut, "{report}");
    assert!(
        timeline[healed..]
            .iter()
            .any(|l| l.contains(who) && l.contains("write REFUSED")),
        "the healed leader {who} was refused: {report}"
    );
    assert!(
        timeline[cut..healed]
            .iter()
            .any(|l| l.contains("leads") && !l.contains(who)),
        "another took over during the cut: {report}"
    );

    // Its table is in the schema; its rows follow commit order.
    let rows: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM demo.demo_writes", &[])?
        .get(0);
    assert!(rows > 0);
    // Again on the same schema: refused, nothing changed.
    let err = fails(&pg.output(pg.on("demo").args(["demo", "--short"])), 5);
    assert!(err.contains("demo_writes"), "{err}");
    let after: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM demo.demo_writes", &[])?
        .get(0);
    assert_eq!(after, rows);
    // A schema whose demo lease is held: refused before anything is made.
    ok(&pg.output(pg.on("held").args([
        "claim",
        "application-leadership",
        "demo-app",
        "x",
        "--for",
        "1h",
    ])));
    let err = fails(&pg.output(pg.on("held").args(["demo", "--short"])), 5);
    assert!(err.contains("held by x"), "{err}");
    assert!(!pg.leasehold_relations().is_empty());
    let demo_tables: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'held' AND tablename = 'demo_writes'",
            &[],
        )?
        .get(0);
    assert_eq!(demo_tables, 0);

    // JSON lines and the picture, on a fresh schema.
    let dir = tempfile::tempdir()?;
    let svg = dir.path().join("timeline.svg");
    let lines = ok(&pg.output(
        pg.on("demo_json")
            .args(["--json", "demo", "--short", "--workers", "3", "--svg"])
            .arg(&svg),
    ));
    let mut moments: Vec<Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let verdict = moments.pop().unwrap_or_default();
    assert_eq!(
        (verdict["kind"].as_str(), verdict["pass"].as_bool()),
        (Some("verdict"), Some(true)),
        "{verdict}"
    );
    assert!(
        verdict["epochs"].as_u64().is_some_and(|e| e >= 4),
        "kill, pause and cut each hand over: {verdict}"
    );
    assert!(verdict["network_cut_skipped"].is_null(), "{verdict}");
    let kind = |m: &Value| m["kind"].as_str().unwrap_or("").to_owned();
    let cut = moments
        .iter()
        .position(|m| kind(m) == "cut")
        .unwrap_or_else(|| panic!("no cut: {lines}"));
    let who = &moments[cut]["worker"];
    assert_eq!(moments[cut]["fault"], "network", "{lines}");
    assert!(
        moments[cut]["for_ms"].as_u64().is_some_and(|ms| ms >= 900),
        "longer than three leases: {lines}"
    );
    let healed = moments
        .iter()
        .position(|m| kind(m) == "healed" && m["worker"] == *who)
        .unwrap_or_else(|| panic!("{who} was not healed: {lines}"));
    assert!(
        moments[healed..]
            .iter()
            .any(|m| kind(m) == "refused" && m["worker"] == *who),
        "the healed leader {who} was refused: {lines}"
    );
    let picture = std::fs::read_to_string(&svg)?;
    assert!(
        picture.contains("link cut … healed") && picture.contains("SIGSTOP"),
        "{picture}"
    );

    // A connection string the demo cannot sit in (two servers): the cut is
    // skipped, and the demo says why.
    let config: Config = pg.db.url().parse()?;
    let host = match config.get_hosts().first() {
        Some(Host::Unix(dir)) => dir.display().to_string(),
        Some(Host::Tcp(host)) => host.clone(),
        None => panic!("the test server has no host"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let two = format!(
        "host={host},{host} port={port},{port} user={} password={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        pg.secret,
        pg.db.name()
    );
    let report = ok(
        &pg.output(bin().args(["--db", &two, "--schema", "demo_two"]).args([
            "demo",
            "--short",
            "--workers",
            "3",
        ])),
    );
    assert!(
        report.contains("the network cut is skipped")
            && report.contains("several servers")
            && !report.contains("link CUT")
            && report.contains("verdict: PASS"),
        "{report}"
    );
    Ok(())
}

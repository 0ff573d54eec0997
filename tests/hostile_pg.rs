//! A careless, then hostile, user of the PostgreSQL backend: one test per
//! defect such a user met, each saying what they saw.
//!
//! Every test runs on a database of its own on the shared throwaway server
//! ([`PgServer::shared`]); without a server they return at once (the server
//! prints a loud skip line; `LEASEHOLD_REQUIRE_PG` turns that into a panic).
//! Nothing here waits on timing: every step is a call that returns.
#![cfg(feature = "postgres")]

use std::time::Duration;

use leasehold::postgres::client::{Client, NoTls};
use leasehold::postgres::{PgEngine, PgInTxn};
use leasehold::testing::{PgDatabase, PgOptions, PgServer};
use leasehold::{Error, ExportedLease, Key, Snapshot};

type R = Result<(), Box<dyn std::error::Error>>;

/// A fresh, empty database on the shared test server, or `None` without a
/// server.
fn fresh_database() -> Option<PgDatabase> {
    let server = PgServer::shared()?;
    Some(server.create_database().expect("a fresh test database"))
}

fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).expect("connect to the test database")
}

fn schema_exists(client: &mut Client, schema: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .expect("read the catalog")
        .get(0)
}

fn key(name: &str) -> Key {
    Key::new("hostile", name).expect("a valid key")
}

const LEASE: Duration = Duration::from_secs(30);

/// A DBA set `statement_timeout = 1ms` (or put it in the connection
/// string's `options`, as pgbouncer users do) to catch runaway queries.
/// Opening a fresh database then failed with "migrate: database still
/// locked after 5s" — immediately, with nothing locked: the role's timeout
/// cancelled the migration, and the engine reported it as a lock it had
/// waited on for its whole busy timeout. The engine's own transactions set
/// their deadlines; opening did not.
#[test]
fn a_tiny_statement_timeout_on_the_session_does_not_break_opening() -> R {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let url = format!(
        "{} options='-c statement_timeout=1 -c lock_timeout=1 -c idle_in_transaction_session_timeout=1'",
        db.url()
    );
    let engine = PgEngine::builder(&url).schema("tiny").build()?;
    let tenure = engine.claim(&key("a"), "h1", LEASE)?;
    assert_eq!(tenure.epoch(), 1);
    drop(engine);
    // A second open verifies the schema under the same settings, and a
    // read-only one too.
    let engine = PgEngine::builder(&url).schema("tiny").build()?;
    assert_eq!(engine.lease(&key("a"))?.map(|l| l.epoch()), Some(1));
    let reader = PgEngine::builder(&url)
        .schema("tiny")
        .read_only(true)
        .build()?;
    assert_eq!(reader.lease(&key("a"))?.map(|l| l.epoch()), Some(1));
    Ok(())
}

/// `LEASEHOLD_SCHEMA="leases "` (a stray space from a shell script) was
/// accepted, and created a schema named `leases ` beside `leases`: the
/// processes with the space claimed leadership in tables the others never
/// looked at, so both sides led. Key names refuse surrounding whitespace
/// and control characters; schema names did not, and a NUL got a storage
/// error ("invalid byte sequence") instead of a refusal.
#[test]
fn schema_names_with_control_characters_or_surrounding_whitespace_are_refused() -> R {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    for schema in [
        "leases ",
        " leases",
        "lea\nses",
        "lea\tses",
        "a\0b",
        "\u{200B}leases",
    ] {
        match PgEngine::builder(db.url()).schema(schema).build() {
            Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "schema", "{schema:?}"),
            Err(other) => panic!("{schema:?}: expected InvalidArgument, got {other:?}"),
            Ok(_) => panic!("{schema:?}: accepted"),
        }
    }
    let mut client = connect(db.url());
    let created: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%leases%' OR nspname LIKE 'lea%'",
            &[],
        )?
        .get(0);
    assert_eq!(created, 0, "a refused schema name was created");
    // Names PostgreSQL needs quoted, or reserves as words, still work.
    for schema in ["select", "My Leases", "we\"ird", "a.b"] {
        let engine = PgEngine::builder(db.url()).schema(schema).build()?;
        engine.claim(&key("q"), "h1", LEASE)?;
        assert!(schema_exists(&mut client, schema), "{schema:?}");
    }
    Ok(())
}

/// `leasehold --db app.db export | leasehold --db postgres://… import -`
/// of twenty thousand keys failed after half a minute with "import: db
/// error: ERROR: out of shared memory HINT: You might need to increase
/// max_locks_per_transaction", on a server with default settings: every
/// key of the import took an advisory lock (its turn) held until the
/// import's one transaction ended, and the server's lock table holds a few
/// thousand. A key's first row, inserted by the transaction itself, needs
/// no turn: nobody else can see it before the commit.
///
/// The test's server has a lock table of a few hundred entries (rather
/// than tens of thousands) so that a few thousand keys overflow it.
#[test]
fn an_import_of_more_new_keys_than_the_servers_lock_table_holds_succeeds() -> R {
    let Some(server) = PgServer::start_or_skip(PgOptions {
        settings: vec![
            ("max_connections".into(), "20".into()),
            ("max_locks_per_transaction".into(), "10".into()),
        ],
        ..PgOptions::default()
    }) else {
        return Ok(());
    };
    let mut client = connect(&server.url());
    let slots: i64 = client
        .query_one(
            "SELECT current_setting('max_locks_per_transaction')::int8
                    * (current_setting('max_connections')::int8 + 64)",
            &[],
        )?
        .get(0);
    let engine = PgEngine::builder(&server.url())
        .schema("imported")
        .busy_timeout(Duration::from_secs(60))
        .build()?;
    // Well past the lock table, however its spare room is counted.
    let keys = usize::try_from(slots * 4)?;
    let snapshot = Snapshot {
        taken_at: leasehold::chrono::Utc::now(),
        leases: (0..keys)
            .map(|i| ExportedLease {
                key: key(&format!("k{i}")),
                holder: (i % 2 == 0).then(|| format!("h{i}")),
                epoch: 3,
                remaining: None,
            })
            .collect(),
        pins: Vec::new(),
    };
    let summary = engine.import(&snapshot, LEASE)?;
    assert_eq!(summary.tenures + summary.vacant, keys);
    let lease = engine.lease(&key("k0"))?.expect("an imported lease");
    assert_eq!((lease.holder(), lease.epoch()), (Some("h0"), 3));
    // The epochs came over: the next tenure of a vacant key is the fourth.
    assert_eq!(engine.claim(&key("k1"), "new", LEASE)?.epoch(), 4);
    Ok(())
}

/// `engine.in_txn(&mut tx)` on a transaction of another database (two
/// services' databases, both with leasehold in `public`) claimed the lease
/// *there* and returned a tenure, while the engine's own database never
/// saw the claim: the caller believed they led, and the other database's
/// users were denied a lease nobody there held. Its doc said "the
/// signature leaves room for a check of the transaction's database"; the
/// tokens' guards already refused such a transaction.
#[test]
fn lease_operations_in_another_databases_transaction_are_refused() -> R {
    let (Some(db1), Some(db2), Some(bare)) = (fresh_database(), fresh_database(), fresh_database())
    else {
        return Ok(());
    };
    let engine1 = PgEngine::connect(db1.url())?;
    let engine2 = PgEngine::connect(db2.url())?;
    let k = key("twin");
    for (db, what) in [
        (&db2, "a twin database"),
        (&bare, "a database without leasehold"),
    ] {
        let mut client = connect(db.url());
        let mut tx = client.transaction()?;
        let claimed = engine1
            .in_txn(&mut tx)
            .and_then(|mut ops: PgInTxn<'_, '_>| ops.claim(&k, "h1", LEASE));
        match claimed {
            Err(Error::InvalidArgument { what: arg, .. }) => assert_eq!(arg, "transaction"),
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
        tx.rollback()?;
    }
    assert!(engine2.lease(&k)?.is_none(), "claimed in the twin database");
    assert!(engine1.lease(&k)?.is_none());
    // On its own database it works.
    let mut client = engine1.client()?;
    let mut tx = client.transaction()?;
    let tenure = engine1.in_txn(&mut tx)?.claim(&k, "h1", LEASE)?;
    tx.commit()?;
    assert_eq!(engine1.lease(&k)?.map(|l| l.epoch()), Some(tenure.epoch()));
    Ok(())
}

/// The least-privilege setup a DBA makes: the schema created by an admin,
/// the application's role granted USAGE and CREATE on it and nothing on
/// the database. Opening it failed with "migrate: db error: ERROR:
/// permission denied for database …": the migration runs `CREATE SCHEMA
/// IF NOT EXISTS`, and PostgreSQL checks the database's CREATE privilege
/// before it looks whether the schema exists. (A role with no CREATE
/// anywhere, on a fresh database, gets that same typed storage error and
/// changes nothing, which is right.)
#[test]
fn a_role_with_create_on_its_schema_only_can_migrate_it() -> R {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let role = format!("lh_app_{}", std::process::id());
    let mut admin = connect(db.url());
    admin.batch_execute(&format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN;
             END IF;
         END $$;
         REVOKE CREATE ON DATABASE {db} FROM PUBLIC;
         CREATE SCHEMA app;
         GRANT USAGE, CREATE ON SCHEMA app TO {role};",
        db = db.name()
    ))?;
    let url = format!("{} user={role}", db.url());
    // Without any CREATE: a typed error, nothing created.
    match PgEngine::builder(&url).schema("elsewhere").build() {
        Err(e @ Error::Storage { .. }) => {
            assert!(e.to_string().contains("permission denied"), "{e}")
        }
        other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
    }
    assert!(!schema_exists(&mut admin, "elsewhere"));
    // With CREATE on its schema: it migrates there.
    let engine = PgEngine::builder(&url).schema("app").build()?;
    assert_eq!(engine.claim(&key("m"), "h1", LEASE)?.epoch(), 1);
    Ok(())
}

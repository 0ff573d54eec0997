//! An application's table beside leasehold's, for the guard tests that
//! write through `GuardSql` as other SQL clients would.

use leasehold::postgres::PgEngine;
use leasehold::postgres::client::{Client, NoTls};
use leasehold::rusqlite::Connection;
use leasehold::testing::{PgDatabase, PgServer};
use leasehold::{Engine, Key};

use super::TempDb;

pub fn key(ns: &str, name: &str) -> Key {
    Key::new(ns, name).expect("key")
}

/// A SQLite database with an application table `app (v)` beside leasehold's.
pub fn sqlite_db() -> Result<(TempDb, Engine, Connection), Box<dyn std::error::Error>> {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    let conn = Connection::open(&db.path)?;
    conn.execute_batch("CREATE TABLE app (v TEXT)")?;
    Ok((db, engine, conn))
}

/// The rows of `app`, in the order they were written.
pub fn app_rows(conn: &Connection) -> Vec<String> {
    let mut st = conn
        .prepare("SELECT v FROM app ORDER BY rowid")
        .expect("app");
    st.query_map([], |r| r.get(0))
        .expect("app rows")
        .collect::<Result<_, _>>()
        .expect("app rows")
}

/// A fresh PostgreSQL database with leasehold in schema `lh` and the
/// application's `app (v)` in `public`; `None` without a server.
pub fn pg_db() -> Option<(PgDatabase, PgEngine, Client)> {
    let server = PgServer::shared()?;
    let db = server.create_database().expect("a test database");
    let engine = PgEngine::builder(db.url())
        .schema("lh")
        .build()
        .expect("engine");
    let mut client = Client::connect(db.url(), NoTls).expect("connect");
    client
        .batch_execute("CREATE TABLE public.app (v text)")
        .expect("app table");
    Some((db, engine, client))
}

/// The rows of `public.app`, sorted.
pub fn pg_rows(client: &mut Client) -> Vec<String> {
    client
        .query("SELECT v FROM public.app ORDER BY v", &[])
        .expect("app")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

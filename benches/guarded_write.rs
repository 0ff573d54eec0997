//! A guarded write through each guard style, next to the same write in a
//! bare SQLite transaction measured in the same run.
//!
//! Every case updates one row of a one-row table in a `BEGIN IMMEDIATE`
//! transaction on a WAL file with synchronous=NORMAL.

#![allow(missing_docs)] // criterion_group! generates undocumented public items

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use leasehold::rusqlite::{Connection, TransactionBehavior, params_from_iter};
use leasehold::{Engine, Key, Txn};

const UPDATE: &str = "UPDATE items SET v = v + 1 WHERE id = 1";

fn setup(conn: &Connection) {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT OR IGNORE INTO items VALUES (1, 0);",
    )
    .expect("setup");
}

fn bare_connection(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    setup(&conn);
    conn
}

fn guarded_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = bare_connection(&dir.path().join("bare.db"));
    let engine = Engine::open(dir.path().join("leasehold.db")).expect("engine");
    let mut conn = engine.connection().expect("conn");
    setup(&conn);
    let key = Key::new("bench", "writer").expect("key");
    let token = engine
        .claim(&key, "me", Duration::from_secs(3600))
        .expect("claim")
        .token();

    let mut group = c.benchmark_group("guarded_write");
    group.bench_function("bare transaction", |b| {
        b.iter(|| {
            bare.prepare_cached("BEGIN IMMEDIATE")
                .unwrap()
                .execute([])
                .unwrap();
            bare.prepare_cached(UPDATE).unwrap().execute([]).unwrap();
            bare.prepare_cached("COMMIT").unwrap().execute([]).unwrap();
        })
    });
    let mut txn = Txn::new();
    token.add_to(&mut txn);
    txn.execute(UPDATE, ());
    group.bench_function("Txn builder", |b| b.iter(|| engine.commit(&txn).unwrap()));
    group.bench_function("check_in caller's transaction", |b| {
        b.iter(|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            token.check_in(&tx).unwrap();
            tx.prepare_cached(UPDATE).unwrap().execute([]).unwrap();
            tx.commit().unwrap();
        })
    });
    let guarded = format!("{UPDATE} AND {}", token.guard().sql());
    group.bench_function("SQL guard fragment", |b| {
        b.iter(|| {
            conn.prepare_cached("BEGIN IMMEDIATE")
                .unwrap()
                .execute([])
                .unwrap();
            let guard = token.guard();
            let n = conn
                .prepare_cached(&guarded)
                .unwrap()
                .execute(params_from_iter(guard.params()))
                .unwrap();
            assert_eq!(n, 1);
            conn.prepare_cached("COMMIT").unwrap().execute([]).unwrap();
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = guarded_write
}
criterion_main!(benches);

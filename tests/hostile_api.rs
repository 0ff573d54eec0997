//! The public API used as a careless or hostile user would: SQLite's side
//! files deleted under a live engine, a database path that is not a
//! regular file, read-only engines asked to write, tokens taken to another
//! database, the memory backend shared across threads.
//!
//! Each test here was written against a problem found in review, first
//! showing it, then kept as its regression test once fixed.

mod support;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use leasehold::memory::{MemoryDatabase, MemoryEngine};
use leasehold::{Engine, Error, ManualClock, Txn};
use support::{TempDb, key, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// `path` with `suffix` appended to its file name (`x.db` → `x.db-wal`).
fn side(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Polls `done` every millisecond for at most `limit` (a bound against a
/// hang, not a speed requirement); whether it came true.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A careless `rm app.db-*` while an engine holds a lease in the file.
/// SQLite keeps the engine's commits in the `-wal` it still has open, which
/// nobody else sees any more: another process opening the file reads the
/// main file alone, finds the key vacant and begins a tenure with the same
/// epoch. The engine used to check only that its *main* file was still the
/// file, so both holders' guarded writes committed — two leaders, each in
/// its own copy of the database. Its `-wal` and `-shm` deleted or replaced
/// now count as the database replaced (`Error::DatabaseReplaced`).
#[test]
fn deleting_the_wal_and_shm_under_a_live_engine_ends_its_tenures() -> R {
    let db = TempDb::new();
    let first = Engine::open(&db.path)?;
    first
        .connection()?
        .execute_batch("CREATE TABLE work (who TEXT)")?;
    let tenure = first.claim(&key("job"), "first", secs(3600))?;
    assert_eq!(tenure.epoch(), 1);
    for file in ["-wal", "-shm"] {
        std::fs::remove_file(side(&db.path, file))?;
    }

    // Another process opens the file and claims the key.
    let rival = std::process::Command::new(std::env::current_exe()?)
        .args([
            "second_claimer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LEASEHOLD_ROLE", "second-claimer")
        .env("LEASEHOLD_TEST_DB", &db.path)
        .output()?;
    let rival = String::from_utf8_lossy(&rival.stdout)
        .lines()
        .find_map(|l| l.split_once("@claim ").map(|(_, said)| said.to_owned()))
        .unwrap_or_else(|| "no answer".into());

    // Whatever the second engine was told, the first engine's tenure must
    // not go on writing as if nothing happened: within a few seconds its
    // guarded writes fail (the file it writes is no longer the one others
    // use).
    let token = tenure.token();
    let first_stopped = eventually(Duration::from_secs(5), || {
        let mut txn = Txn::new();
        token.add_to(&mut txn);
        txn.execute("INSERT INTO work VALUES ('first')", [] as [i64; 0]);
        first.commit(&txn).is_err()
    });
    assert!(
        first_stopped,
        "the first engine's guarded writes still commit after its -wal and -shm were deleted; \
         meanwhile another process's claim of the key returned {rival}"
    );
    let err = first.claim(&key("other"), "first", secs(60)).unwrap_err();
    assert!(matches!(err, Error::DatabaseReplaced { .. }), "{err:?}");
    Ok(())
}

/// The other process of the test above: claims the key, says how it went.
#[test]
fn second_claimer() {
    if support::role().as_deref() != Some("second-claimer") {
        return;
    }
    let db = std::env::var("LEASEHOLD_TEST_DB").expect("db");
    let outcome = Engine::open(&db).and_then(|e| e.claim(&key("job"), "second", secs(3600)));
    match outcome {
        Ok(t) => println!("@claim granted to {} in epoch {}", t.holder(), t.epoch()),
        Err(e) => println!("@claim failed: {e}"),
    }
}

/// The side files deleted with no other process coming: the engine still
/// notices (its commits would be invisible to any process opening the file
/// later), and its trackers step down.
#[test]
fn deleting_the_wal_under_a_tracker_ends_its_tenure() -> R {
    let db = TempDb::new();
    let engine = Engine::open(&db.path)?;
    let tracker = engine
        .tracker(&key("a"), "h1")
        .guarantee(secs(60))
        .build()?;
    assert_eq!(tracker.wait_leader().wait_timeout(secs(10)), Some(true));
    let lost = tracker.wait_minion();
    std::fs::remove_file(side(&db.path, "-wal"))?;
    // Noticed within a second or so; generous bound for a loaded machine.
    assert_eq!(lost.wait_timeout(secs(20)), Some(true), "stepped down");
    let err = engine.claim(&key("b"), "h1", secs(60)).unwrap_err();
    assert!(matches!(err, Error::DatabaseReplaced { .. }), "{err:?}");
    Ok(())
}

/// What SQLite itself does to the side files under a live engine is not a
/// replacement: its pool having no connection open (it keeps none idle: at
/// first, and once its reaper closed them), other processes opening and
/// closing the file (the last connection to close deletes the `-wal` and
/// `-shm`), checkpoints that truncate the `-wal`, the application's own
/// connections.
#[test]
fn sqlite_s_own_handling_of_the_side_files_is_not_a_replacement() -> R {
    let db = TempDb::new();
    Engine::open(&db.path)?.claim(&key("b"), "h2", secs(600))?;
    let engine = Engine::builder(&db.path)
        .pool_size(1)
        .wal_size_limit(0)
        .build()?;
    // Links to the side files as they are now keep their inodes from being
    // reused: a file deleted and created again is seen to be another.
    for suffix in ["-wal", "-shm"] {
        std::fs::hard_link(
            side(&db.path, suffix),
            side(&db.path, &format!("{suffix}.seen")),
        )?;
    }
    // The engine has no pooled connection open yet: another process's
    // connections open and close the file.
    for _ in 0..3 {
        let conn = leasehold::rusqlite::Connection::open(&db.path)?;
        conn.query_row("SELECT count(*) FROM leasehold_leases", [], |_| Ok(()))?;
        drop(conn);
        let other = Engine::open(&db.path)?;
        other.claim(&key("c"), "h3", secs(600))?;
        drop(other);
    }
    engine.claim(&key("a"), "h1", secs(600))?;
    {
        // The application's own connection: checkpoints, truncating.
        let conn = engine.connection()?;
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        conn.execute_batch("PRAGMA journal_size_limit = 0; INSERT INTO t VALUES (2);")?;
    }
    // Past the once-a-second check.
    std::thread::sleep(Duration::from_millis(1100));
    engine.claim(&key("a"), "h1", secs(600))?;
    engine.release(&key("a"), "h1")?;
    assert!(engine.lease(&key("b"))?.is_some_and(|l| l.is_held()));
    use std::os::unix::fs::MetadataExt;
    for suffix in ["-wal", "-shm"] {
        let now = std::fs::metadata(side(&db.path, suffix))?.ino();
        let seen = std::fs::metadata(side(&db.path, &format!("{suffix}.seen")))?.ino();
        assert_eq!(now, seen, "{suffix} was deleted and created again");
    }
    Ok(())
}

/// `Engine::builder(fifo).read_only(true).build()`: SQLite would open the
/// FIFO for reading, which blocks until some process opens it for writing
/// (and a read-write open failed as a storage error, "disk I/O error").
/// A database path that is not a regular file is refused as a directory
/// is, naming what it is, before SQLite sees it.
#[test]
fn a_fifo_as_the_database_is_refused_not_waited_on() -> R {
    let db = TempDb::new();
    let fifo = db.dir.path().join("pipe.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let (tx, rx) = mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let outcome = Engine::builder(&path).read_only(true).build().map(drop);
        let _ = tx.send(outcome);
    });
    let outcome = rx.recv_timeout(Duration::from_secs(10));
    if outcome.is_err() {
        // Unblock the opener (it reads an empty file) before failing.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo);
    }
    let outcome = outcome.map_err(|_| "opening a FIFO read-only did not return in 10 s")?;
    assert!(
        matches!(&outcome, Err(Error::InvalidArgument { reason, .. }) if reason.contains("FIFO")),
        "{outcome:?}"
    );
    let rw = Engine::open(&fifo).map(drop);
    assert!(matches!(rw, Err(Error::InvalidArgument { .. })), "{rw:?}");
    Ok(())
}

/// A character device as the database (`LEASEHOLD_DB=/dev/null`): SQLite
/// would fail on it as a storage error ("disk I/O error") after leaving
/// its rollback journal beside the device (`/dev/null-journal`); it is
/// refused as invalid input before SQLite opens it. Needs root (mknod);
/// skipped otherwise.
#[test]
fn a_device_as_the_database_is_refused_and_leaves_nothing_beside_it() -> R {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let db = TempDb::new();
    let dev = db.dir.path().join("null.db");
    if mknod(
        &dev,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .is_err()
    {
        eprintln!("skipped: mknod needs root");
        return Ok(());
    }
    let outcome = Engine::open(&dev).map(drop);
    let beside: Vec<String> = std::fs::read_dir(db.dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(beside, vec!["null.db".to_owned()], "{outcome:?}");
    assert!(
        matches!(&outcome, Err(Error::InvalidArgument { reason, .. }) if reason.contains("device")),
        "{outcome:?}"
    );
    let shown = outcome.expect_err("refused").to_string();
    assert!(shown.contains("null.db"), "{shown}");
    Ok(())
}

/// A read of the memory database from inside one of its transactions (or
/// from another thread while one is open) answers at once from the last
/// committed state, as on SQLite (WAL readers never wait for a writer). It
/// used to wait for the transaction's lock and fail with `Busy` after the
/// busy timeout, so a unit test written against the memory backend
/// behaved unlike production.
#[test]
fn a_memory_read_during_a_transaction_answers_as_on_sqlite() -> R {
    // On SQLite: a read while a write transaction is open answers.
    let db = TempDb::new();
    let sqlite = Engine::builder(&db.path)
        .busy_timeout(Duration::from_millis(200))
        .build()?;
    sqlite.claim(&key("a"), "h", secs(60))?;
    let mut conn = sqlite.connection()?;
    let tx = conn.transaction_with_behavior(leasehold::rusqlite::TransactionBehavior::Immediate)?;
    sqlite.lease(&key("a"))?.expect("the lease is read");
    drop(tx);

    // On memory, the same.
    let engine = MemoryDatabase::new()
        .engine()
        .busy_timeout(Duration::from_millis(200))
        .build()?;
    engine.claim(&key("a"), "h", secs(60))?;
    let read = engine.transaction(|tx| {
        tx.put("x", "1");
        tx.release(&key("a"), "h")?;
        engine.lease(&key("a"))
    });
    // The committed state: held, the transaction's release not yet seen.
    assert!(
        matches!(&read, Ok(Some(lease)) if lease.holder() == Some("h")),
        "{read:?}"
    );
    // From another thread while a transaction is open, the same.
    let (open, opened) = mpsc::channel();
    let (finish, finished) = mpsc::channel::<()>();
    let writer = engine.clone();
    let txn = std::thread::spawn(move || {
        writer.transaction(|tx| {
            tx.put("y", "2");
            open.send(()).expect("send");
            finished.recv().expect("recv");
            Ok(())
        })
    });
    opened.recv()?;
    let read = engine.lease(&key("a"));
    finish.send(())?;
    txn.join().expect("thread")?;
    assert!(
        matches!(&read, Ok(Some(lease)) if lease.holder().is_none()),
        "{read:?}"
    );
    Ok(())
}

/// A read-only engine refuses every write, with an error, and leaves the
/// file as it was.
#[test]
fn a_read_only_engine_asked_to_write_refuses_and_changes_nothing() -> R {
    let db = TempDb::new();
    let writer = Engine::open(&db.path)?;
    writer.claim(&key("held"), "h1", secs(600))?;
    writer.pin(&key("pinned"), "e", "why", None)?;
    drop(writer);
    let before = std::fs::read(&db.path)?;
    let reader = Engine::builder(&db.path).read_only(true).build()?;
    assert!(reader.claim(&key("new"), "h2", secs(60)).is_err());
    assert!(reader.claim(&key("held"), "h1", secs(60)).is_err());
    assert!(reader.claim_new(&key("new"), "h2", secs(60)).is_err());
    assert!(reader.release(&key("held"), "h1").is_err());
    assert!(reader.revoke(&key("held")).is_err());
    assert!(reader.pin(&key("x"), "e", "", None).is_err());
    assert!(reader.unpin(&key("pinned"), "e").is_err());
    let snapshot = reader.export()?;
    assert!(reader.import(&snapshot, secs(60)).is_err());
    // A tracker on a read-only engine never leads.
    let tracker = reader.tracker(&key("t"), "h3").guarantee(secs(1)).build();
    if let Ok(tracker) = tracker {
        assert!(
            !tracker
                .claim_leader()
                .wait_timeout(Duration::from_secs(5))
                .unwrap_or(false)
        );
        tracker.stop();
    }
    // Reads still work, and say what the writer left.
    let held = reader.lease(&key("held"))?.expect("held");
    assert_eq!((held.holder(), held.epoch()), (Some("h1"), 1));
    assert!(reader.lease(&key("new"))?.is_none());
    drop(reader);
    assert_eq!(std::fs::read(&db.path)?, before, "the file changed");
    Ok(())
}

/// A token of one memory database checked in a transaction of another is
/// refused (it would otherwise judge a lease it never saw).
#[test]
fn a_memory_token_is_refused_by_another_memory_database() -> R {
    let here = MemoryEngine::in_memory();
    let there = MemoryEngine::in_memory();
    let token = here.claim(&key("a"), "h", secs(60))?.token();
    there.claim(&key("a"), "h", secs(60))?; // same key, holder, epoch
    let checked = there.transaction(|tx| tx.check_in(&token));
    assert!(
        matches!(checked, Err(Error::InvalidArgument { .. })),
        "{checked:?}"
    );
    // Two engines on one memory database are one database.
    let same = here.database().engine().build()?;
    same.transaction(|tx| tx.check_in(&token))?;
    Ok(())
}

/// A token of one SQLite file checked in a transaction on another file
/// (holding the same key, holder and epoch) is refused.
#[test]
fn a_sqlite_token_is_refused_in_another_files_transaction() -> R {
    let (a, b) = (TempDb::new(), TempDb::new());
    let here = Engine::open(&a.path)?;
    let there = Engine::open(&b.path)?;
    let token = here.claim(&key("a"), "h", secs(60))?.token();
    there.claim(&key("a"), "h", secs(60))?;
    let mut conn = there.connection()?;
    let tx = conn.transaction()?;
    let checked = token.check_in(&tx);
    assert!(
        matches!(checked, Err(Error::InvalidArgument { .. })),
        "{checked:?}"
    );
    Ok(())
}

/// Eight threads share one memory engine, each with a tracker on one key,
/// writing only through guarded transactions: every committed write was
/// made by the holder of its epoch, and epochs never go back.
#[test]
fn the_memory_backend_across_threads_keeps_one_writer_per_epoch() -> R {
    let engine = MemoryEngine::in_memory();
    let k = key("shared");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..8 {
        let engine = engine.clone();
        let k = k.clone();
        let log = log.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> Result<(), Error> {
            let me = format!("t{i}");
            let tracker = engine
                .tracker(&k, &me)
                .guarantee(Duration::from_millis(20))
                .build()?;
            let mut wrote = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(token) = tracker.token() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let epoch = token.epoch().expect("a tracker's token has an epoch");
                let committed = engine.transaction(|tx| {
                    tx.check_in(&token)?;
                    tx.put("writer", &format!("{me}@{epoch}"));
                    log.lock().expect("log").push((me.clone(), epoch));
                    Ok(())
                });
                if committed.is_ok() {
                    wrote += 1;
                }
                if wrote % 50 == 49 {
                    // Give the lease back now and then, so others lead.
                    let _ = engine.release(&k, &me);
                }
            }
            tracker.stop();
            Ok(())
        }));
    }
    // Until several tenures happened.
    let enough = eventually(Duration::from_secs(30), || {
        let log = log.lock().expect("log");
        log.last().is_some_and(|(_, e)| *e >= 5)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().expect("thread")?;
    }
    assert!(enough, "fewer than five tenures in 30 s");
    let log = log.lock().expect("log");
    let mut holders = std::collections::HashMap::new();
    let mut highest = 0;
    for (who, epoch) in log.iter() {
        assert!(*epoch >= highest, "epoch {epoch} after {highest}");
        highest = *epoch;
        let first = holders.entry(*epoch).or_insert_with(|| who.clone());
        assert_eq!(first, who, "epoch {epoch} written by two threads");
    }
    Ok(())
}

/// A database copied with its `-wal` but not its `-shm` (a backup taken
/// while an engine was open, or a `-shm` deleted by hand): SQLite can read
/// the `-wal` only by rebuilding its index into a new `-shm` beside the
/// file, which nothing but a connection that first checkpoints the `-wal`
/// into the file could remove. A read-only engine used to create it and
/// leave it, against `EngineBuilder::read_only`'s promise (and the
/// README's, for `list`, `show`, `export`…); it now refuses, saying why
/// and what to do, and creates nothing.
#[test]
fn a_read_only_engine_creates_no_shm_beside_a_copied_database() -> R {
    let live = TempDb::new();
    let engine = Engine::open(&live.path)?;
    engine.claim(&key("a"), "h", secs(600))?;
    // Copied while the engine is open: the claim is in the -wal only.
    let copy = TempDb::new();
    std::fs::copy(&live.path, &copy.path)?;
    std::fs::copy(side(&live.path, "-wal"), side(&copy.path, "-wal"))?;
    let refused = Engine::builder(&copy.path)
        .read_only(true)
        .build()
        .map(drop);
    let beside = |dir: &Path| -> Result<Vec<String>, std::io::Error> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.retain(|n| !n.ends_with("-lhwait"));
        names.sort();
        Ok(names)
    };
    assert_eq!(beside(copy.dir.path())?, ["test.db", "test.db-wal"]);
    let err = refused.expect_err("refused");
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    let said = err.to_string();
    assert!(
        said.contains("test.db-wal") && said.contains("-shm"),
        "{said}"
    );
    // Opened once not read-only (recovering the -wal, and closing last,
    // checkpointing it into the file), the copy reads, with its claim.
    drop(Engine::open(&copy.path)?);
    assert_eq!(beside(copy.dir.path())?, ["test.db"]);
    let reader = Engine::builder(&copy.path).read_only(true).build()?;
    let lease = reader.lease(&key("a"))?;
    drop(reader);
    assert!(lease.is_some_and(|l| l.is_held()), "the copy's WAL is read");
    assert_eq!(beside(copy.dir.path())?, ["test.db"]);
    Ok(())
}

/// SQLite reads a database in WAL mode only with its `-wal` and `-shm`
/// beside it and creates them when they are missing (a database whose
/// last connection closed has neither); a read-only connection cannot
/// remove them. A read-only engine used to leave both behind every time (a
/// `leasehold list` on an idle database did); closing as the database's
/// last connection, it now leaves nothing, and the file is unchanged. When
/// another process has the database open, the files are that process's
/// to remove, and stay.
#[test]
fn a_read_only_engine_on_a_closed_database_leaves_nothing_beside_it() -> R {
    let db = TempDb::new();
    {
        let engine = Engine::open(&db.path)?;
        engine.claim(&key("a"), "h1", secs(600))?;
    }
    std::fs::remove_file(side(&db.path, "-lhwait"))?;
    let listing = || -> Result<Vec<String>, std::io::Error> {
        let mut names: Vec<String> = std::fs::read_dir(db.dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    };
    assert_eq!(listing()?, ["test.db"]);
    let before = std::fs::read(&db.path)?;
    {
        let reader = Engine::builder(&db.path).read_only(true).build()?;
        assert!(reader.lease(&key("a"))?.is_some_and(|l| l.is_held()));
        assert_eq!(reader.all_leases("test")?.len(), 1);
        // Its own writes refused, as ever.
        assert!(reader.claim(&key("b"), "h2", secs(60)).is_err());
        let mut conn = reader.connection()?;
        assert!(conn.execute_batch("CREATE TABLE t (x)").is_err());
        assert!(
            conn.transaction()
                .is_ok_and(|tx| tx.execute_batch("CREATE TABLE t (x)").is_err())
        );
    }
    assert_eq!(listing()?, ["test.db"]);
    assert_eq!(std::fs::read(&db.path)?, before, "the file is unchanged");
    // With a writer open meanwhile, the reader leaves the writer's files.
    let writer = Engine::open(&db.path)?;
    {
        let reader = Engine::builder(&db.path).read_only(true).build()?;
        assert!(reader.lease(&key("a"))?.is_some());
    }
    writer.claim(&key("c"), "h3", secs(60))?;
    assert!(listing()?.contains(&"test.db-wal".to_owned()));
    assert!(listing()?.contains(&"test.db-shm".to_owned()));
    Ok(())
}

/// One engine whose clock ran an hour ahead (a host with a wrong date,
/// corrected since) persists its time mark, and every engine opened after
/// it starts from that mark. Engine time used to stand still there for
/// everyone until the real clocks caught up: no lease expired meanwhile — a
/// holder that died kept its 200 ms lease for the hour — and `leasehold
/// run`, whose renewals no longer moved the lease's end, had its command
/// stopped after half a lease every time. Engine time now goes on from the
/// mark at the clock's rate (the clock plus an offset that only grows), so
/// a lease lapses after its duration whatever the mark says.
#[test]
fn a_clock_once_an_hour_ahead_does_not_freeze_expiry_for_everyone() -> R {
    let db = TempDb::new();
    let open = |clock: &ManualClock| Engine::builder(&db.path).clock(clock.clone()).build();
    clock_once_ahead(|clock| open(clock))
}

/// The same on a memory database (which persists its mark as SQLite does).
#[test]
fn on_memory_a_clock_once_an_hour_ahead_does_not_freeze_expiry_for_everyone() -> R {
    let db = MemoryDatabase::new();
    clock_once_ahead(|clock| db.engine().clock(clock.clone()).build())
}

fn clock_once_ahead<B: leasehold::Backend>(
    open: impl Fn(&ManualClock) -> leasehold::Result<leasehold::engine::Engine<B>>,
) -> R {
    let now = support::t0();
    {
        let ahead = open(&ManualClock::new(now + Duration::from_secs(3600)))?;
        ahead.claim(&key("elsewhere"), "fast-host", secs(1))?;
    }
    // Hosts with right clocks, from now on. The first dies (killed:
    // nothing of its own runs at its end).
    let right = ManualClock::new(now);
    let dying = open(&right)?;
    dying.claim(&key("job"), "dies", Duration::from_millis(200))?;
    std::mem::forget(dying);
    right.advance(secs(1));
    let next = open(&right)?;
    let claimed = next.claim(&key("job"), "next", secs(10));
    assert!(
        claimed.is_ok(),
        "a 200 ms lease one second old is still held: {claimed:?}"
    );
    // Engine time goes on at the clock's rate (ahead of it by the hour).
    let started = next.now();
    right.advance(secs(10));
    assert_eq!(
        next.now() - started,
        leasehold::chrono::TimeDelta::seconds(10)
    );
    assert!(!next.lease(&key("job"))?.expect("lease").is_held());
    Ok(())
}

/// A clock stepping back under a running engine: engine time neither goes
/// back (the lease that lapsed stays lapsed, the tenure is not
/// lengthened) nor stands still until the clock catches up (it used to:
/// for as long as the step, no lease lapsed): it goes on from where it was
/// at the clock's rate, and engines opened later start from there.
#[test]
fn after_a_clock_step_back_time_goes_on_at_the_clocks_rate() -> R {
    let db = TempDb::new();
    let open = |clock: &ManualClock| Engine::builder(&db.path).clock(clock.clone()).build();
    step_back_then_on(|clock| open(clock))?;
    let db = MemoryDatabase::new();
    step_back_then_on(|clock| db.engine().clock(clock.clone()).build())
}

fn step_back_then_on<B: leasehold::Backend>(
    open: impl Fn(&ManualClock) -> leasehold::Result<leasehold::engine::Engine<B>>,
) -> R {
    let t0 = support::t0();
    let clock = ManualClock::new(t0);
    let engine = open(&clock)?;
    engine.claim(&key("a"), "h1", secs(10))?;
    clock.advance(secs(20));
    assert!(!engine.lease(&key("a"))?.expect("lease").is_held());
    clock.step_back(secs(3600));
    // Not revived; time stands at t0 + 20 s, where it was.
    assert!(!engine.lease(&key("a"))?.expect("lease").is_held());
    assert_eq!(engine.now(), t0 + secs(20));
    let tenure = engine.claim(&key("b"), "h2", secs(10))?;
    assert_eq!(tenure.expires_at(), t0 + secs(30));
    // Ten seconds of the clock later, the tenure has run out.
    clock.advance(secs(10));
    assert_eq!(engine.now(), t0 + secs(30));
    assert!(tenure.token().check().is_err());
    assert!(!engine.lease(&key("b"))?.expect("lease").is_held());
    // An engine opened later, on the same clock, goes on from there too.
    clock.advance(secs(5));
    let later = open(&clock)?;
    assert_eq!(later.now(), t0 + secs(35));
    clock.advance(secs(5));
    assert_eq!(later.now(), t0 + secs(40));
    Ok(())
}

/// The database opened through a symlink (`app.db -> releases/v1.db`)
/// that a deployment then points elsewhere (`ln -sfn v2.db app.db`).
/// Everyone opening `app.db` now uses v2 and may claim the same key in the
/// same epoch, so the engine must count its database as replaced (as for
/// a file moved over the path), and its pool must never open the link anew
/// (it used to: one engine then worked on both files at once, and its
/// tenure went on in v1 unnoticed while `leasehold run` kept its command
/// running).
#[test]
fn a_symlink_pointed_at_another_database_counts_as_replaced() -> R {
    let dir = tempfile::tempdir()?;
    let (v1, v2, link) = (
        dir.path().join("v1.db"),
        dir.path().join("v2.db"),
        dir.path().join("app.db"),
    );
    Engine::open(&v2)?; // a fresh database of its own
    Engine::open(&v1)?;
    std::os::unix::fs::symlink(&v1, &link)?;
    let engine = Engine::open(&link)?;
    assert_eq!(engine.path(), link, "the engine names the path given");
    engine.claim(&key("job"), "first", secs(3600))?;
    // A connection kept checked out, so that the next one is opened anew.
    let before = engine.connection()?;
    // The deployment flips the link.
    let tmp = dir.path().join("app.db.new");
    std::os::unix::fs::symlink(&v2, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    let rival = Engine::open(&link)?.claim(&key("job"), "second", secs(3600))?;
    assert_eq!(rival.epoch(), 1, "v2 never saw the first tenure");
    // A connection opened after the flip (unless the engine noticed
    // already) is on v1, as every other connection of the engine.
    let v1_real = std::fs::canonicalize(&v1)?;
    match engine.connection() {
        Ok(after) => {
            assert_eq!(after.path().map(Path::new), Some(v1_real.as_path()));
            assert_eq!(before.path().map(Path::new), Some(v1_real.as_path()));
        }
        Err(Error::DatabaseReplaced { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    drop(before);
    // The first engine must now refuse to go on (as for a replaced file),
    // naming the path it was given.
    let mut last = None;
    let noticed = eventually(Duration::from_secs(5), || {
        last = Some(engine.lease(&key("job")));
        matches!(last, Some(Err(Error::DatabaseReplaced { .. })))
    });
    assert!(noticed, "the engine never noticed: {last:?}");
    if let Some(Err(Error::DatabaseReplaced { path })) = last {
        assert_eq!(path, link);
    }
    Ok(())
}

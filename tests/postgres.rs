//! PostgreSQL-specific tests, beyond what the backend-neutral conformance
//! suite can express: row locks between sessions at each isolation level
//! (a guarded transaction holds off rivals; a guard queued behind a claim
//! fails; a rolled-back savepoint drops the guard's lock), the server's
//! clock, concurrent first opens, reading the history in commit order while
//! engines write, renewals under guarded-write load, PostgreSQL's refusals
//! (connection strings, unreachable servers, schema conflicts and versions,
//! the triggers), and tokens taken to another database.
//!
//! Every test runs on a database of its own on the shared throwaway server
//! ([`PgServer::shared`]); without a server they return at once (the server
//! prints a loud skip line; `LEASEHOLD_REQUIRE_PG` turns that into a panic).
//! Threads are synchronised explicitly: barriers, joins, and the server's
//! own view of who waits for whose lock (`pg_blocking_pids`). The only
//! sleeps prove that something does NOT happen within a short, bounded time.
#![cfg(feature = "postgres")]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use leasehold::chrono::{DateTime, TimeDelta, Utc};
use leasehold::postgres::client::types::ToSql;
use leasehold::postgres::client::{Client, IsolationLevel, NoTls, Transaction};
use leasehold::postgres::{PG_SCHEMA_VERSION, PgEngine, PgLeaseToken, pg_migrations};
use leasehold::testing::{PgDatabase, PgServer};
use leasehold::{Error, Event, EventKind, Found, Key, ManualClock};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The schema of leasehold's tables in every test database.
const SCHEMA: &str = "lh";

/// A lease long enough never to run out by itself during a test.
const LEASE: Duration = Duration::from_secs(10);

/// The three isolation levels a caller's transaction may run at.
const LEVELS: [(&str, IsolationLevel); 3] = [
    ("read-committed", IsolationLevel::ReadCommitted),
    ("repeatable-read", IsolationLevel::RepeatableRead),
    ("serializable", IsolationLevel::Serializable),
];

/// A fresh, empty database on the shared test server (dropped with the
/// handle), or `None` without a server.
fn fresh_database() -> Option<PgDatabase> {
    let server = PgServer::shared()?;
    Some(server.create_database().expect("a fresh test database"))
}

/// A connection of the test's own.
fn connect(db: &PgDatabase) -> Client {
    Client::connect(db.url(), NoTls).expect("connect to the test database")
}

/// An engine on `db` (schema [`SCHEMA`]), on `clock` if given, else on the
/// server's clock. A generous busy timeout: a rival blocked on purpose must
/// not give up while the test holds it, on however loaded a machine.
fn open(db: &PgDatabase, clock: Option<&ManualClock>) -> PgEngine {
    let mut builder = PgEngine::builder(db.url())
        .schema(SCHEMA)
        .busy_timeout(Duration::from_secs(30));
    if let Some(clock) = clock {
        builder = builder.clock(clock.clone());
    }
    builder.build().expect("open an engine")
}

/// An arbitrary fixed start for manual clocks.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
}

fn key(namespace: &str, name: &str) -> Key {
    Key::new(namespace, name).expect("a valid key")
}

/// The server process of `client`'s session.
fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pg_backend_pid")
        .get(0)
}

/// Starts a transaction at `level`.
fn begin(client: &mut Client, level: IsolationLevel) -> Transaction<'_> {
    client
        .build_transaction()
        .isolation_level(level)
        .start()
        .expect("begin")
}

/// The application's own table, in `public`.
fn create_app_table(db: &PgDatabase) {
    connect(db)
        .batch_execute("CREATE TABLE public.app (name text PRIMARY KEY, value text NOT NULL)")
        .expect("the application's table");
}

/// The application's value `name`, read on a connection of its own.
fn app_value(db: &PgDatabase, name: &str) -> Option<String> {
    connect(db)
        .query_opt("SELECT value FROM public.app WHERE name = $1", &[&name])
        .expect("read the application's table")
        .map(|row| row.get(0))
}

/// The server's clock now, in microseconds since the epoch (floored).
fn server_us(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &[],
        )
        .expect("read the server's clock")
        .get(0)
}

/// What a session waiting on another did first.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// It waits for a lock the other session holds.
    Blocked,
    /// Its call returned.
    Finished,
}

/// Waits until `finished()` (a call on another thread returned) or until a
/// session waits for a lock held by session `pid` (as `pg_blocking_pids`
/// reports), whichever comes first. It polls the server every 5 ms: a
/// session waiting on a row lock shows nowhere else. Panics after a minute
/// of neither.
fn blocked_or_finished(observer: &mut Client, pid: i32, finished: impl Fn() -> bool) -> Waited {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if finished() {
            return Waited::Finished;
        }
        let blocked: bool = observer
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)))",
                &[&pid],
            )
            .expect("pg_blocking_pids")
            .get(0);
        if blocked {
            return Waited::Blocked;
        }
        assert!(
            Instant::now() < deadline,
            "after a minute nothing waits for session {pid}, and the call has not returned"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a call that waits on a lock still has not returned after a
/// short while. The sleep is deliberate and bounded (200 ms): it proves
/// something does NOT happen.
fn still_waiting_after_a_while(finished: impl Fn() -> bool) -> bool {
    thread::sleep(Duration::from_millis(200));
    !finished()
}

/// Whether `result` is the failure a guard may report at `level` when the
/// lease changed hands under it: `GuardFailed`, or at REPEATABLE READ and
/// SERIALIZABLE a serialization failure (`40001`, transient: retry).
fn guard_refused(level: &str, result: &Result<(), Error>) -> bool {
    match result {
        Err(Error::GuardFailed { .. }) => true,
        Err(e) if level != "read-committed" => e.is_transient(),
        _ => false,
    }
}

/// Checks that `events`, in the order read, are each key's history in
/// commit order: every tenure's claim comes after the end of the one
/// before, with the next epoch, and every release, revoke or lapse ends the
/// tenure claimed just before it.
fn assert_tenures_in_order(events: &[(Key, Event)]) {
    /// A key's tenure being read (holder, epoch), and its latest epoch.
    type KeyState = (Option<(String, u64)>, u64);
    let mut state: HashMap<&Key, KeyState> = HashMap::new();
    for (i, (key, event)) in events.iter().enumerate() {
        let (current, last_epoch) = state.entry(key).or_insert((None, 0));
        let holder = event.holder().unwrap_or_default().to_owned();
        match event.kind() {
            EventKind::Claimed => {
                assert!(
                    current.is_none(),
                    "event {i} ({key}): {holder} claimed epoch {} while {current:?} still held it; \
                     read order: {}",
                    event.epoch(),
                    describe(events, key)
                );
                assert_eq!(
                    event.epoch(),
                    *last_epoch + 1,
                    "event {i} ({key}): epochs out of order; read order: {}",
                    describe(events, key)
                );
                *last_epoch = event.epoch();
                *current = Some((holder, event.epoch()));
            }
            EventKind::Released | EventKind::Revoked | EventKind::Lapsed => {
                assert_eq!(
                    current.take(),
                    Some((holder, event.epoch())),
                    "event {i} ({key}): {} ends a tenure that was not the current one; read order: {}",
                    event.kind(),
                    describe(events, key)
                );
            }
            other => panic!("event {i} ({key}): unexpected {other}"),
        }
    }
}

/// One key's events, in the order read, for messages.
fn describe(events: &[(Key, Event)], key: &Key) -> String {
    events
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, e)| format!("{} {} e{}", e.kind(), e.holder().unwrap_or("-"), e.epoch()))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// 1. Two sessions, at each isolation level
// ---------------------------------------------------------------------------

/// The rival operation a guarded transaction must hold off.
#[derive(Clone, Copy, Debug)]
enum Rival {
    /// `engine.revoke` of the live lease.
    Revoke,
    /// Another holder's claim once the lease expired (manual clock).
    ClaimAfterExpiry,
}

/// How the guarded transaction checks its token.
#[derive(Clone, Copy, Debug)]
enum GuardBy {
    /// `token.check_in(&mut tx)`, then a plain write.
    CheckIn,
    /// `token.guard(n)` as a predicate of the write itself.
    Fragment,
}

/// Writes `value` to the application's row `name` in `tx` under `token`'s
/// guard, as `guard_by` says; panics unless the guard passed.
fn guarded_write(
    tx: &mut Transaction<'_>,
    token: &PgLeaseToken,
    guard_by: GuardBy,
    name: &str,
    value: &str,
) {
    let written = match guard_by {
        GuardBy::CheckIn => {
            token.check_in(tx).expect("the guard passes");
            tx.execute(
                "UPDATE public.app SET value = $1 WHERE name = $2",
                &[&value, &name],
            )
            .expect("the guarded write")
        }
        GuardBy::Fragment => {
            let guard = token.guard(3);
            let sql = format!(
                "UPDATE public.app SET value = $1 WHERE name = $2 AND {}",
                guard.sql()
            );
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&value, &name];
            params.extend(guard.params());
            tx.execute(sql.as_str(), &params)
                .expect("the guarded write")
        }
    };
    assert_eq!(written, 1, "the guard held and the row was written");
}

/// A transaction whose guard passed holds off `rival` until it ends, at
/// every isolation level and with either form of the guard: the rival waits
/// on the lease row, returns only after the commit, and then sees what the
/// guarded transaction wrote.
fn rival_waits_for_a_guarded_transaction(rival: Rival) -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    create_app_table(&db);
    let clock = ManualClock::new(t0());
    let engine = open(&db, Some(&clock));
    let mut observer = connect(&db);
    for (level_name, level) in LEVELS {
        for guard_by in [GuardBy::CheckIn, GuardBy::Fragment] {
            let case = format!("{rival:?} against a {guard_by:?} guard at {level_name}");
            let key = key("guarded", &format!("{rival:?}-{guard_by:?}-{level_name}"));
            let row = key.to_string();
            observer.execute(
                "INSERT INTO public.app (name, value) VALUES ($1, 'before')",
                &[&row],
            )?;
            let tenure = engine.claim(&key, "h1", LEASE)?;
            let mut client = connect(&db);
            let pid = backend_pid(&mut client);
            let mut tx = begin(&mut client, level);
            guarded_write(&mut tx, &tenure.token(), guard_by, &row, "h1");
            if let Rival::ClaimAfterExpiry = rival {
                // h1's lease runs out by the engine's clock: only the
                // guarded transaction's lock stands in the claim's way.
                clock.advance(LEASE * 2);
            }
            let (outcome, seen) = thread::scope(|s| {
                let call = s.spawn(|| {
                    let outcome = match rival {
                        Rival::Revoke => engine
                            .revoke(&key)
                            .map(|l| l.map(|l| (l.holder().map(str::to_owned), l.epoch()))),
                        Rival::ClaimAfterExpiry => engine
                            .claim(&key, "h2", LEASE)
                            .map(|t| Some((Some(t.holder().to_owned()), t.epoch()))),
                    };
                    // Read after the rival's call returned.
                    (outcome, app_value(&db, &row))
                });
                let waited = blocked_or_finished(&mut observer, pid, || call.is_finished());
                assert_eq!(
                    waited,
                    Waited::Blocked,
                    "{case}: the rival did not wait for the guarded transaction"
                );
                assert!(
                    still_waiting_after_a_while(|| call.is_finished()),
                    "{case}: the rival returned while the guarded transaction was open"
                );
                tx.commit().expect("commit the guarded transaction");
                call.join().expect("the rival's thread")
            });
            let outcome = outcome.map_err(|e| format!("{case}: the rival failed: {e}"))?;
            match rival {
                Rival::Revoke => {
                    assert_eq!(
                        outcome,
                        Some((Some("h1".to_owned()), tenure.epoch())),
                        "{case}: the revoke ended h1's tenure"
                    );
                    let lease = engine.lease(&key)?.expect("the row");
                    assert!(!lease.is_held(), "{case}: vacant after the revoke");
                }
                Rival::ClaimAfterExpiry => {
                    assert_eq!(
                        outcome,
                        Some((Some("h2".to_owned()), tenure.epoch() + 1)),
                        "{case}: the claim began the next tenure"
                    );
                }
            }
            assert_eq!(
                seen.as_deref(),
                Some("h1"),
                "{case}: the guarded write committed before the rival's call returned"
            );
            assert!(
                matches!(tenure.token().check(), Err(Error::GuardFailed { .. })),
                "{case}: h1's token no longer holds"
            );
        }
    }
    Ok(())
}

#[test]
fn a_revoke_waits_for_a_transaction_whose_guard_passed_at_every_isolation_level() -> TestResult {
    rival_waits_for_a_guarded_transaction(Rival::Revoke)
}

#[test]
fn a_claim_after_expiry_waits_for_a_transaction_whose_guard_passed_at_every_isolation_level()
-> TestResult {
    rival_waits_for_a_guarded_transaction(Rival::ClaimAfterExpiry)
}

/// How the lease changes hands in the transaction a guard queues behind.
#[derive(Clone, Copy, Debug)]
enum Handover {
    /// Revoke h1's live tenure, then claim for h2, on one clock.
    RevokeThenClaim,
    /// Claim for h2 on a clock by which h1's lease has expired.
    ClaimAfterExpiry,
}

#[test]
fn a_guard_queued_behind_a_claim_fails_once_the_claim_commits_at_every_isolation_level()
-> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    create_app_table(&db);
    // h1's engine stays at t0. A guard only queues behind a claim if the
    // row version it reads still passes: on one clock, an expired lease
    // fails the guard at once. So the late claimant's clock is an hour
    // ahead: by it h1's lease has expired, by h1's it still holds.
    let holder_clock = ManualClock::new(t0());
    let holder = open(&db, Some(&holder_clock));
    let late_clock = ManualClock::new(t0() + TimeDelta::hours(1));
    let late_claimant = open(&db, Some(&late_clock));
    let mut observer = connect(&db);
    for (level_name, level) in LEVELS {
        for handover in [Handover::RevokeThenClaim, Handover::ClaimAfterExpiry] {
            let case = format!("{handover:?}, guard at {level_name}");
            let key = key("queued", &format!("{handover:?}-{level_name}"));
            let row = key.to_string();
            let tenure = holder.claim(&key, "h1", LEASE)?;
            let claimant = match handover {
                Handover::RevokeThenClaim => &holder,
                Handover::ClaimAfterExpiry => &late_claimant,
            };
            // B takes the lease row FOR UPDATE and keeps its transaction open.
            let mut client_b = connect(&db);
            let b_pid = backend_pid(&mut client_b);
            let mut txb = client_b.transaction()?;
            if let Handover::RevokeThenClaim = handover {
                let revoked = claimant.in_txn(&mut txb)?.revoke(&key)?;
                assert_eq!(
                    revoked
                        .and_then(|l| l.holder().map(str::to_owned))
                        .as_deref(),
                    Some("h1")
                );
            }
            let successor = claimant.in_txn(&mut txb)?.claim(&key, "h2", LEASE)?;
            assert_eq!(successor.epoch(), tenure.epoch() + 1, "{case}");
            let token = tenure.token();
            let result = thread::scope(|s| {
                let guarded = s.spawn(|| {
                    let mut client = connect(&db);
                    let mut tx = begin(&mut client, level);
                    let checked = token.check_in(&mut tx);
                    if checked.is_ok() {
                        // What h1 would write under its guard: it must never commit.
                        tx.execute(
                            "INSERT INTO public.app (name, value) VALUES ($1, 'h1')",
                            &[&row],
                        )
                        .expect("the guarded write");
                        tx.commit().expect("commit the guarded transaction");
                    }
                    // Otherwise dropped: rolled back.
                    checked
                });
                let waited = blocked_or_finished(&mut observer, b_pid, || guarded.is_finished());
                if waited == Waited::Finished {
                    let early = guarded.join().expect("the guard's thread");
                    panic!("{case}: the guard did not queue behind the claim: {early:?}");
                }
                assert!(
                    still_waiting_after_a_while(|| guarded.is_finished()),
                    "{case}: the guard returned while the claim was uncommitted"
                );
                txb.commit().expect("commit the claim");
                guarded.join().expect("the guard's thread")
            });
            if level_name == "read-committed" {
                // The guard re-checks the new row version and fails.
                match &result {
                    Err(Error::GuardFailed {
                        found: Found::Held { holder, epoch },
                        ..
                    }) => {
                        assert_eq!(holder, "h2", "{case}");
                        assert_eq!(*epoch, successor.epoch(), "{case}");
                    }
                    other => panic!("{case}: expected GuardFailed finding h2, got {other:?}"),
                }
            } else {
                assert!(
                    guard_refused(level_name, &result),
                    "{case}: expected GuardFailed or a transient error, got {result:?}"
                );
            }
            assert_eq!(
                app_value(&db, &row),
                None,
                "{case}: nothing h1 wrote committed"
            );
            let lease = holder.lease(&key)?.expect("the row");
            assert_eq!(lease.holder(), Some("h2"), "{case}");
            assert_eq!(lease.epoch(), successor.epoch(), "{case}");
        }
    }
    Ok(())
}

#[test]
fn a_guard_in_a_rolled_back_savepoint_no_longer_holds_off_a_rival_at_every_isolation_level()
-> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let clock = ManualClock::new(t0());
    let engine = open(&db, Some(&clock));
    let mut observer = connect(&db);
    for (level_name, level) in LEVELS {
        // Rolled back: the lock the guard took inside the savepoint is gone.
        let case = format!("rolled-back savepoint at {level_name}");
        let key = key("savepoint", &format!("rolled-back-{level_name}"));
        let tenure = engine.claim(&key, "h1", LEASE)?;
        let mut client = connect(&db);
        let pid = backend_pid(&mut client);
        let mut tx = begin(&mut client, level);
        {
            let mut sp = tx.transaction()?;
            tenure.token().check_in(&mut sp)?;
            sp.rollback()?;
        }
        let revoked = thread::scope(|s| {
            let rival = s.spawn(|| engine.revoke(&key));
            let waited = blocked_or_finished(&mut observer, pid, || rival.is_finished());
            assert_eq!(
                waited,
                Waited::Finished,
                "{case}: the revoke waited for a lock the savepoint's rollback should have dropped"
            );
            rival.join().expect("the rival's thread")
        })?;
        // Returned while the outer transaction is still open.
        assert_eq!(
            revoked.as_ref().and_then(|l| l.holder()),
            Some("h1"),
            "{case}"
        );
        let again = tenure.token().check_in(&mut tx);
        assert!(
            guard_refused(level_name, &again),
            "{case}: the outer transaction passed the guard after the revoke: {again:?}"
        );
        tx.rollback()?;

        // Released: the lock stays until the outer transaction ends.
        let case = format!("released savepoint at {level_name}");
        let key = self::key("savepoint", &format!("released-{level_name}"));
        let tenure = engine.claim(&key, "h1", LEASE)?;
        let mut tx = begin(&mut client, level);
        {
            let mut sp = tx.transaction()?;
            tenure.token().check_in(&mut sp)?;
            sp.commit()?;
        }
        let revoked = thread::scope(|s| {
            let rival = s.spawn(|| engine.revoke(&key));
            let waited = blocked_or_finished(&mut observer, pid, || rival.is_finished());
            assert_eq!(waited, Waited::Blocked, "{case}: the revoke did not wait");
            assert!(
                still_waiting_after_a_while(|| rival.is_finished()),
                "{case}: the revoke returned while the transaction was open"
            );
            tx.commit().expect("commit");
            rival.join().expect("the rival's thread")
        })?;
        assert_eq!(
            revoked.as_ref().and_then(|l| l.holder()),
            Some("h1"),
            "{case}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. The server's clock
// ---------------------------------------------------------------------------

#[test]
fn engines_on_server_time_date_tenures_by_the_servers_clock() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let first = open(&db, None);
    let second = open(&db, None);
    let mut client = connect(&db);
    let lease = Duration::from_secs(30);
    for (i, (claimant, reader)) in [(&first, &second), (&second, &first)]
        .into_iter()
        .enumerate()
    {
        let key = key("clock", &format!("k{i}"));
        let before = server_us(&mut client);
        let tenure = claimant.claim(&key, "h1", lease)?;
        let after = server_us(&mut client);
        let started = tenure.started_at().timestamp_micros();
        // Milliseconds: the start lies in the server's window, to the ms.
        assert!(
            before.div_euclid(1000) * 1000 <= started
                && started <= (after + 999).div_euclid(1000) * 1000,
            "tenure started at {started} µs, outside the server's window {before}..{after}"
        );
        let span = tenure.expires_at() - tenure.started_at();
        assert!(
            span == TimeDelta::seconds(30) || span == TimeDelta::milliseconds(30_001),
            "the expiry is the start plus the duration (rounded up), not {span}"
        );
        // The other engine reads the same tenure, as of the server's time.
        let before = server_us(&mut client);
        let read = reader.lease(&key)?.expect("the lease");
        let after = server_us(&mut client);
        assert_eq!(read.holder(), Some("h1"));
        assert_eq!(read.epoch(), tenure.epoch());
        assert_eq!(read.expires_at(), Some(tenure.expires_at()));
        let as_of = read.as_of().timestamp_micros();
        assert!(
            before.div_euclid(1000) * 1000 <= as_of
                && as_of <= (after + 999).div_euclid(1000) * 1000,
            "read as of {as_of} µs, outside the server's window {before}..{after}"
        );
    }
    // An engine on server time keeps an upper bound of the server's clock.
    for engine in [&first, &second] {
        for _ in 0..20 {
            let server = server_us(&mut client);
            let now = engine.now().timestamp_micros();
            let after = server_us(&mut client);
            assert!(
                now >= server.div_euclid(1000) * 1000,
                "engine.now() = {now} µs is behind the server's clock read before it ({server} µs)"
            );
            assert!(
                now <= after + 5_000_000,
                "engine.now() = {now} µs is far ahead of the server's clock ({after} µs)"
            );
        }
    }
    Ok(())
}

/// Makes the schema's time function (`leasehold_now_us`, what every
/// operation and guard reads) run `offset` away from the server's clock:
/// a database server whose clock is that far from this host's.
fn skew_database_clock(client: &mut Client, offset: &str) {
    client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION \"{SCHEMA}\".leasehold_now_us() RETURNS bigint \
             LANGUAGE sql VOLATILE AS $$ \
             SELECT floor(extract(epoch FROM clock_timestamp() + interval '{offset}') * 1000000)::bigint $$"
        ))
        .expect("skew the database's clock");
}

#[test]
fn decisions_follow_the_databases_clock_even_a_day_away_from_the_hosts() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    create_app_table(&db);
    let first = open(&db, None);
    let second = open(&db, None);
    let mut client = connect(&db);

    // The database's clock a day behind this host's: by the host's clock the
    // tenure ended a day ago, yet every engine finds it held.
    skew_database_clock(&mut client, "-1 day");
    let behind = key("skew", "behind");
    let tenure = first.claim(&behind, "h1", Duration::from_secs(60))?;
    assert!(
        tenure.expires_at() < Utc::now() - TimeDelta::hours(23),
        "the tenure is dated by the database's clock: {tenure:?}"
    );
    match second.claim(&behind, "h2", LEASE) {
        Err(Error::ClaimDenied { current_holder, .. }) => assert_eq!(current_holder, "h1"),
        other => panic!("expected h2's claim denied, got {other:?}"),
    }
    let lease = second.lease(&behind)?.expect("the lease");
    assert_eq!(lease.holder(), Some("h1"));
    {
        let mut tx = client.transaction()?;
        tenure.token().check_in(&mut tx)?;
        tx.rollback()?;
    }
    tenure.token().check()?;

    // A day ahead: by the host's clock the tenure has a day left, yet once
    // the database's clock passes its expiry another holder claims it.
    skew_database_clock(&mut client, "1 day");
    let ahead = key("skew", "ahead");
    let tenure = first.claim(&ahead, "h1", Duration::from_millis(50))?;
    assert!(
        tenure.expires_at() > Utc::now() + TimeDelta::hours(23),
        "the tenure is dated by the database's clock: {tenure:?}"
    );
    // Wait for the database's clock (not the host's) to pass the expiry.
    let expiry_us = tenure.expires_at().timestamp_micros();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: i64 = client
            .query_one(&format!("SELECT \"{SCHEMA}\".leasehold_now_us()"), &[])?
            .get(0);
        if now > expiry_us {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database's clock stands still"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(
        tenure.token().check(),
        Err(Error::GuardFailed { .. })
    ));
    let successor = second.claim(&ahead, "h2", LEASE)?;
    assert_eq!(successor.epoch(), tenure.epoch() + 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Concurrent first opens
// ---------------------------------------------------------------------------

#[test]
fn eight_engines_opening_one_fresh_database_at_once_migrate_it_once_and_share_it() -> TestResult {
    const OPENERS: usize = 8;
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let barrier = Barrier::new(OPENERS);
    let opened: Vec<leasehold::Result<PgEngine>> = thread::scope(|s| {
        let openers: Vec<_> = (0..OPENERS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    PgEngine::builder(db.url())
                        .schema(SCHEMA)
                        .busy_timeout(Duration::from_secs(30))
                        .build()
                })
            })
            .collect();
        openers
            .into_iter()
            .map(|h| h.join().expect("an opener's thread"))
            .collect()
    });
    let engines: Vec<PgEngine> = opened
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.unwrap_or_else(|e| panic!("opener {i} failed: {e}")))
        .collect();
    let mut client = connect(&db);
    let applied: Vec<i32> = client
        .query(
            &format!("SELECT version FROM \"{SCHEMA}\".leasehold_schema ORDER BY version"),
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = pg_migrations()
        .iter()
        .map(|m| i32::try_from(m.version()).expect("a small version"))
        .collect();
    assert_eq!(applied, expected, "each migration applied exactly once");
    let instances: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{SCHEMA}\".leasehold_instance"),
            &[],
        )?
        .get(0);
    assert_eq!(instances, 1);
    for (i, engine) in engines.iter().enumerate() {
        engine.claim(&key("open", &format!("k{i}")), &format!("e{i}"), LEASE)?;
    }
    for (i, engine) in engines.iter().enumerate() {
        let held: Vec<String> = engine
            .leases("open")?
            .iter()
            .map(|l| l.holder().unwrap_or_default().to_owned())
            .collect();
        let all: Vec<String> = (0..OPENERS).map(|j| format!("e{j}")).collect();
        assert_eq!(held, all, "engine {i} sees every engine's lease");
        let other = (i + 1) % OPENERS;
        match engine.claim(&key("open", &format!("k{other}")), &format!("e{i}"), LEASE) {
            Err(Error::ClaimDenied { current_holder, .. }) => {
                assert_eq!(current_holder, format!("e{other}"));
            }
            other => panic!("engine {i}: expected a denial, got {other:?}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. The history, in commit order
// ---------------------------------------------------------------------------

/// Every event of `namespace` in the table, in the order the history is
/// read (by writing transaction, then id).
fn table_events(client: &mut Client, namespace: &str) -> Vec<i64> {
    client
        .query(
            &format!(
                "SELECT id FROM \"{SCHEMA}\".leasehold_events WHERE namespace = $1 ORDER BY tx, id"
            ),
            &[&namespace],
        )
        .expect("read the history table")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_watcher_reads_every_event_once_and_in_commit_order_while_engines_write() -> TestResult {
    const NS: &str = "hist";
    const WRITERS: usize = 4;
    const ROUNDS: usize = 30;
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let watcher_engine = open(&db, None);
    let writer_engines: Vec<PgEngine> = (0..WRITERS).map(|_| open(&db, None)).collect();
    let shared = key(NS, "shared");
    let total: OnceLock<usize> = OnceLock::new();
    let start = Barrier::new(WRITERS + 1);
    // Halfway through, the writers wait until the watcher has read some of
    // their events: it then reads the rest while they write on.
    let halfway = Barrier::new(WRITERS + 1);
    let (seen, batches) = thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen: Vec<(Key, Event)> = Vec::new();
            let mut cursor = 0;
            let mut batches = 0;
            let mut past_halfway = false;
            start.wait();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if total.get().is_some_and(|&t| seen.len() >= t) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "after a minute the watcher has read {} events (the table holds {:?})",
                    seen.len(),
                    total.get()
                );
                let events = watcher_engine
                    .wait_for_events(Some(NS), cursor, Duration::from_millis(250))
                    .expect("read the history");
                assert_eq!(events.gap(), None, "no event may be missed");
                assert!(events.cursor() >= cursor, "the cursor never goes back");
                cursor = events.cursor();
                if !events.is_empty() {
                    batches += 1;
                }
                seen.extend(events.into_events());
                if !past_halfway && !seen.is_empty() {
                    halfway.wait();
                    past_halfway = true;
                }
            }
            (seen, batches)
        });
        let writers: Vec<_> = writer_engines
            .iter()
            .enumerate()
            .map(|(w, engine)| {
                let (shared, start, halfway) = (&shared, &start, &halfway);
                s.spawn(move || {
                    let own = key(NS, &format!("own-{w}"));
                    let me = format!("w{w}");
                    start.wait();
                    for round in 0..ROUNDS {
                        if round == ROUNDS / 2 {
                            halfway.wait();
                        }
                        engine.claim(&own, &me, LEASE).expect("claim its own key");
                        let got_shared = match engine.claim(shared, &me, LEASE) {
                            Ok(_) => true,
                            Err(Error::ClaimDenied { .. }) => false,
                            Err(e) => panic!("claim the shared key: {e}"),
                        };
                        if w == 0 && round % 4 == 3 {
                            engine.revoke(shared).expect("revoke the shared key");
                        }
                        engine.release(&own, &me).expect("release its own key");
                        if got_shared {
                            match engine.release(shared, &me) {
                                Ok(()) | Err(Error::NotHeld { .. }) => {}
                                Err(e) => panic!("release the shared key: {e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer's thread");
        }
        // Every writer's transaction has ended: the table is final.
        let count = table_events(&mut connect(&db), NS).len();
        total.set(count).expect("set once");
        watcher.join().expect("the watcher's thread")
    });
    let table = table_events(&mut connect(&db), NS);
    let ids: Vec<i64> = seen.iter().map(|(_, e)| e.id()).collect();
    let distinct: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "no event read twice");
    assert_eq!(ids, table, "every event read, in the history's order");
    assert!(
        table.len() >= WRITERS * ROUNDS * 2,
        "the writers logged their tenures ({} events)",
        table.len()
    );
    assert!(
        batches >= 2,
        "the watcher read the history in several batches ({batches})"
    );
    assert_tenures_in_order(&seen);
    Ok(())
}

#[test]
fn a_claim_waiting_in_a_transaction_that_wrote_first_is_read_after_the_release_it_waited_for()
-> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    create_app_table(&db);
    let engine = open(&db, None);
    let key = key("order", "k");
    let first = engine.claim(&key, "h1", LEASE)?;
    assert_eq!(first.epoch(), 1);
    let xid = |tx: &mut Transaction<'_>| -> i64 {
        tx.query_one("SELECT pg_current_xact_id()::text::bigint", &[])
            .expect("the transaction's id")
            .get(0)
    };
    // B: a caller's transaction that writes first (it gets its transaction
    // id now), and claims the key later.
    let mut client_b = connect(&db);
    let mut txb = client_b.transaction()?;
    txb.execute(
        "INSERT INTO public.app (name, value) VALUES ('b', 'wrote first')",
        &[],
    )?;
    let xid_b = xid(&mut txb);
    // A: h1 releases in a transaction that gets a later id, and holds the row.
    let mut client_a = connect(&db);
    let a_pid = backend_pid(&mut client_a);
    let mut txa = client_a.transaction()?;
    engine.in_txn(&mut txa)?.release(&key, "h1")?;
    let xid_a = xid(&mut txa);
    assert!(xid_a > xid_b);
    let mut observer = connect(&db);
    let second = thread::scope(|s| {
        let (engine, key) = (&engine, &key);
        let claim = s.spawn(move || {
            let tenure = engine.in_txn(&mut txb)?.claim(key, "h2", LEASE)?;
            txb.commit()?;
            Ok::<_, Error>(tenure)
        });
        let waited = blocked_or_finished(&mut observer, a_pid, || claim.is_finished());
        assert_eq!(waited, Waited::Blocked, "B's claim waits for A's release");
        txa.commit().expect("commit the release");
        claim.join().expect("the claim's thread")
    })?;
    assert_eq!(second.epoch(), 2);
    // Committed in this order: claimed 1, released 1 (A), claimed 2 (B).
    let mut seen: Vec<(Key, Event)> = Vec::new();
    let mut cursor = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "read {} of 3 events", seen.len());
        let events = engine.wait_for_events(Some("order"), cursor, Duration::from_secs(1))?;
        cursor = events.cursor();
        seen.extend(events.into_events());
    }
    assert_tenures_in_order(&seen);
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Renewals under guarded-write load
// ---------------------------------------------------------------------------

#[test]
fn a_leader_keeps_renewing_while_sixteen_sessions_write_under_its_guard() -> TestResult {
    const WRITERS: usize = 16;
    const WINDOW: Duration = Duration::from_millis(2500);
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let engine = open(&db, None);
    let mut client = connect(&db);
    client.batch_execute(&format!(
        "CREATE TABLE public.counts (writer int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO public.counts SELECT g, 0 FROM generate_series(0, {}) AS g",
        WRITERS - 1
    ))?;
    let leader = key("load", "leader");
    // A 1 s lease (twice the guarantee), renewed when half is left: several
    // renewals must get through in the window.
    let tracker = engine
        .tracker(&leader, "leader")
        .guarantee(Duration::from_millis(500))
        .build()?;
    assert!(tracker.wait_leader().wait(), "the tracker leads");
    let epoch = tracker.epoch().expect("leading");
    let token = tracker.token().expect("leading");
    let lost = tracker.wait_minion();
    let first_until = tracker.lease_until().expect("leading");
    let written = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(WRITERS + 1);
    let mut clients: Vec<Client> = (0..WRITERS).map(|_| connect(&db)).collect();
    let (failures, renewals) = thread::scope(|s| {
        let writers: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(w, client)| {
                let (token, written, stop, start) = (&token, &written, &stop, &start);
                let w = i32::try_from(w).expect("a small index");
                s.spawn(move || {
                    let mut failures = Vec::new();
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let mut tx = client.transaction().expect("begin");
                        if let Err(e) = token.check_in(&mut tx) {
                            failures.push(e.to_string());
                            continue;
                        }
                        tx.execute(
                            "UPDATE public.counts SET n = n + 1 WHERE writer = $1",
                            &[&w],
                        )
                        .expect("the guarded write");
                        tx.commit().expect("commit");
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        start.wait();
        // Sample the tracker's lease while the writers run (observing, not
        // waiting for anything): each renewal moves it on.
        let began = Instant::now();
        let mut untils = vec![first_until];
        while began.elapsed() < WINDOW {
            if let Some(until) = tracker.lease_until()
                && untils.last() != Some(&until)
            {
                untils.push(until);
            }
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let failures: Vec<String> = writers
            .into_iter()
            .flat_map(|h| h.join().expect("a writer's thread"))
            .collect();
        (failures, untils)
    });
    assert_eq!(
        lost.try_wait(),
        None,
        "the leader never lost leadership (last error: {:?})",
        tracker.last_error()
    );
    assert_eq!(tracker.epoch(), Some(epoch), "still the same tenure");
    assert!(
        failures.is_empty(),
        "every guarded write passed its guard: {} failed, first {:?}",
        failures.len(),
        failures.first()
    );
    let renewals_seen = renewals.len() - 1;
    assert!(
        renewals_seen >= 3,
        "the leader renewed several times in {WINDOW:?}: {renewals:?}"
    );
    let claims = engine
        .history(&leader, 100)?
        .iter()
        .filter(|e| e.kind() == EventKind::Claimed)
        .count();
    assert_eq!(claims, 1, "one tenure throughout");
    let total: i64 = client
        .query_one("SELECT sum(n)::int8 FROM public.counts", &[])?
        .get(0);
    let written = written.load(Ordering::Relaxed);
    assert!(written > 0, "the writers wrote");
    assert_eq!(
        total,
        i64::try_from(written)?,
        "every guarded write committed"
    );
    tracker.stop();
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Bad input and refusals
// ---------------------------------------------------------------------------

/// A loopback TCP port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}

#[test]
fn a_connection_string_that_does_not_parse_is_refused_without_showing_its_password() {
    for url in [
        "postgres://u:secret@127.0.0.1:notaport/x",
        "postgresql://u:secret@127.0.0.1:5432/x?sslmode=sometimes",
        "host=127.0.0.1 user=u password=secret port=notaport",
        "host=127.0.0.1 user=u password=secret dbname=x nonsense=1",
    ] {
        match PgEngine::builder(url).schema(SCHEMA).build() {
            Err(e @ Error::InvalidArgument { what, .. }) => {
                assert_eq!(what, "connection string", "{url}");
                let shown = format!("{e} / {e:?}");
                assert!(!shown.contains("secret"), "the password shows: {shown}");
            }
            other => panic!("{url}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn a_connection_string_that_does_not_parse_never_shows_its_password_in_any_accepted_form() {
    let mut shown_passwords = Vec::new();
    for url in [
        "postgresql://u@127.0.0.1:notaport/x?password=secret",
        "host=127.0.0.1 user=u password='my secret' port=notaport",
        "host=127.0.0.1 user=u password = secret port=notaport",
    ] {
        match PgEngine::builder(url).schema(SCHEMA).build() {
            Err(e @ Error::InvalidArgument { .. }) => {
                let shown = format!("{e} / {e:?}");
                if shown.contains("secret") {
                    shown_passwords.push(shown);
                }
            }
            other => panic!("{url}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(
        shown_passwords.is_empty(),
        "the password shows in: {shown_passwords:#?}"
    );
}

#[test]
fn builder_arguments_out_of_range_are_refused_before_connecting() {
    // Nothing listens there: an argument checked after connecting would
    // surface as Error::Open instead.
    let url = format!("postgres://u:secret@127.0.0.1:{}/x", closed_port());
    let cases: [(&str, leasehold::Result<PgEngine>); 5] = [
        ("schema", PgEngine::builder(&url).schema("").build()),
        (
            "schema",
            PgEngine::builder(&url).schema(&"s".repeat(64)).build(),
        ),
        ("pool size", PgEngine::builder(&url).pool_size(0).build()),
        (
            "event retention",
            PgEngine::builder(&url).event_retention(0).build(),
        ),
        (
            "busy timeout",
            PgEngine::builder(&url)
                .busy_timeout(Duration::from_secs(3601))
                .build(),
        ),
    ];
    for (expected, result) in cases {
        match result {
            Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, expected),
            other => panic!("{expected}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn an_unreachable_server_fails_to_open_quickly_without_showing_the_password() {
    let refused = format!("postgres://u:secret@127.0.0.1:{}/x", closed_port());
    let missing_socket = "host=/nonexistent/leasehold-test user=u password=secret dbname=x";
    for url in [refused.as_str(), missing_socket] {
        let began = Instant::now();
        let result = PgEngine::builder(url)
            .schema(SCHEMA)
            .busy_timeout(Duration::from_secs(1))
            .build();
        let took = began.elapsed();
        match result {
            Err(e @ Error::Open { .. }) => {
                let shown = format!("{e} / {e:?}");
                assert!(!shown.contains("secret"), "the password shows: {shown}");
            }
            other => panic!("{url}: expected Error::Open, got {other:?}"),
        }
        assert!(took < Duration::from_secs(10), "{url}: took {took:?}");
    }
}

#[test]
fn a_server_that_accepts_but_never_answers_fails_to_open_within_the_connect_timeout() {
    // A listener that never accepts: the kernel completes the handshake and
    // buffers the startup message, and nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let url = format!("postgres://u@127.0.0.1:{port}/x");
    let (done, result) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let began = Instant::now();
        let opened = PgEngine::builder(&url)
            .schema(SCHEMA)
            .busy_timeout(Duration::from_secs(1))
            .build();
        let _ = done.send((opened.map(drop), began.elapsed()));
    });
    // The connect timeout is 1 s here (the busy timeout, at least 1 s).
    match result.recv_timeout(Duration::from_secs(20)) {
        Ok((Err(Error::Open { .. }), took)) => {
            assert!(took < Duration::from_secs(10), "took {took:?}");
        }
        Ok(other) => panic!("expected Error::Open, got {other:?}"),
        Err(_) => panic!("build() still waits for a silent server after 20 s"),
    }
    drop(silent);
}

/// The relations and functions in `schema`: (kind, name), sorted.
fn objects_in(client: &mut Client, schema: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT 'relation', c.relname::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
             UNION ALL
             SELECT 'function', p.proname::text FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
             ORDER BY 1, 2",
            &[&schema],
        )
        .expect("list the schema's objects")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn schema_exists(client: &mut Client, schema: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .expect("pg_namespace")
        .get(0)
}

#[test]
fn a_schema_holding_an_applications_object_named_like_leaseholds_is_refused_and_left_alone()
-> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let mut client = connect(&db);
    for (schema, setup, name, kind) in [
        (
            "conflict_table",
            "CREATE TABLE conflict_table.leasehold_leases (id int)",
            "leasehold_leases",
            "table",
        ),
        (
            "conflict_function",
            "CREATE FUNCTION conflict_function.leasehold_now_us() RETURNS bigint \
             LANGUAGE sql AS $$ SELECT 0::bigint $$",
            "leasehold_now_us",
            "function",
        ),
        (
            "conflict_bookkeeping",
            "CREATE TABLE conflict_bookkeeping.leasehold_schema (id int)",
            "leasehold_schema",
            "table",
        ),
    ] {
        client.batch_execute(&format!("CREATE SCHEMA {schema}; {setup}"))?;
        let before = objects_in(&mut client, schema);
        let result = PgEngine::builder(db.url()).schema(schema).build();
        match result {
            Err(Error::SchemaConflict {
                name: found,
                kind: found_kind,
                ..
            }) => {
                assert_eq!(found, name, "{schema}");
                assert_eq!(found_kind, kind, "{schema}");
            }
            other => panic!("{schema}: expected SchemaConflict, got {other:?}"),
        }
        assert_eq!(
            objects_in(&mut client, schema),
            before,
            "{schema}: nothing created"
        );
    }
    Ok(())
}

#[test]
fn a_schema_migrated_by_a_newer_leasehold_is_refused() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    drop(open(&db, None));
    let mut client = connect(&db);
    client.execute(
        &format!(
            "INSERT INTO \"{SCHEMA}\".leasehold_schema (version, name, checksum, applied_ms) \
             VALUES (99, 'future', 'unknown', 0)"
        ),
        &[],
    )?;
    for read_only in [false, true] {
        match PgEngine::builder(db.url())
            .schema(SCHEMA)
            .read_only(read_only)
            .build()
        {
            Err(Error::SchemaTooNew { found, supported }) => {
                assert_eq!(found, 99);
                assert_eq!(supported, PG_SCHEMA_VERSION);
            }
            other => panic!("read-only {read_only}: expected SchemaTooNew, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_read_only_engine_on_an_unmigrated_schema_is_refused_and_creates_nothing() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let mut client = connect(&db);
    // A schema that does not exist, and one that exists but is empty.
    client.batch_execute("CREATE SCHEMA empty")?;
    for (schema, existed) in [(SCHEMA, false), ("empty", true)] {
        match PgEngine::builder(db.url())
            .schema(schema)
            .read_only(true)
            .build()
        {
            Err(Error::NotMigrated {
                found, expected, ..
            }) => {
                assert_eq!(found, 0, "{schema}");
                assert_eq!(expected, PG_SCHEMA_VERSION, "{schema}");
            }
            other => panic!("{schema}: expected NotMigrated, got {other:?}"),
        }
        assert_eq!(schema_exists(&mut client, schema), existed, "{schema}");
        assert_eq!(objects_in(&mut client, schema), Vec::new(), "{schema}");
    }
    Ok(())
}

#[test]
fn the_lease_table_refuses_deletes_truncates_and_lower_epochs() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let engine = open(&db, None);
    let key = key("triggers", "k");
    engine.claim(&key, "h1", LEASE)?;
    engine.release(&key, "h1")?;
    engine.claim(&key, "h1", LEASE)?;
    let mut client = connect(&db);
    let leases = format!("\"{SCHEMA}\".leasehold_leases");
    for (what, sql) in [
        ("delete", format!("DELETE FROM {leases}")),
        ("truncate", format!("TRUNCATE {leases}")),
        (
            "lower the epoch",
            format!("UPDATE {leases} SET epoch = epoch - 1"),
        ),
        ("reset the epoch", format!("UPDATE {leases} SET epoch = 0")),
    ] {
        let refused = client.batch_execute(&sql);
        let e = refused.expect_err(what);
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().starts_with("leasehold:")),
            "{what}: refused by leasehold's trigger, not {e}"
        );
    }
    let lease = engine.lease(&key)?.expect("the row survives");
    assert_eq!(lease.epoch(), 2);
    assert_eq!(lease.holder(), Some("h1"));
    engine.release(&key, "h1")?;
    assert_eq!(engine.claim(&key, "h2", LEASE)?.epoch(), 3, "epochs go on");
    Ok(())
}

#[test]
fn a_schema_name_that_needs_quoting_is_quoted_everywhere() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    create_app_table(&db);
    let schema = "x\"; DROP TABLE public.app; --";
    let engine = PgEngine::builder(db.url()).schema(schema).build()?;
    let key = key("quoted", "k");
    let tenure = engine.claim(&key, "h1", LEASE)?;
    let mut client = engine.client()?;
    let mut tx = client.transaction()?;
    tenure.token().check_in(&mut tx)?;
    tx.execute(
        "INSERT INTO public.app (name, value) VALUES ('k', 'v')",
        &[],
    )?;
    tx.commit()?;
    assert_eq!(
        app_value(&db, "k").as_deref(),
        Some("v"),
        "the table survives"
    );
    assert_eq!(engine.schema(), schema);
    let mut raw = connect(&db);
    assert!(schema_exists(&mut raw, schema));
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. Tokens of another database
// ---------------------------------------------------------------------------

#[test]
fn a_token_checked_in_another_databases_transaction_is_refused() -> TestResult {
    let (Some(db1), Some(db2), Some(bare)) = (fresh_database(), fresh_database(), fresh_database())
    else {
        return Ok(());
    };
    for db in [&db1, &db2, &bare] {
        create_app_table(db);
        connect(db).execute(
            "INSERT INTO public.app (name, value) VALUES ('k', 'before')",
            &[],
        )?;
    }
    let engine1 = open(&db1, None);
    let engine2 = open(&db2, None);
    // The same schema name, key, holder and epoch on both: only the tables'
    // identity tells them apart.
    let key = key("twins", "k");
    let tenure1 = engine1.claim(&key, "h1", LEASE)?;
    let tenure2 = engine2.claim(&key, "h1", LEASE)?;
    assert_eq!(tenure1.epoch(), tenure2.epoch());
    for token in [tenure1.token(), engine1.token(&key, "h1")?] {
        // Another database with leasehold's tables, and one without.
        for (db, what) in [
            (&db2, "a twin database"),
            (&bare, "a database without leasehold"),
        ] {
            let mut client = connect(db);
            let mut tx = client.transaction()?;
            match token.check_in(&mut tx) {
                Err(Error::InvalidArgument { what: arg, .. }) => assert_eq!(arg, "token"),
                other => panic!("{what}: expected InvalidArgument, got {other:?}"),
            }
            tx.rollback()?;
            let guard = token.guard(1);
            let sql = format!("UPDATE public.app SET value = 'x' WHERE {}", guard.sql());
            let params: Vec<&(dyn ToSql + Sync)> = guard.params().collect();
            match client.execute(sql.as_str(), &params) {
                Ok(changed) => assert_eq!(changed, 0, "{what}: the fragment changed rows"),
                Err(e) => assert!(db.name() == bare.name(), "{what}: the fragment failed: {e}"),
            }
            assert_eq!(app_value(db, "k").as_deref(), Some("before"), "{what}");
        }
        // On its own database the same token and fragment pass.
        let mut client = connect(&db1);
        let mut tx = client.transaction()?;
        token.check_in(&mut tx)?;
        tx.rollback()?;
        let guard = token.guard(1);
        let sql = format!("UPDATE public.app SET value = 'x' WHERE {}", guard.sql());
        let params: Vec<&(dyn ToSql + Sync)> = guard.params().collect();
        assert_eq!(client.execute(sql.as_str(), &params)?, 1);
    }
    Ok(())
}

/// The engine's statements are prepared once per pooled connection. A
/// client lent out by `PgEngine::client` on which someone ran `DEALLOCATE
/// ALL` (or `DISCARD ALL`) loses them: the next operation on that
/// connection fails once, and the connection prepares them again; nothing
/// stays broken. With `prepared_statements(false)` nothing is prepared.
#[test]
fn statements_deallocated_under_the_engine_are_prepared_again() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let engine = PgEngine::builder(db.url())
        .schema(SCHEMA)
        .pool_size(1)
        .build()?;
    let k = key("ops", "a");
    engine.claim(&k, "h1", Duration::from_secs(60))?;
    engine.client()?.batch_execute("DEALLOCATE ALL")?;
    let mut failures = 0;
    for _ in 0..3 {
        match engine.claim(&k, "h1", Duration::from_secs(60)) {
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains("does not exist"), "{e}");
                assert!(e.is_transient(), "retrying prepares again: {e:?}");
            }
        }
    }
    assert!(failures <= 1, "{failures} failures");
    engine.claim(&k, "h1", Duration::from_secs(60))?;

    let unprepared = PgEngine::builder(db.url())
        .schema(SCHEMA)
        .pool_size(1)
        .prepared_statements(false)
        .build()?;
    unprepared.release(&k, "h1")?;
    unprepared.claim(&k, "h2", Duration::from_secs(60))?;
    let mut client = unprepared.client()?;
    // (Asked unnamed: a query by text would prepare itself first.)
    let rows = client.query_typed("SELECT count(*) FROM pg_prepared_statements", &[])?;
    assert_eq!(rows[0].get::<_, i64>(0), 0);
    Ok(())
}

/// Renewals falling due together share a transaction; a key whose row a
/// rival holds locked must not fail the others. With one of two trackers'
/// rows locked by another session for good, that tracker steps down when
/// its guarantee runs out, and the other keeps leading throughout.
#[test]
fn a_renewal_blocked_on_one_key_does_not_fail_the_others_in_its_batch() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    let engine = open(&db, None);
    let (a, b) = (key("ops", "a"), key("ops", "b"));
    let guarantee = Duration::from_millis(1500);
    let ta = engine.tracker(&a, "h").guarantee(guarantee).build()?;
    let tb = engine.tracker(&b, "h").guarantee(guarantee).build()?;
    assert!(ta.wait_leader().wait() && tb.wait_leader().wait());
    let (a_lost, b_lost) = (ta.wait_minion(), tb.wait_minion());
    let mut rival = connect(&db);
    let mut tx = rival.transaction()?;
    tx.execute(
        &format!(
            "SELECT 1 FROM {SCHEMA}.leasehold_leases WHERE namespace = 'ops' AND name = 'a' FOR UPDATE"
        ),
        &[],
    )?;
    assert_eq!(
        a_lost.wait_timeout(Duration::from_secs(30)),
        Some(true),
        "the tracker whose row is locked steps down"
    );
    // Two more guarantees: b is renewed all along.
    assert_eq!(b_lost.wait_timeout(guarantee * 2), None, "b kept leading");
    assert!(tb.is_leader());
    tx.rollback()?;
    Ok(())
}

/// A client lent by `PgEngine::client` and dropped inside a transaction of
/// its user's (begun by hand, never ended): failed, it used to break that
/// pooled connection for good (every engine call on it: "current
/// transaction is aborted"); open, the engine's next commit committed what
/// the user left. The engine now rolls it back before using it again.
#[test]
fn a_client_returned_inside_a_transaction_is_rolled_back_before_the_engine_uses_it() -> TestResult {
    let Some(db) = fresh_database() else {
        return Ok(());
    };
    create_app_table(&db);
    let engine = PgEngine::builder(db.url())
        .schema(SCHEMA)
        .pool_size(1)
        .build()?;
    let k = key("ops", "a");
    {
        let mut client = engine.client()?;
        client.batch_execute("BEGIN")?;
        assert!(client.batch_execute("SELECT 1/0").is_err());
    }
    engine.claim(&k, "h1", Duration::from_secs(60))?;
    {
        let mut client = engine.client()?;
        client.batch_execute("BEGIN; INSERT INTO public.app VALUES ('left', 'behind')")?;
    }
    engine.release(&k, "h1")?;
    assert_eq!(
        app_value(&db, "left"),
        None,
        "nothing the user left committed"
    );
    Ok(())
}

//! What a backend provides to run the conformance suite, and the harnesses
//! of this crate's backends (SQLite, memory).

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use leasehold::engine::{Engine, LeaseToken};
use leasehold::memory::{Memory, MemoryDatabase};
use leasehold::rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use leasehold::testing::{self, CheckOptions, CheckReport, RunReport, Strike, Workload};
use leasehold::{Backend, Error, HandleError, Key, ManualClock, Result, Sqlite};

use crate::support::{TempDb, t0};

/// How a test wants an engine opened. Unset fields keep the backend's
/// defaults (a system clock, its busy timeout and event retention, errors
/// logged).
#[derive(Clone, Default)]
pub struct Options {
    pub clock: Option<ManualClock>,
    pub busy_timeout: Option<Duration>,
    pub event_retention: Option<u64>,
    pub errors: Option<Arc<dyn HandleError>>,
}

impl Options {
    /// On `clock` (a clone: the test keeps moving it).
    pub fn manual(clock: &ManualClock) -> Options {
        Options {
            clock: Some(clock.clone()),
            ..Options::default()
        }
    }

    pub fn busy_timeout(mut self, timeout: Duration) -> Options {
        self.busy_timeout = Some(timeout);
        self
    }

    pub fn event_retention(mut self, events: u64) -> Options {
        self.event_retention = Some(events);
        self
    }

    pub fn errors(mut self, handler: impl HandleError) -> Options {
        self.errors = Some(Arc::new(handler));
        self
    }
}

/// An error handler shared between the test and the engine's builder.
struct SharedHandler(Arc<dyn HandleError>);

impl HandleError for SharedHandler {
    fn handle_error(&self, error: &Error) {
        self.0.handle_error(error);
    }
}

/// One step of a transaction of the caller's own (SQLite: a `BEGIN
/// IMMEDIATE` transaction on a connection of the engine's; memory:
/// `MemoryEngine::transaction`).
pub enum Step<'a, B: Backend> {
    /// Checks a token inside the transaction (its guard).
    Check(&'a LeaseToken<B>),
    /// Writes the application's value `name` = `value`.
    Put(&'a str, &'a str),
    /// Claims a lease inside the transaction.
    Claim(&'a Key, &'a str, Duration),
    /// Releases a lease inside the transaction.
    Release(&'a Key, &'a str),
    /// Runs code while the transaction is open (after the steps before it).
    Run(&'a mut dyn FnMut()),
}

/// What a backend provides to the conformance suite.
///
/// Setup and teardown are plain blocking calls: [`Harness::database`]
/// makes a fresh, empty database for one test (a temp file; on a server, a
/// fresh schema), and dropping the handle removes it.
pub trait Harness: 'static {
    /// The backend under test.
    type Backend: Backend;
    /// A database kept alive for the duration of one test.
    type Database: Send + Sync;

    /// The backend's name, as in the test paths (`sqlite::…`).
    const NAME: &'static str;
    /// Cases per run of the model-based property test (overridden by
    /// `LEASEHOLD_MODEL_CASES`).
    const MODEL_CASES: u32;
    /// Whether the database keeps one time mark for every key, so that an
    /// engine opened later starts no earlier than any engine's time (SQLite,
    /// memory). Without it (PostgreSQL: no row shared by all keys) the
    /// never-backwards rule holds per lease row, which is what decisions
    /// read; the tests then check the decisions, not the engine's clock.
    const TIME_MARK: bool = true;

    /// A fresh, empty database.
    fn database() -> Self::Database;

    /// Opens an engine on `db`; any number may be open on one database at
    /// once, like processes on one file.
    fn open(db: &Self::Database, options: Options) -> Result<Engine<Self::Backend>>;

    /// Runs `steps` in one transaction of the caller's own on `engine`'s
    /// database, in order, committing if every step succeeds; the first
    /// failing step's error rolls everything back and is returned.
    fn transaction(
        engine: &Engine<Self::Backend>,
        steps: &mut [Step<'_, Self::Backend>],
    ) -> Result<()>;

    /// The application's value `name`, as committed.
    fn read_back(engine: &Engine<Self::Backend>, name: &str) -> Result<Option<String>>;

    /// The multi-process side (worker processes on one database, nemeses,
    /// the kit's recorded writes), or `None` if the backend cannot run
    /// multi-process workloads.
    fn processes() -> Option<Box<dyn Processes<Self::Backend>>>;

    /// Writes `name` = `value` in a transaction of the caller's own,
    /// guarded by `token` (unguarded with `None`).
    fn guarded_write(
        engine: &Engine<Self::Backend>,
        token: Option<&LeaseToken<Self::Backend>>,
        name: &str,
        value: &str,
    ) -> Result<()> {
        match token {
            Some(token) => {
                Self::transaction(engine, &mut [Step::Check(token), Step::Put(name, value)])
            }
            None => Self::transaction(engine, &mut [Step::Put(name, value)]),
        }
    }
}

/// A fresh database with an engine on a manual clock at [`t0`].
pub fn manual_engine<H: Harness>() -> (H::Database, Engine<H::Backend>, ManualClock) {
    let db = H::database();
    let clock = ManualClock::new(t0());
    let engine = H::open(&db, Options::manual(&clock)).expect("open engine");
    (db, engine, clock)
}

/// Says on standard error (past the test harness's capture) that a test
/// does not apply to backend `H`.
pub fn not_applicable<H: Harness>(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{}::{test}: not applicable ({why}); skipped",
        H::NAME
    );
}

/// The multi-process side of a backend: the testing kit's workload
/// (worker processes on one database under nemeses), its recorded writes
/// (rows that say what the lease table said inside their transaction), and
/// reading a run back for the history checker. (The kit's [`Workload`]
/// and its workers run on SQLite today; a server backend joining here
/// brings its worker side to the kit.)
pub trait Processes<B: Backend> {
    /// Runs `workload` in the fresh directory `dir`, handing every strike
    /// to `on_strike` as it happens.
    fn run(
        &self,
        workload: &Workload,
        dir: &Path,
        on_strike: &mut dyn FnMut(&Strike),
    ) -> std::io::Result<RunReport>;

    /// Creates the database of `dir` with the writes table, keeping every
    /// event, and opens an engine on it (on `clock`, if given).
    fn prepare(&self, dir: &Path, clock: Option<ManualClock>) -> Result<Engine<B>>;

    /// An engine on the database of `dir`, to read a run back.
    fn engine(&self, dir: &Path) -> Result<Engine<B>>;

    /// Starts worker `proc` of `workload` on the database of `dir`; it runs
    /// until killed.
    fn spawn_worker(&self, workload: &Workload, dir: &Path, proc: u32) -> std::io::Result<Child>;

    /// Whether the database of `dir` is intact (after a crash), and at the
    /// schema version of this build; else what is wrong.
    fn intact(&self, dir: &Path) -> std::result::Result<(), String>;

    /// The kit's recorded write: a row of the writes table for `holder` in
    /// tenure `epoch`, guarded by `token` (unguarded with `None`).
    #[allow(clippy::too_many_arguments)]
    fn recorded_write(
        &self,
        engine: &Engine<B>,
        key: &Key,
        token: Option<&LeaseToken<B>>,
        proc: u32,
        holder: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<()>;

    /// Checks the run recorded in `dir` against its database.
    fn check(&self, dir: &Path, key: &Key, opts: CheckOptions) -> std::io::Result<CheckReport>;
}

// SQLite.

/// SQLite: a temp file per test; the application's values in a table of
/// that file.
pub struct SqliteHarness;

impl Harness for SqliteHarness {
    type Backend = Sqlite;
    type Database = TempDb;

    const NAME: &'static str = "sqlite";
    const MODEL_CASES: u32 = 96;

    fn database() -> TempDb {
        let db = TempDb::new();
        Connection::open(&db.path)
            .and_then(|conn| {
                conn.execute_batch(
                    "CREATE TABLE app_values (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
                )
            })
            .expect("the application's table");
        db
    }

    fn open(db: &TempDb, options: Options) -> Result<Engine<Sqlite>> {
        let mut builder = leasehold::Engine::builder(&db.path);
        if let Some(clock) = options.clock {
            builder = builder.clock(clock);
        }
        if let Some(timeout) = options.busy_timeout {
            builder = builder.busy_timeout(timeout);
        }
        if let Some(events) = options.event_retention {
            builder = builder.event_retention(events);
        }
        if let Some(errors) = options.errors {
            builder = builder.error_handler(SharedHandler(errors));
        }
        builder.build()
    }

    fn transaction(engine: &Engine<Sqlite>, steps: &mut [Step<'_, Sqlite>]) -> Result<()> {
        let mut conn = engine.connection()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for step in steps {
            match step {
                Step::Check(token) => token.check_in(&tx)?,
                Step::Put(name, value) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO app_values (name, value) VALUES (?1, ?2)",
                        [*name, *value],
                    )?;
                }
                Step::Claim(key, holder, duration) => {
                    engine.in_txn(&tx)?.claim(key, holder, *duration)?;
                }
                Step::Release(key, holder) => engine.in_txn(&tx)?.release(key, holder)?,
                Step::Run(f) => f(),
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_back(engine: &Engine<Sqlite>, name: &str) -> Result<Option<String>> {
        Ok(engine
            .connection()?
            .query_row(
                "SELECT value FROM app_values WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn processes() -> Option<Box<dyn Processes<Sqlite>>> {
        Some(Box::new(SqliteProcesses))
    }
}

/// SQLite's multi-process side: the testing kit's workload, whose workers
/// are this test binary run again into its `worker` test.
struct SqliteProcesses;

/// The file a run's database lives in.
const RUN_DB: &str = "db.sqlite";

fn worker_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

impl Processes<Sqlite> for SqliteProcesses {
    fn run(
        &self,
        workload: &Workload,
        dir: &Path,
        on_strike: &mut dyn FnMut(&Strike),
    ) -> std::io::Result<RunReport> {
        workload.run_observed(dir, &worker_command, on_strike)
    }

    fn prepare(&self, dir: &Path, clock: Option<ManualClock>) -> Result<Engine<Sqlite>> {
        let mut builder = leasehold::Engine::builder(dir.join(RUN_DB)).event_retention(10_000_000);
        if let Some(clock) = clock {
            builder = builder.clock(clock);
        }
        let engine = builder.build()?;
        testing::create_writes_table(&*engine.connection()?)?;
        Ok(engine)
    }

    fn engine(&self, dir: &Path) -> Result<Engine<Sqlite>> {
        leasehold::Engine::open(dir.join(RUN_DB))
    }

    fn spawn_worker(&self, workload: &Workload, dir: &Path, proc: u32) -> std::io::Result<Child> {
        let mut cmd = worker_command();
        workload.worker_config(dir, proc).set_env(&mut cmd)?;
        cmd.stdout(std::process::Stdio::null());
        cmd.spawn()
    }

    fn intact(&self, dir: &Path) -> std::result::Result<(), String> {
        let conn = Connection::open(dir.join(RUN_DB)).map_err(|e| e.to_string())?;
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if integrity != "ok" {
            return Err(format!("integrity_check: {integrity}"));
        }
        let version = leasehold::schema_version(&conn).map_err(|e| e.to_string())?;
        if version != leasehold::SCHEMA_VERSION {
            return Err(format!(
                "schema version {version}, not {}",
                leasehold::SCHEMA_VERSION
            ));
        }
        Ok(())
    }

    fn recorded_write(
        &self,
        engine: &Engine<Sqlite>,
        key: &Key,
        token: Option<&LeaseToken<Sqlite>>,
        proc: u32,
        holder: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<()> {
        testing::guarded_write(engine, key, token, proc, holder, epoch, seq)
    }

    fn check(&self, dir: &Path, key: &Key, opts: CheckOptions) -> std::io::Result<CheckReport> {
        testing::check(&dir.join(RUN_DB), dir, key, opts)
    }
}

// Memory.

/// The in-memory store: a `MemoryDatabase` per test; the application's
/// values are the memory transaction's own.
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    type Backend = Memory;
    type Database = MemoryDatabase;

    const NAME: &'static str = "memory";
    // Cheap: four times SQLite's cases.
    const MODEL_CASES: u32 = 384;

    fn database() -> MemoryDatabase {
        MemoryDatabase::new()
    }

    fn open(db: &MemoryDatabase, options: Options) -> Result<Engine<Memory>> {
        let mut builder = db.engine();
        if let Some(clock) = options.clock {
            builder = builder.clock(clock);
        }
        if let Some(timeout) = options.busy_timeout {
            builder = builder.busy_timeout(timeout);
        }
        if let Some(events) = options.event_retention {
            builder = builder.event_retention(events);
        }
        if let Some(errors) = options.errors {
            builder = builder.error_handler(SharedHandler(errors));
        }
        builder.build()
    }

    fn transaction(engine: &Engine<Memory>, steps: &mut [Step<'_, Memory>]) -> Result<()> {
        engine.transaction(|tx| {
            for step in steps.iter_mut() {
                match step {
                    Step::Check(token) => tx.check_in(token)?,
                    Step::Put(name, value) => tx.put(name, value),
                    Step::Claim(key, holder, duration) => {
                        tx.claim(key, holder, *duration)?;
                    }
                    Step::Release(key, holder) => tx.release(key, holder)?,
                    Step::Run(f) => f(),
                }
            }
            Ok(())
        })
    }

    fn read_back(engine: &Engine<Memory>, name: &str) -> Result<Option<String>> {
        engine.transaction(|tx| Ok(tx.get(name)))
    }

    fn processes() -> Option<Box<dyn Processes<Memory>>> {
        None
    }
}

// PostgreSQL.

#[cfg(feature = "postgres")]
pub use pg::PostgresHarness;

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use leasehold::postgres::client::{Client, NoTls};
    use leasehold::postgres::{PgEngine, Postgres};
    use leasehold::testing::{PgDatabase, PgServer};

    /// A database of its own on the shared test server, with the engine's
    /// tables in a schema whose name needs quoting and the application's
    /// table in `public`; dropped when the test ends.
    pub struct PgSchema {
        pub db: PgDatabase,
    }

    /// The schema of leasehold's tables in every test database.
    pub const SCHEMA: &str = "Lease \"Hold\"";

    /// The application's table.
    pub const TABLE: &str = "public.app_values";

    /// PostgreSQL: a database per test on a server shared by the test
    /// process (started from the machine's binaries, or
    /// `$LEASEHOLD_TEST_PG`).
    pub struct PostgresHarness;

    fn server() -> &'static PgServer {
        PgServer::shared().expect(
            "no PostgreSQL server for the conformance suite (install postgresql, or set \
             LEASEHOLD_TEST_PG)",
        )
    }

    impl Harness for PostgresHarness {
        type Backend = Postgres;
        type Database = PgSchema;

        const NAME: &'static str = "postgres";
        const MODEL_CASES: u32 = 48;
        const TIME_MARK: bool = false;

        fn database() -> PgSchema {
            let db = server().create_database().expect("a test database");
            let mut client = Client::connect(db.url(), NoTls).expect("connect to the test server");
            client
                .batch_execute(&format!(
                    "CREATE TABLE {TABLE} (name text PRIMARY KEY, value text NOT NULL)"
                ))
                .expect("the application's table");
            PgSchema { db }
        }

        fn open(db: &PgSchema, options: Options) -> Result<Engine<Postgres>> {
            let mut builder = PgEngine::builder(db.db.url()).schema(SCHEMA);
            if let Some(clock) = options.clock {
                builder = builder.clock(clock);
            }
            if let Some(timeout) = options.busy_timeout {
                builder = builder.busy_timeout(timeout);
            }
            if let Some(events) = options.event_retention {
                builder = builder.event_retention(events);
            }
            if let Some(errors) = options.errors {
                builder = builder.error_handler(SharedHandler(errors));
            }
            builder.build()
        }

        fn transaction(engine: &Engine<Postgres>, steps: &mut [Step<'_, Postgres>]) -> Result<()> {
            let table = TABLE;
            let mut client = engine.client()?;
            let mut tx = client.transaction()?;
            for step in steps {
                match step {
                    Step::Check(token) => token.check_in(&mut tx)?,
                    Step::Put(name, value) => {
                        tx.execute(
                            &format!(
                                "INSERT INTO {table} (name, value) VALUES ($1, $2) \
                                 ON CONFLICT (name) DO UPDATE SET value = excluded.value"
                            ),
                            &[name, value],
                        )?;
                    }
                    Step::Claim(key, holder, duration) => {
                        engine.in_txn(&mut tx)?.claim(key, holder, *duration)?;
                    }
                    Step::Release(key, holder) => {
                        engine.in_txn(&mut tx)?.release(key, holder)?;
                    }
                    Step::Run(f) => f(),
                }
            }
            tx.commit()?;
            Ok(())
        }

        fn read_back(engine: &Engine<Postgres>, name: &str) -> Result<Option<String>> {
            let table = TABLE;
            let row = engine.client()?.query_opt(
                &format!("SELECT value FROM {table} WHERE name = $1"),
                &[&name],
            )?;
            Ok(row.map(|r| r.get(0)))
        }

        fn processes() -> Option<Box<dyn Processes<Postgres>>> {
            Some(Box::new(PgProcesses::default()))
        }
    }

    /// PostgreSQL's multi-process side: a database of its own per run
    /// directory, the engine's tables and the writes table in schema `lh`;
    /// workers are this test binary run again, as for SQLite.
    #[derive(Default)]
    struct PgProcesses {
        databases: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, PgDatabase>>,
    }

    const RUN_SCHEMA: &str = "lh";

    impl PgProcesses {
        /// The run database of `dir` (made on first use).
        fn database(&self, dir: &Path) -> testing::RunDatabase {
            let mut dbs = self.databases.lock().expect("databases");
            let db = dbs
                .entry(dir.to_owned())
                .or_insert_with(|| server().create_database().expect("a run database"));
            testing::RunDatabase::Postgres {
                url: db.url().to_owned(),
                schema: RUN_SCHEMA.to_owned(),
            }
        }

        fn url(&self, dir: &Path) -> String {
            match self.database(dir) {
                testing::RunDatabase::Postgres { url, .. } => url,
                _ => unreachable!("a PostgreSQL run"),
            }
        }
    }

    impl Processes<Postgres> for PgProcesses {
        fn run(
            &self,
            workload: &Workload,
            dir: &Path,
            on_strike: &mut dyn FnMut(&Strike),
        ) -> std::io::Result<RunReport> {
            workload
                .clone()
                .with_database(self.database(dir))
                .run_observed(dir, &worker_command, on_strike)
        }

        fn prepare(&self, dir: &Path, clock: Option<ManualClock>) -> Result<Engine<Postgres>> {
            let url = self.url(dir);
            let mut builder = PgEngine::builder(&url)
                .schema(RUN_SCHEMA)
                .event_retention(10_000_000);
            if let Some(clock) = clock {
                builder = builder.clock(clock);
            }
            let engine = builder.build()?;
            testing::pg_create_writes_table(&mut *engine.client()?, RUN_SCHEMA)?;
            Ok(engine)
        }

        fn engine(&self, dir: &Path) -> Result<Engine<Postgres>> {
            PgEngine::builder(&self.url(dir)).schema(RUN_SCHEMA).build()
        }

        fn spawn_worker(
            &self,
            workload: &Workload,
            dir: &Path,
            proc: u32,
        ) -> std::io::Result<Child> {
            let mut cmd = worker_command();
            workload
                .clone()
                .with_database(self.database(dir))
                .worker_config(dir, proc)
                .set_env(&mut cmd)?;
            cmd.stdout(std::process::Stdio::null());
            cmd.spawn()
        }

        fn intact(&self, dir: &Path) -> std::result::Result<(), String> {
            // A read-only engine opens only on this build's schema, its
            // migrations' checksums intact.
            PgEngine::builder(&self.url(dir))
                .schema(RUN_SCHEMA)
                .read_only(true)
                .build()
                .map(drop)
                .map_err(|e| e.to_string())
        }

        fn recorded_write(
            &self,
            engine: &Engine<Postgres>,
            key: &Key,
            token: Option<&LeaseToken<Postgres>>,
            proc: u32,
            holder: &str,
            epoch: u64,
            seq: u64,
        ) -> Result<()> {
            testing::pg_guarded_write(engine, key, token, proc, holder, epoch, seq)
        }

        fn check(&self, dir: &Path, key: &Key, opts: CheckOptions) -> std::io::Result<CheckReport> {
            testing::pg_check(&self.url(dir), RUN_SCHEMA, dir, key, opts)
        }
    }
}

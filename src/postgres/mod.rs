//! The PostgreSQL backend (feature `postgres`): the same leases, epochs and
//! guards in a schema of a PostgreSQL database (15 or later), for services
//! that run on several hosts.
//!
//! - **Time is the server's** (`clock_timestamp()`), read inside each
//!   operation's transaction after its row is locked, so hosts with skewed
//!   clocks agree; each row's last write time keeps it from ever going
//!   backwards (no row shared by all keys is written).
//! - **Every operation locks the row it decides on** (`FOR UPDATE`; a key's
//!   first claim inserts the row if absent, then locks it); a **guard
//!   shares it** (`FOR SHARE`) until the guarded transaction ends, so a rival
//!   claim waits for that transaction, and a guard queued behind a claim
//!   re-checks the new row and fails.
//! - **Deadlines**: each of the engine's transactions runs with
//!   `statement_timeout` and `lock_timeout` set to its budget (the busy
//!   timeout), reported as [`Error::Busy`]; its connections have a connect
//!   timeout, TCP keepalives and a TCP user timeout, and an
//!   `idle_in_transaction_session_timeout`, so a dead network or a paused
//!   process cannot hold a lease row for long.
//! - **Hand-over is pushed**: every new tenure, release, revoke and pin
//!   change is announced with `pg_notify` right after its commit; one
//!   listening connection per engine (which never opens a transaction)
//!   wakes waiters and trackers; expiries are still found by timers. After
//!   the listener reconnects, everything counts as changed. Behind a pooler
//!   in transaction mode `LISTEN` does not work: the engine finds out
//!   (its own notice never comes back) and polls.
//! - **TLS** (rustls) as the connection string's `sslmode` says
//!   (`disable`, `prefer`, `require`): encrypted but unauthenticated
//!   without root certificates, verified chain and host name with
//!   [`PgBuilder::tls_root_certificates`]; every connection of the engine
//!   uses it.
//!
//! ```no_run
//! use std::time::Duration;
//! use leasehold::Key;
//! use leasehold::postgres::PgEngine;
//!
//! let engine = PgEngine::connect("host=/run/postgresql user=app dbname=app")?;
//! let key = Key::new("app", "scheduler")?;
//! let tenure = engine.claim(&key, "replica-a", Duration::from_secs(30))?;
//! let mut client = engine.client()?;
//! let mut tx = client.transaction()?;
//! tenure.token().check_in(&mut tx)?; // FOR SHARE on the lease row until commit
//! tx.execute("UPDATE jobs SET owner_epoch = $1", &[&(tenure.epoch() as i64)])?;
//! tx.commit()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod api;
pub(crate) mod error;
mod pool;
pub(crate) mod schema;
pub(crate) mod store;
#[cfg(feature = "testing")]
pub(crate) mod testing;
mod tls;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::core::backend::{Backend, ChangeFeed, Changes, Nudge, sealed};
use crate::core::clock::{Clock, LocalTime, SystemClock, to_ms};
use crate::core::error::{Context, Error, Result, StorageError, StorageKind};
use crate::core::key::Key;
use crate::core::store::Store;
use crate::driver::{HandleError, LogErrors};
use crate::engine::Engine;
use crate::postgres::error::fail;
use crate::postgres::pool::redact;
pub use crate::postgres::pool::{PgConnectError, PgConnection, PgManager};
use crate::postgres::schema::quote_ident;
use crate::postgres::store::{PgStore, Sql};

pub use crate::postgres::api::{PgGuard, PgInTxn, PgOp, PgTxn};

pub use crate::postgres::schema::{PG_SCHEMA_VERSION, PgMigration, pg_migrations};

/// `url`, a connection string in any form [`Engine::<Postgres>::builder`]
/// takes, with its password hidden: for messages and logs (the command
/// line prints connection strings only through it).
pub fn redacted(url: &str) -> String {
    redact(url)
}

/// The lease engine on PostgreSQL.
pub type PgEngine = Engine<Postgres>;
/// One tenure, on PostgreSQL.
pub type PgTenure = crate::engine::Tenure<Postgres>;
/// A token, on PostgreSQL.
pub type PgLeaseToken = crate::engine::LeaseToken<Postgres>;
/// A tracker, on PostgreSQL.
pub type PgLeaseTracker = crate::engine::LeaseTracker<Postgres>;

/// A pooled PostgreSQL connection of an engine; derefs to
/// [`postgres::Client`]. A transaction left open rolls back when the client
/// drops it (as `postgres::Transaction` does).
pub type PgPooledClient = r2d2::PooledConnection<pool::PgManager>;

pub use postgres as client;

/// The PostgreSQL backend; see the [module docs](self).
pub struct Postgres {
    pub(crate) pool: r2d2::Pool<pool::PgManager>,
    /// For the listener and for cancelling.
    pub(crate) config: postgres::Config,
    /// The TLS connector of every connection (see `tls`).
    tls: tls::Tls,
    pub(crate) schema: String,
    pub(crate) sql: Sql,
    /// The quoted schema, for SQL rendered elsewhere.
    pub(crate) quoted: String,
    /// A clock of the caller's (tests): then the engine's time is its
    /// reading, never the server's.
    pub(crate) time: Option<LocalTime>,
    clock: Arc<dyn Clock>,
    /// The engine's estimate of the server's clock, for planning
    /// renewals and stepping down (decisions read the server's).
    pub(crate) server_time: ServerTime,
    pub(crate) busy_timeout: Duration,
    pub(crate) event_retention: u64,
    pub(crate) read_only: bool,
    /// The identity of the schema's tables (`leasehold_instance`), which
    /// tokens' guards compare.
    pub(crate) instance: String,
    /// The notification channel of this schema.
    pub(crate) channel: String,
    /// What the listener heard, for the change feed.
    heard: Arc<Mutex<Heard>>,
    /// The listener's connection settings.
    listen: bool,
    /// Where the connection string points, for messages.
    pub(crate) describe: String,
}

/// An upper bound on the server's clock, from the newest reading worth
/// keeping: a reading of `S` µs by a query sent at local instant `sent`
/// was taken no earlier than `sent`, so the server's clock now is at most
/// `S + (now - sent)` (clock rates agree to well under a millisecond per
/// ten seconds). Trackers compare leases to this, so they step down no
/// later than the server lets the lease lapse, whatever the skew between
/// the hosts' clocks.
#[derive(Debug, Default)]
pub(crate) struct ServerTime {
    best: Mutex<Option<Reading>>,
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    server_us: i64,
    sent: std::time::Instant,
    round_trip: Duration,
}

impl ServerTime {
    /// Keeps a reading unless a recent one was tighter: one that waited on
    /// a lock bounds the clock loosely (still from above).
    pub(crate) fn observe(&self, server_us: i64, sent: std::time::Instant) {
        let round_trip = sent.elapsed();
        let reading = Reading {
            server_us,
            sent,
            round_trip,
        };
        let Ok(mut best) = self.best.lock() else {
            return;
        };
        let keep = match *best {
            None => true,
            Some(old) => {
                round_trip <= old.round_trip * 2 + Duration::from_millis(2)
                    || old.sent.elapsed() > Duration::from_secs(5)
            }
        };
        if keep {
            *best = Some(reading);
        }
    }

    /// The estimate in milliseconds (rounded up), if any reading was kept.
    pub(crate) fn now_ms(&self) -> Option<i64> {
        let best = (*self.best.lock().ok()?)?;
        let elapsed = i64::try_from(best.sent.elapsed().as_micros()).unwrap_or(i64::MAX / 2);
        Some((best.server_us.saturating_add(elapsed) + 999).div_euclid(1000))
    }
}

/// What the listener heard since the change feed last asked.
#[derive(Default)]
struct Heard {
    keys: HashSet<Key>,
    all: bool,
    /// The listener works (its own notice came back).
    live: bool,
}

impl sealed::Sealed for Postgres {}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("database", &self.describe)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Configures and connects an engine on PostgreSQL; see
/// [`Engine::<Postgres>::builder`](crate::engine::Engine::builder).
#[must_use = "a builder does nothing until build() is called"]
pub struct PgBuilder {
    config: std::result::Result<postgres::Config, String>,
    url: String,
    schema: String,
    clock: Option<Arc<dyn Clock>>,
    busy_timeout: Duration,
    pool_size: u32,
    event_retention: u64,
    watch_interval: Duration,
    idle_in_transaction: Duration,
    listen: bool,
    prepared_statements: bool,
    read_only: bool,
    tls_roots: Option<std::path::PathBuf>,
    errors: Box<dyn HandleError>,
}

impl fmt::Debug for PgBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBuilder")
            .field("schema", &self.schema)
            .field("busy_timeout", &self.busy_timeout)
            .finish_non_exhaustive()
    }
}

impl PgBuilder {
    /// The schema of leasehold's tables. Default: `public`. Created if
    /// missing (when the engine is not read-only).
    pub fn schema(mut self, schema: &str) -> PgBuilder {
        schema.clone_into(&mut self.schema);
        self
    }

    /// A clock of yours to read instead of the server's (for tests that
    /// move time by hand): every engine on the database must then use one
    /// that agrees. Default: none, the server's clock.
    pub fn clock(mut self, clock: impl Clock) -> PgBuilder {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// How long an operation may take, lock waits included, before failing
    /// with [`Error::Busy`] (`statement_timeout` and `lock_timeout` of its
    /// transaction), and how long it waits for a pooled connection. Default:
    /// 5 seconds.
    pub fn busy_timeout(mut self, timeout: Duration) -> PgBuilder {
        self.busy_timeout = timeout;
        self
    }

    /// The most connections the pool opens. Default: 8.
    pub fn pool_size(mut self, size: u32) -> PgBuilder {
        self.pool_size = size;
        self
    }

    /// How many history events the database keeps (at least the newest this
    /// many), at least 1. Default: 10,000.
    pub fn event_retention(mut self, events: u64) -> PgBuilder {
        self.event_retention = events;
        self
    }

    /// How often, at most, the background thread looks at the database
    /// while anything waits or tracks, when notifications cannot be heard
    /// (a pooler in transaction mode). Default: 100 ms.
    pub fn watch_interval(mut self, interval: Duration) -> PgBuilder {
        self.watch_interval = interval;
        self
    }

    /// `idle_in_transaction_session_timeout` of the engine's connections: a
    /// process paused inside one of the engine's transactions loses its
    /// session (and its row locks) after this long. Default: 10 seconds.
    /// Set it on your own connections too (see the crate's README).
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> PgBuilder {
        self.idle_in_transaction = timeout;
        self
    }

    /// Root certificates (a PEM file) that the server's certificate must
    /// chain to, naming the host connected to (libpq's
    /// `sslmode=verify-full`). Without them, a TLS session (`sslmode`
    /// `prefer`, the default, or `require`) is encrypted but the server
    /// is not authenticated, as libpq's `require` without a root
    /// certificate. The command line reads them from `PGSSLROOTCERT`.
    /// Whether TLS is used at all is the connection string's `sslmode`
    /// (`disable`, `prefer`, `require`); given root certificates, over
    /// TCP, `prefer` (the default) counts as `require`, so that a server
    /// (or anyone between) saying it offers no TLS is refused rather than
    /// spoken to in clear, and `disable`, or a string with only `hostaddr`
    /// (no name to check), is refused by `build`.
    pub fn tls_root_certificates(mut self, pem_file: impl Into<std::path::PathBuf>) -> PgBuilder {
        self.tls_roots = Some(pem_file.into());
        self
    }

    /// One client outside any engine, with this builder's connection
    /// string and TLS settings (and a 10-second connect timeout unless the
    /// string sets one), for work beside the engine that needs no
    /// leasehold schema: the command line's demo looks at a database with
    /// it before anything is migrated.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a connection string or root
    /// certificates that cannot be used; [`Error::Open`] if the server
    /// cannot be reached or refuses the session.
    pub fn connect_client(&self) -> Result<postgres::Client> {
        let mut config = self
            .config
            .clone()
            .map_err(|e| Error::invalid("connection string", &redact(&self.url), e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let tls = tls::connector(&mut config, self.tls_roots.as_deref())?;
        let limit = config.get_connect_timeout().copied().unwrap_or_default() + self.busy_timeout;
        pool::connect(&config, &tls, limit).map_err(|e| {
            connect_error(
                &describe(&config),
                e,
                self.busy_timeout,
                self.tls_roots.as_deref(),
            )
        })
    }

    /// Whether to listen for notifications (`LISTEN`); off, the engine
    /// polls at the watch interval. Default: `true`.
    pub fn listen(mut self, listen: bool) -> PgBuilder {
        self.listen = listen;
        self
    }

    /// Whether the engine's own transactions run its statements as named
    /// prepared statements, prepared once per pooled connection (each then
    /// costs one round trip and no planning). Turn it off behind a pooler
    /// in transaction mode that does not carry prepared statements across
    /// server connections (PgBouncer before 1.21, or with
    /// `max_prepared_statements = 0`): each statement then runs unnamed,
    /// planned every time. Guards in your transactions never prepare
    /// anything. Opening the engine (`build`: the schema's version, the
    /// migration) still runs a few queries by text, which the `postgres`
    /// crate prepares as named statements: behind such a pooler, open
    /// through a session-mode pool or straight to the server. Default:
    /// `true`.
    pub fn prepared_statements(mut self, prepare: bool) -> PgBuilder {
        self.prepared_statements = prepare;
        self
    }

    /// Opens for reading only: no migration, no write; the schema must be
    /// this build's. Default: `false`.
    pub fn read_only(mut self, read_only: bool) -> PgBuilder {
        self.read_only = read_only;
        self
    }

    /// Where errors of background work go. Default: [`LogErrors`].
    pub fn error_handler(mut self, handler: impl HandleError) -> PgBuilder {
        self.errors = Box::new(handler);
        self
    }

    /// Connects, migrates the schema if needed (never for a read-only
    /// engine) and builds the pool.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidArgument`] for a connection string that does not
    ///   parse, an empty schema name, a zero pool size or event retention,
    ///   a busy timeout over an hour;
    /// - [`Error::Open`] if the server cannot be reached or refuses us;
    /// - [`Error::SchemaTooNew`], [`Error::SchemaMismatch`],
    ///   [`Error::SchemaConflict`], [`Error::NotMigrated`] as for SQLite.
    pub fn build(self) -> Result<PgEngine> {
        let mut config = self
            .config
            .map_err(|e| Error::invalid("connection string", &redact(&self.url), e))?;
        if self.schema.is_empty() || self.schema.len() > 63 {
            return Err(Error::invalid(
                "schema",
                &self.schema,
                "must be 1 to 63 bytes long",
            ));
        }
        // PostgreSQL takes any quoted name but NUL, and `"public "` is not
        // `public`: a name with a control character, or with whitespace
        // around it (a stray space in an environment variable), would put
        // the leases of some processes in a schema of its own, where the
        // others never see them. Names are held to the rules of keys'.
        crate::core::key::validate_name("schema", &self.schema)?;
        if self.pool_size == 0 {
            return Err(Error::invalid("pool size", "0", "must be at least 1"));
        }
        if self.event_retention == 0 {
            return Err(Error::invalid("event retention", "0", "must be at least 1"));
        }
        if self.busy_timeout > Duration::from_secs(3600) {
            return Err(Error::invalid(
                "busy timeout",
                &format!("{:?}", self.busy_timeout),
                "must be at most one hour",
            ));
        }
        if self.watch_interval.is_zero() || self.watch_interval > Duration::from_secs(60) {
            return Err(Error::invalid(
                "watch interval",
                &format!("{:?}", self.watch_interval),
                "must be between 1ns and 60s",
            ));
        }
        // A dead network must not hold a call for long: keepalives and a
        // TCP user timeout end a connection whose peer stopped answering.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(
                self.busy_timeout
                    .clamp(Duration::from_secs(1), Duration::from_secs(10)),
            );
        }
        // Unacknowledged data is given up on after TCP_USER_TIMEOUT, and a
        // silent peer is probed after two idle seconds, so a call on a cut
        // network ends within about six seconds (settings given in the
        // connection string win; the libpq defaults, two hours idle, lose).
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(6));
        }
        config.keepalives(true);
        if config.get_keepalives_idle() >= Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(2));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(1));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
        if config.get_application_name().is_none() {
            config.application_name("leasehold");
        }
        let tls = tls::connector(&mut config, self.tls_roots.as_deref())?;
        let describe = describe(&config);
        let budget = self.busy_timeout;
        let open_err = |e: postgres::Error| Error::Open {
            path: describe.clone().into(),
            source: crate::postgres::error::storage(e, budget),
        };
        // The whole connect, startup exchange included, within the connect
        // timeout plus the busy timeout.
        let connect_limit = config.get_connect_timeout().copied().unwrap_or(budget) + budget;
        let mut first = pool::connect(&config, &tls, connect_limit)
            .map_err(|e| connect_error(&describe, e, budget, self.tls_roots.as_deref()))?;
        // Opening (reading the version, migrating) runs under the engine's
        // deadlines, not the role's or the connection string's: a
        // `statement_timeout` of a few milliseconds set on the role would
        // otherwise cancel the migration (reported as a lock waited on for
        // the whole busy timeout), an `idle_in_transaction_session_timeout`
        // would end its session between two statements, and without any a
        // migration waiting for another would wait for ever. This session
        // is dropped once open.
        let ms = budget.as_millis().max(1);
        first
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
                 SET idle_in_transaction_session_timeout = {}",
                self.idle_in_transaction.as_millis()
            ))
            .map_err(open_err)?;
        let server_time = ServerTime::default();
        let sent = std::time::Instant::now();
        let server_us: i64 = first
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
                &[],
            )
            .map_err(open_err)?
            .get(0);
        server_time.observe(server_us, sent);
        let found = schema::schema_version(&mut first, &self.schema, budget)?;
        if self.read_only {
            if found != PG_SCHEMA_VERSION {
                if found > PG_SCHEMA_VERSION {
                    return Err(Error::SchemaTooNew {
                        found,
                        supported: PG_SCHEMA_VERSION,
                    });
                }
                return Err(Error::NotMigrated {
                    path: format!("{describe} (schema {})", self.schema).into(),
                    found,
                    expected: PG_SCHEMA_VERSION,
                });
            }
            schema::verify(&mut first, &self.schema, budget)?;
        } else {
            schema::migrate(&mut first, &self.schema, budget)?;
        }
        let instance = schema::instance(&mut first, &self.schema, budget)?;
        drop(first);
        let idle = self.idle_in_transaction.as_millis();
        let manager = pool::PgManager::new(
            config.clone(),
            tls.clone(),
            connect_limit,
            self.prepared_statements,
        );
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(budget.max(Duration::from_millis(1)))
            .connection_customizer(Box::new(SessionSettings {
                idle_in_transaction_ms: idle,
            }))
            .build_unchecked(manager);
        let quoted = quote_ident(&self.schema);
        let (time, clock): (Option<LocalTime>, Arc<dyn Clock>) = match self.clock {
            Some(clock) => (Some(LocalTime::resume(Arc::clone(&clock), 0, 0)), clock),
            None => (None, Arc::new(SystemClock)),
        };
        let backend = Postgres {
            pool,
            config,
            tls,
            sql: Sql::new(&quoted),
            quoted,
            channel: format!("leasehold_{:016x}", fnv(&self.schema)),
            schema: self.schema,
            time,
            clock,
            server_time,
            busy_timeout: budget,
            event_retention: self.event_retention,
            read_only: self.read_only,
            instance,
            heard: Arc::new(Mutex::new(Heard::default())),
            listen: self.listen,
            describe,
        };
        Ok(Engine::from_backend(
            backend,
            self.watch_interval,
            self.errors,
        ))
    }
}

/// What the engine's connections are set to when opened.
#[derive(Debug)]
struct SessionSettings {
    idle_in_transaction_ms: u128,
}

impl r2d2::CustomizeConnection<pool::PgConnection, PgConnectError> for SessionSettings {
    fn on_acquire(
        &self,
        client: &mut pool::PgConnection,
    ) -> std::result::Result<(), PgConnectError> {
        client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {}",
                self.idle_in_transaction_ms
            ))
            .map_err(PgConnectError::Server)
    }
}

/// A 64-bit FNV-1a hash (the channel name of a schema).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where a configuration points: hosts, port and database, for messages.
/// A connect that failed, as [`Error::Open`] on `describe`: the server's
/// refusal (with what to do if TLS refused it), or silence for `waited`.
fn connect_error(
    describe: &str,
    e: PgConnectError,
    budget: Duration,
    roots: Option<&std::path::Path>,
) -> Error {
    let source = match e {
        PgConnectError::Server(e) => {
            let hint = tls::hint(&e, roots);
            crate::postgres::error::storage_saying(e, budget, hint)
        }
        silent @ PgConnectError::Silent(waited) => {
            StorageError::new(StorageKind::Busy { waited }, silent)
        }
    };
    Error::Open {
        path: describe.into(),
        source,
    }
}

fn describe(config: &postgres::Config) -> String {
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
    }
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}:{port}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

impl Engine<Postgres> {
    /// Connects to PostgreSQL with default settings; see
    /// [`Engine::<Postgres>::builder`](Engine::builder).
    ///
    /// # Errors
    ///
    /// As [`PgBuilder::build`].
    pub fn connect(url: &str) -> Result<PgEngine> {
        Engine::<Postgres>::builder(url).build()
    }

    /// A builder to configure the engine before connecting with `url`: a
    /// `postgres://` or `postgresql://` URL or a `key=value` string.
    pub fn builder(url: &str) -> PgBuilder {
        PgBuilder {
            config: url.parse::<postgres::Config>().map_err(|e| {
                // The reason is in the error's source ("unknown option …").
                let why = match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                // libpq's ways of asking for a verified server, which the
                // `postgres` crate does not parse: say what does the same.
                if ["verify-ca", "verify-full", "sslrootcert"]
                    .iter()
                    .any(|libpq| url.contains(libpq))
                {
                    format!(
                        "{why} (for a verified server, give root certificates with \
                         tls_root_certificates, or PGSSLROOTCERT on the command line, \
                         and sslmode=require: the host name is then checked too)"
                    )
                } else {
                    why
                }
            }),
            url: url.to_owned(),
            schema: "public".to_owned(),
            clock: None,
            busy_timeout: Duration::from_secs(5),
            pool_size: 8,
            event_retention: 10_000,
            watch_interval: Duration::from_millis(100),
            idle_in_transaction: Duration::from_secs(10),
            listen: true,
            prepared_statements: true,
            read_only: false,
            tls_roots: None,
            errors: Box::new(LogErrors),
        }
    }

    /// The schema of leasehold's tables.
    pub fn schema(&self) -> &str {
        &self.backend().schema
    }
}

impl Postgres {
    /// A pooled client, waiting at most `budget`.
    pub(crate) fn client_within(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
    ) -> Result<PgPooledClient> {
        let budget = budget.min(self.busy_timeout);
        self.pool
            .get_timeout(budget.max(Duration::from_millis(1)))
            .map_err(|e| Error::PoolTimeout {
                context: ctx(),
                waited: budget,
                size: self.pool.max_size(),
                last_error: e.to_string(),
            })
    }

    /// `BEGIN` with the transaction's deadlines, in one round trip. On a
    /// connection lent to a user since (`PgEngine::client`), a `ROLLBACK`
    /// first: it may have come back inside a transaction of theirs, failed
    /// (every statement would fail on it for good) or open (the engine's
    /// commit would commit what they left).
    fn begin(
        &self,
        client: &mut pool::PgConnection,
        budget: Duration,
        read: bool,
    ) -> std::result::Result<(), postgres::Error> {
        let ms = budget.as_millis().max(1);
        let rollback = if client.lent { "ROLLBACK; " } else { "" };
        client.batch_execute(&format!(
            "{rollback}BEGIN{}; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}",
            if read {
                " ISOLATION LEVEL REPEATABLE READ READ ONLY"
            } else {
                ""
            }
        ))?;
        client.lent = false;
        Ok(())
    }

    /// Announces that `keys` changed hands, after the commit that changed
    /// them (a notice lost here is only late: waiters and trackers also
    /// poll).
    fn notify(&self, client: &mut pool::PgConnection, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        let payloads: Vec<String> = keys.iter().map(Key::to_string).collect();
        // One round trip (a statement prepared on this connection, or an
        // unnamed one): `Client::execute` with text would prepare first.
        let _ = client.execute_cached(
            NOTIFY,
            &[
                (&self.channel, postgres::types::Type::TEXT),
                (&payloads, postgres::types::Type::TEXT_ARRAY),
            ],
        );
    }

    /// Announces `keys` from inside a caller's transaction: delivered when
    /// it commits, dropped if it rolls back.
    pub(crate) fn notify_in(&self, tx: &mut dyn store::Session, keys: &[Key]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let payloads: Vec<String> = keys.iter().map(Key::to_string).collect();
        tx.execute(
            NOTIFY,
            &[
                (&self.channel, postgres::types::Type::TEXT),
                (&payloads, postgres::types::Type::TEXT_ARRAY),
            ],
        )
        .map_err(|e| {
            Error::storage(
                Context::new("notify"),
                crate::postgres::error::storage(e, self.busy_timeout),
            )
        })?;
        Ok(())
    }
}

/// One notice per key, on the schema's channel.
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

impl Backend for Postgres {
    fn write<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        if self.read_only {
            return Err(Error::invalid(
                "engine",
                &self.describe,
                "was opened read-only; it cannot write",
            ));
        }
        let budget = budget.min(self.busy_timeout);
        let mut client = self.client_within(budget, ctx)?;
        self.begin(&mut client, budget, false)
            .map_err(|e| fail(ctx(), e, budget))?;
        let (result, changed) = {
            let mut store = PgStore::new(&mut *client, self, true);
            let result = f(&mut store);
            (result, std::mem::take(&mut store.changed))
        };
        match result {
            Ok(value) => {
                client
                    .batch_execute("COMMIT")
                    .map_err(|e| fail(ctx(), e, budget))?;
                self.notify(&mut client, &changed);
                Ok(value)
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK");
                Err(e)
            }
        }
    }

    fn read<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        let budget = budget.min(self.busy_timeout);
        let mut client = self.client_within(budget, ctx)?;
        self.begin(&mut client, budget, true)
            .map_err(|e| fail(ctx(), e, budget))?;
        let result = {
            let mut store = PgStore::new(&mut *client, self, false);
            f(&mut store)
        };
        let end = client.batch_execute("COMMIT");
        let value = result?;
        end.map_err(|e| fail(ctx(), e, budget))?;
        Ok(value)
    }

    fn read_unbound<T>(
        &self,
        budget: Duration,
        ctx: &dyn Fn() -> Context,
        f: impl FnOnce(&mut dyn Store) -> Result<T>,
    ) -> Result<T> {
        // A guard's read takes FOR SHARE, refused in a read-only
        // transaction: a plain one.
        let budget = budget.min(self.busy_timeout);
        let mut client = self.client_within(budget, ctx)?;
        self.begin(&mut client, budget, false)
            .map_err(|e| fail(ctx(), e, budget))?;
        let result = {
            let mut store = PgStore::new(&mut *client, self, false);
            f(&mut store)
        };
        let _ = client.batch_execute("ROLLBACK");
        result
    }

    fn now_ms(&self) -> i64 {
        match &self.time {
            Some(time) => time.now_ms(),
            None => self
                .server_time
                .now_ms()
                .unwrap_or_else(|| to_ms(self.clock.now())),
        }
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    fn ensure_usable(&self, _every: Duration) -> Result<()> {
        Ok(())
    }

    fn feed(&self) -> Result<Box<dyn ChangeFeed>> {
        Ok(Box::new(PgFeed {
            heard: Arc::clone(&self.heard),
            started: false,
        }))
    }

    fn subscribe(&self, nudge: Weak<dyn Nudge>) -> bool {
        if !self.listen {
            return false;
        }
        let config = self.config.clone();
        let tls = self.tls.clone();
        let channel = self.channel.clone();
        let heard = Arc::clone(&self.heard);
        let spawned = std::thread::Builder::new()
            .name("leasehold-pg-listen".into())
            .spawn(move || listen(&config, &tls, &channel, &heard, &nudge));
        if spawned.is_err() {
            return false;
        }
        // Pushed: the listener nudges the driver. Until it hears its own
        // notice (and for good, behind a pooler in transaction mode that
        // swallows notices), the feed reports everything changed, so the
        // driver's backstop looks still find every change.
        true
    }

    fn describe(&self) -> String {
        format!("{} (schema {})", self.describe, self.schema)
    }

    // A socket read on a cut network waits for the TCP timeouts, past any
    // statement_timeout: the background thread must not wait with it.
    const IO_MAY_HANG: bool = true;

    // A renewal waits for its key's row lock, and says which key it was.
    const LOCKS_ROWS: bool = true;
}

/// The listener: one connection that never opens a transaction, `LISTEN`s
/// on the schema's channel, and nudges the driver for each notice; after a
/// reconnect, everything counts as changed. Ends when the driver is gone.
fn listen(
    config: &postgres::Config,
    tls: &tls::Tls,
    channel: &str,
    heard: &Mutex<Heard>,
    nudge: &Weak<dyn Nudge>,
) {
    let probe = format!("leasehold-probe-{}", std::process::id());
    let mut backoff = Duration::from_millis(10);
    // Named, so that an operator sees which session is whose.
    let mut config = config.clone();
    config.application_name("leasehold-listen");
    let limit = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10))
        * 2;
    loop {
        if nudge.strong_count() == 0 {
            return;
        }
        let connected = pool::connect(&config, tls, limit).and_then(|mut client| {
            client
                .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
                .and_then(|()| client.execute("SELECT pg_notify($1, $2)", &[&channel, &probe]))
                .map_err(PgConnectError::Server)?;
            Ok(client)
        });
        let mut client = match connected {
            Ok(client) => client,
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        // Whatever happened while not listening is unknown.
        if let Ok(mut h) = heard.lock() {
            h.all = true;
        }
        if let Some(n) = nudge.upgrade() {
            n.nudge();
        }
        loop {
            if nudge.strong_count() == 0 {
                return;
            }
            let next = {
                let mut notifications = client.notifications();
                let mut iter = notifications.timeout_iter(Duration::from_millis(250));
                postgres::fallible_iterator::FallibleIterator::next(&mut iter)
            };
            match next {
                Ok(Some(n)) => {
                    if let Ok(mut h) = heard.lock() {
                        if n.payload() == probe {
                            h.live = true;
                        } else if let Some((ns, name)) = n.payload().split_once('/')
                            && let Ok(key) = Key::new(ns, name)
                        {
                            h.keys.insert(key);
                        } else {
                            h.all = true;
                        }
                    }
                    if let Some(nudge) = nudge.upgrade() {
                        nudge.nudge();
                    }
                }
                Ok(None) => {
                    // A quiet stretch: is the connection still there?
                    if client.is_closed() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if let Ok(mut h) = heard.lock() {
            h.live = false;
            h.all = true;
        }
    }
}

/// The change feed: what the listener heard.
struct PgFeed {
    heard: Arc<Mutex<Heard>>,
    started: bool,
}

impl ChangeFeed for PgFeed {
    fn changes(&mut self) -> Result<Changes> {
        let mut heard = self.heard.lock().map_err(|_| {
            Error::storage(
                Context::new("watch"),
                StorageError::message(StorageKind::Other, "listener state poisoned"),
            )
        })?;
        if !self.started || heard.all || !heard.live {
            // The first look, a reconnect, or no listener: anything may
            // have changed (without one, the driver polls this often).
            self.started = true;
            heard.all = false;
            heard.keys.clear();
            return Ok(Changes::All);
        }
        if heard.keys.is_empty() {
            return Ok(Changes::None);
        }
        Ok(Changes::Keys(std::mem::take(&mut heard.keys)))
    }
}

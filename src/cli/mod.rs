//! The command line: argument types, dispatch, exit codes and error output.

mod demo;
mod leases;
mod output;
mod print;
mod run;
mod svg;
mod transfer;
mod watch;
mod watcher;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leasehold::postgres::PgEngine;
use leasehold::{Engine, Error, Key};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (a demo whose verdict failed, an I/O error)
  2  usage error (bad arguments)
  3  claim denied: someone else holds the lease
  4  not held: the holder named does not hold the lease (or no such pin;
     or, for show and history, no such key; or, for commands that only
     read, no leasehold schema in the database)
  5  invalid input: a bad name, duration, database file, output file or
     import; an argument that is not UTF-8
  6  busy: the database stayed locked; retrying later may succeed
  7  storage error
  8  the database's leasehold schema is not this build's: migrated by a
     newer leasehold, or its recorded migrations were edited
  run exits with its command's status (128 + N if killed by signal N), or
  4 if the lease was lost while it ran, however the command ended.";

/// Leadership leases in SQLite or PostgreSQL: see, steer and use them from
/// the shell.
#[derive(Debug, Parser)]
#[command(name = "leasehold", version, after_help = EXIT_CODES, arg_required_else_help = true)]
pub struct Cli {
    /// The database: a SQLite file, or a PostgreSQL connection string
    /// (postgres://…, postgresql://…, or key=value pairs such as
    /// "host=/run/postgresql dbname=app"); default: $LEASEHOLD_DB. Commands
    /// that change leases create a missing SQLite file (or PostgreSQL
    /// schema); commands that only read refuse.
    ///
    /// A value is PostgreSQL if it starts with postgres:// or
    /// postgresql://, or if it starts with a libpq keyword and "=" (host=,
    /// dbname=, user=, port=, service=, …) and no file of that name
    /// exists; anything else is a SQLite file (write ./host=x for a file
    /// named like that).
    ///
    /// TLS to PostgreSQL: sslmode=disable, prefer (the default) or require
    /// in the string; $PGSSLROOTCERT names a PEM file of root certificates
    /// that the server's certificate must chain to, naming the host (without
    /// it the session is encrypted but the server not authenticated).
    #[arg(long, global = true, value_name = "PATH|URL")]
    db: Option<PathBuf>,

    /// The PostgreSQL schema of leasehold's tables; default:
    /// $LEASEHOLD_SCHEMA, else public. PostgreSQL only: refused (exit 2)
    /// with a SQLite file, where $LEASEHOLD_SCHEMA is ignored.
    #[arg(long, global = true, value_name = "NAME")]
    schema: Option<String>,

    /// Print results, and errors, as JSON.
    #[arg(long, global = true)]
    json: bool,

    /// Print nothing on success (not even JSON).
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply leasehold's schema and print its version.
    Migrate {
        /// Print the SQL of every migration (for another migration tool)
        /// instead of applying it.
        #[arg(long)]
        print_sql: bool,
    },
    /// List leases: key, holder, epoch, time left or pins.
    List {
        /// Only this namespace (default: all).
        namespace: Option<String>,
        /// Include vacant keys.
        #[arg(long)]
        all: bool,
    },
    /// Show one lease.
    Show(KeyArgs),
    /// Show the tenures and events of one lease, oldest first.
    History {
        #[command(flatten)]
        key: KeyArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Claim (or extend) a lease.
    Claim {
        #[command(flatten)]
        key: KeyArgs,
        /// Who claims.
        holder: String,
        /// For how long, e.g. 30s, 5m, 250ms.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Release a lease held by HOLDER.
    Release {
        #[command(flatten)]
        key: KeyArgs,
        /// Who releases.
        holder: String,
    },
    /// End whoever's tenure it is (an administrative override).
    Revoke(KeyArgs),
    /// Keep a lease from expiring on behalf of an entity.
    Pin {
        #[command(flatten)]
        key: KeyArgs,
        /// Who pins (only this entity's unpin removes the pin).
        #[arg(long)]
        entity: String,
        /// Why (shown by list and show).
        #[arg(long, default_value = "")]
        reason: String,
        /// Let the pin lapse by itself after this long.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Remove an entity's pin.
    Unpin {
        #[command(flatten)]
        key: KeyArgs,
        /// Whose pin.
        #[arg(long)]
        entity: String,
    },
    /// Run a command while holding a lease; stop it if the lease is lost.
    ///
    /// The command gets LEASEHOLD_NAMESPACE, LEASEHOLD_NAME, LEASEHOLD_HOLDER,
    /// LEASEHOLD_EPOCH and LEASEHOLD_DB (an absolute path; on PostgreSQL the
    /// connection string as given, and LEASEHOLD_SCHEMA), so it can guard
    /// its own writes with its tenure's token; and, for SQL clients,
    /// LEASEHOLD_GUARD_STATEMENT and LEASEHOLD_GUARD_PREDICATE, its
    /// tenure's guard (see `leasehold guard`): `sqlite3 -bail "$LEASEHOLD_DB"
    /// "BEGIN IMMEDIATE; $LEASEHOLD_GUARD_STATEMENT; …; COMMIT;"`. Its standard output is its
    /// own: leasehold's messages go to stderr. A tracker keeps the lease
    /// meanwhile; if it is lost the command gets SIGTERM, then SIGKILL after
    /// the grace period, and run exits 4 however the command ended. Denied
    /// (or, with --wait, waiting) while anyone holds the lease, even the
    /// same holder: a tenure is never shared.
    ///
    /// The command runs in a process group led by a small watcher process,
    /// which signals to run (INT, TERM, HUP) reach whole. The watcher is
    /// told each renewal and stops the whole group before the lease could
    /// lapse even if run is killed (at once), stopped or wedged. What
    /// escapes it: a process that leaves the group (setsid, setpgid), and
    /// a SIGSTOP or SIGKILL of the watcher itself.
    Run(run::RunArgs),
    /// Print the guard, as SQL for any client, for a holder's tenure.
    ///
    /// Two forms, every value a quoted literal, in the dialect of --db (a
    /// PostgreSQL connection string, or else SQLite; nothing is opened):
    /// the guard statement, to run first in a transaction, which fails it
    /// unless HOLDER holds the lease (in --epoch, if given) and, passing,
    /// keeps any tenure from ending or beginning until it ends; and the
    /// predicate, for one statement's WHERE. The client must stop at the
    /// statement's error (sqlite3 -bail; psql -v ON_ERROR_STOP=1) and
    /// roll back. `run` hands its command both, for its own tenure, as
    /// LEASEHOLD_GUARD_STATEMENT and LEASEHOLD_GUARD_PREDICATE.
    Guard {
        #[command(flatten)]
        key: KeyArgs,
        /// Whose tenure.
        holder: String,
        /// Only this tenure (fencing): refused once it ends, even if the
        /// same holder claims again.
        #[arg(long)]
        epoch: Option<u64>,
        /// Print only the statement.
        #[arg(long, conflicts_with = "predicate")]
        statement: bool,
        /// Print only the predicate.
        #[arg(long)]
        predicate: bool,
    },
    /// Write every lease, pin and epoch as JSON lines.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Load an export: all or nothing.
    ///
    /// Imported leases are held for a fresh window from now (--window); an
    /// epoch on this database never goes backwards.
    Import {
        /// The export to read; "-" or nothing for standard input.
        file: Option<PathBuf>,
        /// How long imported leases are held from now.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        window: Duration,
    },
    /// Print lease transitions as they happen, from any process.
    Watch {
        /// Only this namespace.
        namespace: Option<String>,
        /// Stop after this long.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Show what leasehold is for: worker processes, a leader killed and a
    /// leader paused, guarded writes, a timeline and a verdict.
    ///
    /// Runs on --db if given (a SQLite file, or a PostgreSQL connection
    /// string with --schema, default public), else on a fresh temporary
    /// file ($LEASEHOLD_DB and $LEASEHOLD_SCHEMA are not used). It changes
    /// nothing it did not create: it refuses a --db that is not a SQLite
    /// database, a database or schema that has a demo_writes table, or one
    /// whose demo lease is held or pinned.
    Demo(demo::DemoArgs),
    #[command(hide = true, name = "__demo-worker")]
    DemoWorker(demo::WorkerArgs),
    #[command(hide = true, name = "__run-watcher")]
    RunWatcher(watcher::WatcherArgs),
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// The lease's namespace.
    namespace: String,
    /// The lease's name.
    name: String,
}

impl KeyArgs {
    fn key(&self) -> Result<Key, CliError> {
        Ok(Key::new(self.namespace.clone(), self.name.clone())?)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (try 30s, 5m, 250ms)"))
}

/// What went wrong, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    Lease(Error),
    Usage(String),
    Denied(String),
    Invalid(String),
    NotHeld(String),
    Failed(String),
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        CliError::Lease(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::Failed(e.to_string())
    }
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Denied(_) => 3,
            CliError::NotHeld(_) => 4,
            CliError::Invalid(_) => 5,
            CliError::Failed(_) => 1,
            CliError::Lease(e) => match e {
                Error::ClaimDenied { .. } => 3,
                Error::NotHeld { .. } | Error::GuardFailed { .. } | Error::NotMigrated { .. } => 4,
                Error::InvalidArgument { .. }
                | Error::NotADatabase { .. }
                | Error::SchemaConflict { .. }
                | Error::ImportRefused { .. } => 5,
                Error::Busy { .. } | Error::PoolTimeout { .. } | Error::Timeout { .. } => 6,
                Error::SchemaTooNew { .. } | Error::SchemaMismatch { .. } => 8,
                _ => 7,
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            CliError::Lease(Error::SchemaMismatch { .. }) => return "schema_mismatch",
            CliError::Lease(Error::NotMigrated { .. }) => return "no_schema",
            CliError::Lease(Error::DatabaseReplaced { .. }) => return "database_replaced",
            _ => {}
        }
        match self.code() {
            1 => "failed",
            2 => "usage",
            3 => "claim_denied",
            4 => "not_held",
            5 => "invalid_input",
            6 => "busy",
            8 => "schema_too_new",
            _ => "storage",
        }
    }

    fn message(&self) -> String {
        match self {
            CliError::Lease(e) => e.to_string(),
            CliError::Usage(m)
            | CliError::Denied(m)
            | CliError::Invalid(m)
            | CliError::NotHeld(m)
            | CliError::Failed(m) => m.clone(),
        }
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    /// Prints a human line (unless quiet or JSON).
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet && !self.json {
            print::line(line.as_ref());
        }
    }

    /// Tells the user on stderr about something that went wrong while the
    /// command goes on (or ends with a code of its own): one line, JSON
    /// with `--json`, printed even with `--quiet`.
    pub fn notice(&self, kind: &str, code: u8, message: &str) {
        print_error(kind, code, message, self.json);
    }

    /// Prints a JSON value (when JSON was asked for, unless quiet).
    pub fn json(&self, value: &serde_json::Value) {
        if self.json && !self.quiet {
            print::line(&value.to_string());
        }
    }
}

pub fn main() -> ExitCode {
    main_with(std::env::args_os().collect())
}

fn json_requested(args: &[OsString]) -> bool {
    args.iter().any(|a| a == "--json")
}

fn report(e: &CliError, json: bool) {
    print_error(e.kind(), e.code(), &e.message(), json);
}

/// One error line on stderr: JSON with `--json`.
fn print_error(kind: &str, code: u8, message: &str, json: bool) {
    if json {
        print::err_line(
            &serde_json::json!({"error": {"kind": kind, "code": code, "message": message}})
                .to_string(),
        );
    } else {
        print::err_line(&format!("leasehold: {}", one_line(message)));
    }
}

fn main_with(args: Vec<OsString>) -> ExitCode {
    let args_for_json = args.clone();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error: clap's message without its
            // usage block.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            // A value that does not parse (a duration like `10x`) is bad
            // input, as one that parses but is out of range (`0s`) is.
            let failure = if e.kind() == clap::error::ErrorKind::ValueValidation {
                CliError::Invalid(message.to_owned())
            } else if e.kind() == clap::error::ErrorKind::InvalidUtf8 {
                // Bad input (exit 5) like any other bad name, not a usage
                // error.
                CliError::Invalid(not_utf8(&args_for_json))
            } else {
                CliError::Usage(format!("{message} (see --help)"))
            };
            report(&failure, json_requested(&args_for_json));
            return ExitCode::from(failure.code());
        }
    };
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    let raw_db = cli
        .db
        .clone()
        .or_else(|| std::env::var_os("LEASEHOLD_DB").map(PathBuf::from))
        .and_then(|p| p.to_str().map(str::to_owned));
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let message = scrub(e.message(), raw_db.as_deref());
            print_error(e.kind(), e.code(), &message, out.json);
            ExitCode::from(e.code())
        }
    }
}

/// Says which argument is not UTF-8. clap does not name it, so the
/// arguments are parsed again with a UTF-8 marker in its place, and the
/// argument that received the marker is named.
fn not_utf8(args: &[OsString]) -> String {
    use clap::CommandFactory;
    const MARKER: &str = "\u{1}leasehold: not UTF-8\u{1}";
    let Some((index, bad)) = args
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, a)| a.to_str().is_none())
    else {
        return "an argument is not valid UTF-8".into();
    };
    // `--entity=VALUE`: only the value is replaced.
    let bytes = bad.as_encoded_bytes();
    let (replacement, value) = match bytes.iter().position(|b| *b == b'=') {
        Some(eq) if bytes.starts_with(b"--") && std::str::from_utf8(&bytes[..eq]).is_ok() => (
            format!("{}={MARKER}", String::from_utf8_lossy(&bytes[..eq])),
            String::from_utf8_lossy(&bytes[eq + 1..]).into_owned(),
        ),
        _ => (MARKER.to_owned(), bad.to_string_lossy().into_owned()),
    };
    let mut replaced = args.to_vec();
    replaced[index] = replacement.into();
    let cmd = Cli::command();
    let name = cmd
        .clone()
        .try_get_matches_from(replaced)
        .ok()
        .and_then(|m| marked_arg(&cmd, &m, MARKER));
    let value = one_line(&value);
    match name {
        Some(name) => format!("{name} is not valid UTF-8: {value:?}"),
        None => format!("argument {index} is not valid UTF-8: {value:?}"),
    }
}

/// The argument (`NAME`, `--entity`) whose value is `marker`, searching
/// subcommands too.
fn marked_arg(cmd: &clap::Command, m: &clap::ArgMatches, marker: &str) -> Option<String> {
    for id in m.ids() {
        let Ok(Some(mut values)) = m.try_get_raw(id.as_str()) else {
            continue;
        };
        if values.any(|v| v == marker) {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id)?;
            return Some(match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => arg
                    .get_value_names()
                    .and_then(|n| n.first())
                    .map_or_else(|| id.to_string().to_uppercase(), ToString::to_string),
            });
        }
    }
    let (name, sub) = m.subcommand()?;
    marked_arg(cmd.find_subcommand(name)?, sub, marker)
}

/// Keeps error output to one line whatever a message contains.
fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Where the leases are.
#[derive(Clone, Debug)]
pub enum Db {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database: the connection string as given (it may hold
    /// a password: print [`Db::describe`], never this), and the schema.
    Postgres { url: String, schema: String },
}

impl Db {
    /// For messages: the path, or the connection string with its password
    /// hidden, and the schema.
    pub fn describe(&self) -> String {
        match self {
            Db::Sqlite(path) => path.display().to_string(),
            Db::Postgres { url, schema } => {
                format!("{} (schema {schema})", leasehold::postgres::redacted(url))
            }
        }
    }
}

/// libpq's connection keywords (PostgreSQL's "Parameter Key Words"), and
/// `keepalives_retries`, which the `postgres` crate takes too.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "keepalives_retries",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Whether `--db`'s value names a PostgreSQL database: a `postgres://` or
/// `postgresql://` URL, or libpq's `key=value` form — a value that begins
/// with a libpq keyword and `=` (spaces around it allowed) and names no
/// existing file. Whether the rest parses is left to the PostgreSQL
/// client, whose error (exit 5) beats a SQLite file silently created
/// under a mistyped connection string's name.
fn is_postgres(text: &str) -> bool {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return true;
    }
    let trimmed = text.trim_start();
    let word_end = trimmed
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(trimmed.len());
    let (word, rest) = trimmed.split_at(word_end);
    LIBPQ_KEYWORDS.contains(&word)
        && rest.trim_start().starts_with('=')
        && std::fs::symlink_metadata(text).is_err()
}

/// The scheme of a `scheme://…` value (`[A-Za-z][A-Za-z0-9+.-]*`), if it
/// is one.
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    (chars.next()?.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// `message` with the `--db` value `raw` shown with its password hidden,
/// if `raw` holds one: a connection string misspelt into a SQLite file
/// name (`hots=/tmp password=…`) may be named by errors about that file.
fn scrub(message: String, raw: Option<&str>) -> String {
    let Some(raw) = raw.filter(|r| r.contains("password") || url_scheme(r).is_some()) else {
        return message;
    };
    let shown = leasehold::postgres::redacted(raw);
    if shown == raw || raw.is_empty() {
        return message;
    }
    message.replace(raw, &shown)
}

/// The database: `--db`, else `$LEASEHOLD_DB`; for PostgreSQL, the schema
/// from `--schema`, else `$LEASEHOLD_SCHEMA`, else `public`. `--schema`
/// with a SQLite file is a usage error; `$LEASEHOLD_SCHEMA` is then
/// ignored (one environment may serve both).
fn target(db: Option<&PathBuf>, schema: Option<&str>) -> Result<Db, CliError> {
    let path = db
        .cloned()
        .or_else(|| std::env::var_os("LEASEHOLD_DB").map(PathBuf::from))
        .ok_or_else(|| {
            CliError::Usage(
                "no database: pass --db PATH (or a PostgreSQL connection string) or set LEASEHOLD_DB"
                    .into(),
            )
        })?;
    let db = classify(path, schema, true)?;
    if let Db::Sqlite(path) = &db {
        not_special(path)?;
    }
    Ok(db)
}

/// `path` as a [`Db`]: see [`is_postgres`]. With `schema_env`, a
/// PostgreSQL schema not given defaults to `$LEASEHOLD_SCHEMA`.
fn classify(path: PathBuf, schema: Option<&str>, schema_env: bool) -> Result<Db, CliError> {
    if let Some(scheme) = path.to_str().and_then(url_scheme)
        && !matches!(scheme, "postgres" | "postgresql" | "file")
    {
        // A mistyped scheme (postgress://) is no file name either: said,
        // password hidden, rather than opened as a SQLite path.
        return Err(CliError::Invalid(format!(
            "{}: not a database leasehold can open ({scheme}://); --db takes a SQLite file or a postgres:// or postgresql:// connection string",
            leasehold::postgres::redacted(path.to_str().unwrap_or_default())
        )));
    }
    if let Some(url) = path.to_str().filter(|t| is_postgres(t)) {
        let schema = match schema {
            Some(s) => s.to_owned(),
            None => schema_env
                .then(|| std::env::var("LEASEHOLD_SCHEMA").ok())
                .flatten()
                .unwrap_or_else(|| "public".to_owned()),
        };
        return Ok(Db::Postgres {
            url: url.to_owned(),
            schema,
        });
    }
    if schema.is_some() {
        return Err(CliError::Usage(format!(
            "--schema is for PostgreSQL databases; {} is a SQLite file (pass --db postgres://… or drop --schema)",
            path.display()
        )));
    }
    Ok(Db::Sqlite(path))
}

/// Refuses (invalid input) a database path that is a FIFO, a device or a
/// socket: SQLite would wait forever opening a FIFO to read it, and fail
/// on a device after creating a journal beside it (`/dev/null-journal`).
fn not_special(path: &std::path::Path) -> Result<(), CliError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(kind) = std::fs::metadata(path).map(|m| m.file_type()) else {
        return Ok(());
    };
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        return Ok(());
    };
    Err(CliError::Invalid(format!(
        "{} is {what}, not a database file; name a database file",
        path.display()
    )))
}

/// An engine on either backend.
pub enum Opened {
    Sqlite(Engine),
    Postgres(PgEngine),
}

/// Runs `$body` with `$engine` bound to the engine of an [`Opened`],
/// whichever backend it is on (the body is compiled once per backend).
macro_rules! on_engine {
    ($opened:expr, |$engine:ident| $body:expr) => {
        match $opened {
            Opened::Sqlite(ref $engine) => $body,
            Opened::Postgres(ref $engine) => $body,
        }
    };
}
pub(crate) use on_engine;

/// A builder for `url`, with the root certificates that `PGSSLROOTCERT`
/// names (libpq's variable), if any: then the server must prove who it is.
pub(crate) fn pg_builder(url: &str) -> leasehold::postgres::PgBuilder {
    let builder = PgEngine::builder(url);
    match std::env::var_os("PGSSLROOTCERT") {
        Some(roots) if !roots.is_empty() => builder.tls_root_certificates(roots),
        _ => builder,
    }
}

/// A PostgreSQL engine on `url` and `schema`; `read_only` for commands
/// that only read (no migration, no schema created, no write).
fn open_pg(url: &str, schema: &str, read_only: bool) -> Result<PgEngine, CliError> {
    Ok(pg_builder(url)
        .schema(schema)
        .read_only(read_only)
        .build()?)
}

fn open(db: &Db) -> Result<Opened, CliError> {
    Ok(match db {
        Db::Sqlite(path) => Opened::Sqlite(Engine::open(path)?),
        Db::Postgres { url, schema } => Opened::Postgres(open_pg(url, schema, false)?),
    })
}

/// For commands that only read: a missing file is a mistake, not a new
/// database, and the file is opened read-only: it is never migrated,
/// switched to WAL or written, and nothing waits for a writer. On
/// PostgreSQL, likewise: a read-only engine, which creates no schema and
/// migrates nothing.
fn open_existing(db: &Db) -> Result<Opened, CliError> {
    match db {
        Db::Sqlite(path) => {
            if !path.exists() {
                return Err(CliError::Invalid(format!(
                    "no database at {} (commands that only read do not create one)",
                    path.display()
                )));
            }
            Ok(Opened::Sqlite(
                Engine::builder(path).read_only(true).build()?,
            ))
        }
        Db::Postgres { url, schema } => Ok(Opened::Postgres(open_pg(url, schema, true)?)),
    }
}

fn dispatch(cli: Cli) -> Result<u8, CliError> {
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    let schema = cli.schema.as_deref();
    // Resolved when a command needs it (print-sql and the demo do without).
    let db = || target(cli.db.as_ref(), schema);
    match cli.command {
        Command::Migrate { print_sql: true } => {
            // PostgreSQL's scripts for a PostgreSQL --db, else SQLite's
            // (no database at all included, as before). Nothing is opened.
            let db = match cli
                .db
                .clone()
                .or_else(|| std::env::var_os("LEASEHOLD_DB").map(PathBuf::from))
            {
                Some(path) => Some(classify(path, schema, true)?),
                None if schema.is_some() => {
                    return Err(CliError::Usage(
                        "--schema is for PostgreSQL databases: pass --db with a PostgreSQL connection string for its scripts".into(),
                    ));
                }
                None => None,
            };
            leases::print_sql(db.as_ref(), out)
        }
        Command::Guard {
            key,
            holder,
            epoch,
            statement,
            predicate,
        } => {
            let db = match cli
                .db
                .clone()
                .or_else(|| std::env::var_os("LEASEHOLD_DB").map(PathBuf::from))
            {
                Some(path) => Some(classify(path, schema, true)?),
                None if schema.is_some() => {
                    return Err(CliError::Usage(
                        "--schema is for PostgreSQL databases: pass --db with a PostgreSQL connection string".into(),
                    ));
                }
                None => None,
            };
            let form = match (statement, predicate) {
                (true, _) => leases::GuardForm::Statement,
                (_, true) => leases::GuardForm::Predicate,
                _ => leases::GuardForm::Both,
            };
            leases::guard_sql(db.as_ref(), &key.key()?, &holder, epoch, form, out)
        }
        Command::Migrate { print_sql: false } => {
            let db = db()?;
            leases::migrate(&open(&db)?, &db, out)
        }
        Command::List { namespace, all } => match open_existing(&db()?) {
            // A database without leases: nothing to list.
            Err(CliError::Lease(Error::NotMigrated { found: 0, .. })) => {
                out.json(&serde_json::Value::Array(Vec::new()));
                Ok(0)
            }
            engine => on_engine!(engine?, |e| leases::list(e, namespace.as_deref(), all, out)),
        },
        Command::Show(k) => on_engine!(open_existing(&db()?)?, |e| leases::show(e, &k.key()?, out)),
        Command::History { key, limit } => {
            on_engine!(open_existing(&db()?)?, |e| leases::history(
                e,
                &key.key()?,
                limit,
                out
            ))
        }
        Command::Claim {
            key,
            holder,
            duration,
        } => on_engine!(open(&db()?)?, |e| leases::claim(
            e,
            &key.key()?,
            &holder,
            duration,
            out
        )),
        Command::Release { key, holder } => on_engine!(open(&db()?)?, |e| leases::release(
            e,
            &key.key()?,
            &holder,
            out
        )),
        Command::Revoke(k) => on_engine!(open(&db()?)?, |e| leases::revoke(e, &k.key()?, out)),
        Command::Pin {
            key,
            entity,
            reason,
            duration,
        } => on_engine!(open(&db()?)?, |e| leases::pin(
            e,
            &key.key()?,
            &entity,
            &reason,
            duration,
            out
        )),
        Command::Unpin { key, entity } => on_engine!(open(&db()?)?, |e| leases::unpin(
            e,
            &key.key()?,
            &entity,
            out
        )),
        Command::Run(args) => run::run(&db()?, args, out),
        Command::Export { output } => {
            let db = db()?;
            let file = match &db {
                Db::Sqlite(path) => Some(path.as_path()),
                Db::Postgres { .. } => None,
            };
            on_engine!(open_existing(&db)?, |e| transfer::export(
                e,
                file,
                output.as_deref()
            ))
        }
        Command::Import { file, window } => on_engine!(open(&db()?)?, |e| transfer::import(
            e,
            file.as_deref(),
            window,
            out
        )),
        Command::Watch {
            namespace,
            duration,
        } => on_engine!(open_existing(&db()?)?, |e| watch::watch(
            e,
            namespace.as_deref(),
            duration,
            out
        )),
        Command::Demo(args) => {
            // Only an explicit --db (never $LEASEHOLD_DB or
            // $LEASEHOLD_SCHEMA): the demo writes a table of its own.
            let db = match cli.db {
                Some(path) => Some(classify(path, schema, false)?),
                None if schema.is_some() => {
                    return Err(CliError::Usage(
                        "--schema is for PostgreSQL databases; without --db the demo runs on a temporary SQLite file (pass --db postgres://…)".into(),
                    ));
                }
                None => None,
            };
            demo::demo(db.as_ref(), args, out)
        }
        Command::DemoWorker(args) => demo::worker(args),
        Command::RunWatcher(args) => watcher::watcher(args),
    }
}

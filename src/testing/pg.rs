//! A throwaway PostgreSQL server for tests (features `testing` and
//! `postgres`): started from the machine's server binaries in a temporary
//! directory, reachable on a Unix socket (and on loopback TCP if asked),
//! and stopped — with its directory removed — when it is dropped, or when
//! the process that started it ends, however it ends.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// How to start a [`PgServer`].
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Durable commits (`fsync` and `synchronous_commit` on): for tests
    /// that kill or restart the server. Off, commits are faster and a
    /// crash of the server may lose the latest. Default: off.
    pub durable: bool,
    /// Also listen on a loopback TCP port (for a proxy between client and
    /// server). Default: Unix socket only.
    pub tcp: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// TLS (`ssl=on`) with this certificate chain and private key, both
    /// PEM, on the TCP port. Default: none.
    pub tls: Option<(String, String)>,
}

/// A throwaway PostgreSQL server for tests (features `testing` and
/// `postgres`): started from the machine's server binaries in a temporary
/// directory (as the `postgres` user when run as root: `initdb` refuses
/// root), reachable on a Unix socket (and on loopback TCP if asked), and
/// stopped — its directory removed — when it is dropped, or when the
/// process that started it ends, however it ends (a reaper process holds
/// a pipe from it).
#[derive(Debug)]
pub struct PgServer {
    dir: Option<PathBuf>,
    bin: Option<PathBuf>,
    port: u16,
    tcp: bool,
    external: Option<String>,
    /// Held open: when it closes (this process ended), the reaper stops
    /// the server.
    reaper_stdin: Option<ChildStdin>,
    reaper: Option<Child>,
    options: PgOptions,
}

static SCHEMAS: AtomicU64 = AtomicU64::new(0);

/// The directory of the newest installed PostgreSQL server binaries:
/// `$LEASEHOLD_PG_BIN`, else Debian's `/usr/lib/postgresql/*/bin`.
pub fn server_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LEASEHOLD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program` from `bin`, as the `postgres` user when run as root (initdb
/// refuses root).
fn as_server_user(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

impl PgServer {
    /// Starts a new server with `options`.
    ///
    /// # Errors
    ///
    /// The binaries are missing, or the server cannot be initialised or
    /// started (its log is in the message).
    pub fn start(options: PgOptions) -> std::io::Result<PgServer> {
        let bin = server_binaries().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no PostgreSQL server binaries (Debian: apt-get install postgresql)",
            )
        })?;
        let dir = std::env::temp_dir().join(format!(
            "lh-pg-{}-{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        if is_root() {
            let owned = Command::new("chown").arg("postgres:").arg(&dir).status()?;
            if !owned.success() {
                return Err(std::io::Error::other(
                    "cannot give the data directory to postgres",
                ));
            }
        }
        let port = if options.tcp {
            TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
        } else {
            5432
        };
        let data = dir.join("data");
        let init = as_server_user(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !init.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(std::io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            )));
        }
        if let Some((chain, key)) = &options.tls {
            for (name, pem) in [("server.crt", chain), ("server.key", key)] {
                let path = dir.join(name);
                std::fs::write(&path, pem)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                if is_root()
                    && !Command::new("chown")
                        .arg("postgres:")
                        .arg(&path)
                        .status()?
                        .success()
                {
                    return Err(std::io::Error::other(format!(
                        "cannot give {name} to postgres"
                    )));
                }
            }
        }
        // The reaper: when this process ends, its stdin closes, and it
        // stops the server and removes the directory.
        let stop = format!(
            "{} '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            if is_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            bin.join("pg_ctl").display(),
            data.display(),
            dir.display()
        );
        let mut reaper = Command::new("sh")
            .arg("-c")
            .arg(format!("cat >/dev/null; {stop}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let reaper_stdin = reaper.stdin.take();
        let mut server = PgServer {
            dir: Some(dir),
            bin: Some(bin),
            port,
            tcp: options.tcp,
            external: None,
            reaper_stdin,
            reaper: Some(reaper),
            options,
        };
        server.pg_ctl_start()?;
        Ok(server)
    }

    /// A server for the whole test process, started once: the one
    /// `$LEASEHOLD_TEST_PG` names if set, else a throwaway one. `None`
    /// (and a loud line on standard error) when neither is available,
    /// unless `$LEASEHOLD_REQUIRE_PG` is set, which makes that a panic.
    ///
    /// # Panics
    ///
    /// Without a server while `$LEASEHOLD_REQUIRE_PG` is set.
    pub fn shared() -> Option<&'static PgServer> {
        static SHARED: OnceLock<Option<PgServer>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                if let Ok(url) = std::env::var("LEASEHOLD_TEST_PG") {
                    return Some(PgServer {
                        dir: None,
                        bin: None,
                        port: 0,
                        tcp: false,
                        external: Some(url),
                        reaper_stdin: None,
                        reaper: None,
                        options: PgOptions::default(),
                    });
                }
                PgServer::start_or_skip(PgOptions::default())
            })
            .as_ref()
    }

    /// [`start`](PgServer::start) for a test: `None`, and a loud line on
    /// standard error, without server binaries, unless
    /// `$LEASEHOLD_REQUIRE_PG` is set, which makes that a panic.
    ///
    /// # Panics
    ///
    /// Without a server while `$LEASEHOLD_REQUIRE_PG` is set.
    pub fn start_or_skip(options: PgOptions) -> Option<PgServer> {
        match PgServer::start(options) {
            Ok(server) => Some(server),
            Err(e) => {
                let require = std::env::var_os("LEASEHOLD_REQUIRE_PG").is_some();
                assert!(
                    !require,
                    "LEASEHOLD_REQUIRE_PG is set, but no PostgreSQL: {e}"
                );
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "\n*** PostgreSQL tests SKIPPED: {e}. Install the server (Debian: \
                     postgresql) or set LEASEHOLD_TEST_PG to a connection string. ***\n"
                );
                None
            }
        }
    }

    fn pg_ctl_start(&mut self) -> std::io::Result<()> {
        let (Some(bin), Some(dir)) = (&self.bin, &self.dir) else {
            return Ok(());
        };
        let mut settings = vec![
            format!(
                "listen_addresses={}",
                if self.tcp { "127.0.0.1" } else { "''" }
            ),
            format!("unix_socket_directories={}", dir.display()),
            format!("port={}", self.port),
            "max_connections=300".to_owned(),
        ];
        if !self.options.durable {
            settings.push("fsync=off".into());
            settings.push("synchronous_commit=off".into());
            settings.push("full_page_writes=off".into());
        } else {
            settings.push("fsync=on".into());
            settings.push("synchronous_commit=on".into());
        }
        if self.options.tls.is_some() {
            settings.push("ssl=on".into());
            settings.push(format!(
                "ssl_cert_file={}",
                dir.join("server.crt").display()
            ));
            settings.push(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        for (k, v) in &self.options.settings {
            settings.push(format!("{k}={v}"));
        }
        let opts: Vec<String> = settings.iter().map(|s| format!("-c {s}")).collect();
        let out = as_server_user(bin, "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(opts.join(" "))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "pg_ctl start failed: {}{log}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Stops the server at once, as a crash would (`pg_ctl -m immediate`):
    /// what was not durably committed may be lost.
    ///
    /// # Errors
    ///
    /// `pg_ctl` failed.
    pub fn crash(&mut self) -> std::io::Result<()> {
        let (Some(bin), Some(dir)) = (&self.bin, &self.dir) else {
            return Err(std::io::Error::other(
                "an external server cannot be stopped",
            ));
        };
        let status = as_server_user(bin, "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other("pg_ctl stop failed"))
        }
    }

    /// The server's processes: the postmaster and its children.
    ///
    /// # Errors
    ///
    /// An external server, or the server is not running.
    pub fn pids(&self) -> std::io::Result<Vec<i32>> {
        let Some(dir) = &self.dir else {
            return Err(std::io::Error::other(
                "an external server's processes are not ours",
            ));
        };
        let pidfile = std::fs::read_to_string(dir.join("data").join("postmaster.pid"))?;
        let main: i32 = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("postmaster.pid names no process"))?;
        let mut pids = vec![main];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // The parent is the fourth field of /proc/PID/stat, after the
            // command in parentheses.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(main) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Freezes the whole server (SIGSTOP to every process of it): its
    /// connections stay open and nothing answers, not even a
    /// `statement_timeout` — a hung host as clients see it. Undo with
    /// [`PgServer::thaw`].
    ///
    /// # Errors
    ///
    /// As [`PgServer::pids`], or a signal could not be sent.
    pub fn freeze(&self) -> std::io::Result<()> {
        self.signal_all(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a frozen server run again.
    ///
    /// # Errors
    ///
    /// As [`PgServer::freeze`].
    pub fn thaw(&self) -> std::io::Result<()> {
        self.signal_all(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal_all(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        for pid in self.pids()? {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    }

    /// Starts the server again after [`PgServer::crash`] (crash recovery
    /// runs).
    ///
    /// # Errors
    ///
    /// `pg_ctl` failed.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.pg_ctl_start()
    }

    /// The connection string of the server's `postgres` database.
    pub fn url(&self) -> String {
        match (&self.external, &self.dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => format!(
                "host={} port={} user=postgres dbname=postgres",
                dir.display(),
                self.port
            ),
            (None, None) => String::new(),
        }
    }

    /// The server's Unix socket (`<dir>/.s.PGSQL.<port>`), for a
    /// [`Proxy`](super::Proxy) in front of it; `None` for an external
    /// server.
    pub fn socket(&self) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!(".s.PGSQL.{}", self.port)))
    }

    /// The loopback TCP address, if the server listens on one.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp
            .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// A schema name no other caller of this process gets.
    pub fn fresh_schema(&self) -> String {
        format!(
            "lh_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A new, empty database on the server, dropped (its sessions ended)
    /// when the handle drops.
    ///
    /// # Errors
    ///
    /// The server refused to create it.
    pub fn create_database(&self) -> std::io::Result<PgDatabase> {
        let name = self.fresh_schema();
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls)
            .map_err(std::io::Error::other)?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(std::io::Error::other)?;
        Ok(PgDatabase {
            url: with_dbname(&self.url(), &name),
            admin: self.url(),
            name,
        })
    }
}

/// A database of its own on a [`PgServer`]; dropped with the handle.
#[derive(Debug)]
pub struct PgDatabase {
    url: String,
    admin: String,
    name: String,
}

impl PgDatabase {
    /// Its connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` pointing at database `name` instead: a `key=value` string gets a
/// `dbname` appended (the last one wins); a URL gets its path replaced.
pub fn with_dbname(url: &str, name: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return format!("{url} dbname={name}");
    };
    let rest = &url[scheme + 3..];
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], &rest[q..]),
        None => (rest, ""),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    format!("{}{authority}/{name}{query}", &url[..scheme + 3])
}

impl Drop for PgServer {
    fn drop(&mut self) {
        drop(self.reaper_stdin.take());
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.wait();
        }
    }
}

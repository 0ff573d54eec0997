//! TLS to PostgreSQL: a throwaway server of this file's own with `ssl=on`
//! and a certificate from a test CA made here (the leaf names `localhost`
//! only), reached over loopback TCP.
//!
//! - `sslmode` decides whether to encrypt (`disable`, `prefer`, `require`);
//! - without root certificates the session is encrypted and the server
//!   not authenticated (libpq's `require`);
//! - with them (`PgBuilder::tls_root_certificates`, `PGSSLROOTCERT` for
//!   the command line) the server's chain must lead to them and name the
//!   host (libpq's `verify-full`);
//! - every connection of the engine is encrypted: its pool's and its
//!   listener's.
//!
//! Without server binaries the tests return at once, saying so
//! (`LEASEHOLD_REQUIRE_PG` turns that into a failure).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use leasehold::Error;
use leasehold::postgres::PgEngine;
use leasehold::testing::{PgOptions, PgServer};
use support::output::{fails, ok};
use support::tls::{
    assert_refused_before_connecting, builder, ca, encrypted, key, leaf, tls_server, url, write,
};

type R = Result<(), Box<dyn std::error::Error>>;

/// The server, its CA's PEM file, and another CA's (which signed nothing
/// the server shows).
struct Tls {
    server: PgServer,
    _dir: tempfile::TempDir,
    ca: PathBuf,
    stranger: PathBuf,
}

fn tls() -> Option<&'static Tls> {
    static TLS: OnceLock<Option<Tls>> = OnceLock::new();
    TLS.get_or_init(|| {
        let root = ca("leasehold test CA");
        let stranger = ca("some other CA");
        let server = tls_server(leaf(&["localhost"], &root, None), vec![])?;
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Tls {
            ca: write(dir.path(), "ca.pem", &root.cert.pem()),
            stranger: write(dir.path(), "stranger.pem", &stranger.cert.pem()),
            server,
            _dir: dir,
        })
    })
    .as_ref()
}

impl Tls {
    /// A key=value connection string to the server's TCP port, under
    /// `host` (resolved to 127.0.0.1 whatever it says).
    fn url(&self, host: &str, sslmode: &str) -> String {
        url(&self.server, host, sslmode)
    }

    fn engine(
        &self,
        host: &str,
        sslmode: &str,
        roots: Option<&Path>,
    ) -> leasehold::Result<PgEngine> {
        builder(&self.server, host, sslmode, roots).build()
    }
}

#[test]
fn without_root_certificates_the_session_is_encrypted_but_the_server_unchecked() -> R {
    let Some(tls) = tls() else { return Ok(()) };
    // The leaf names localhost, not 127.0.0.1: no one checks.
    for sslmode in ["require", "prefer"] {
        let engine = tls.engine("127.0.0.1", sslmode, None)?;
        engine.claim(&key(), "h1", Duration::from_secs(60))?;
        assert!(encrypted(&engine)?, "sslmode={sslmode}");
    }
    let plain = tls.engine("127.0.0.1", "disable", None)?;
    plain.claim(&key(), "h1", Duration::from_secs(60))?;
    assert!(!encrypted(&plain)?, "sslmode=disable");
    Ok(())
}

#[test]
fn with_root_certificates_the_server_must_chain_to_them_and_name_the_host() -> R {
    let Some(tls) = tls() else { return Ok(()) };
    let engine = tls.engine("localhost", "require", Some(&tls.ca))?;
    engine.claim(&key(), "h1", Duration::from_secs(60))?;
    assert!(encrypted(&engine)?);
    // Each refusal also says what judged the server, and what to do.
    for (host, roots, why, what_to_do) in [
        (
            "127.0.0.1",
            &tls.ca,
            "not valid for name \"127.0.0.1\"",
            "set host= to a name the certificate holds",
        ),
        (
            "localhost",
            &tls.stranger,
            "UnknownIssuer",
            "does not chain to the root certificates in",
        ),
    ] {
        let err = tls
            .engine(host, "require", Some(roots))
            .expect_err("an unproven server");
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("certificate") && text.contains(why),
            "{host}, {}: {text}",
            roots.display()
        );
        assert!(
            text.contains(what_to_do) && text.contains(&roots.display().to_string()),
            "{text}"
        );
    }
    Ok(())
}

#[test]
fn every_connection_of_the_engine_is_encrypted_its_listeners_too() -> R {
    let Some(tls) = tls() else { return Ok(()) };
    let engine = tls.engine("localhost", "require", Some(&tls.ca))?;
    // A tracker makes the engine listen for notices.
    let tracker = engine.tracker(&key(), "h1").build()?;
    assert!(tracker.wait_leader().wait());
    let started = Instant::now();
    let sessions = loop {
        let rows = engine.client()?.query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'leasehold-listen'",
            &[],
        )?;
        let sessions: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
        if !sessions.is_empty() || started.elapsed() > Duration::from_secs(20) {
            break sessions;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sessions, [true], "the listener's session");
    let unencrypted: i64 = engine
        .client()?
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'leasehold%' AND NOT s.ssl",
            &[],
        )?
        .get(0);
    assert_eq!(unencrypted, 0);
    Ok(())
}

/// Given root certificates, the default `sslmode=prefer` does not fall back
/// to a session in clear over TCP (a server, or anyone between, saying "no
/// TLS here"); over a Unix socket, where servers offer no TLS, it does.
#[test]
fn with_root_certificates_prefer_refuses_a_server_without_tls_except_on_a_socket() -> R {
    let Some(tls) = tls() else { return Ok(()) };
    let Some(plain) = PgServer::start_or_skip(PgOptions {
        tcp: true,
        ..PgOptions::default()
    }) else {
        return Ok(());
    };
    let port = plain.tcp_addr().expect("tcp").port();
    let url =
        format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres");
    let err = PgEngine::builder(&url)
        .tls_root_certificates(&tls.ca)
        .build()
        .expect_err("no TLS on offer");
    assert!(
        err.to_string().contains("server does not support TLS")
            && err.to_string().contains("sslmode=prefer counts as require"),
        "{err}"
    );
    // Without roots, prefer means prefer.
    assert!(!encrypted(&PgEngine::builder(&url).build()?)?);
    // Over the Unix socket.
    let engine = PgEngine::builder(&plain.url())
        .tls_root_certificates(&tls.ca)
        .build()?;
    engine.claim(&key(), "h1", Duration::from_secs(60))?;
    assert!(!encrypted(&engine)?);
    Ok(())
}

#[test]
fn root_certificates_that_cannot_be_used_are_refused_before_connecting() -> R {
    let dir = tempfile::tempdir()?;
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "just text\n")?;
    let missing = dir.path().join("missing.pem");
    // Port 1: nothing listens, and nothing is tried.
    let big = dir.path().join("big.pem");
    std::fs::File::create(&big)?.set_len(17 << 20)?;
    let (this_dir, dev_zero) = (dir.path().to_owned(), PathBuf::from("/dev/zero"));
    for (roots, why) in [
        (&missing, "cannot be read"),
        (&not_pem, "holds no PEM certificate"),
        (&big, "larger than 16 MiB"),
        (&this_dir, "is a directory"),
        // Once read until memory ran out.
        (&dev_zero, "not a regular file"),
    ] {
        assert_refused_before_connecting(roots, why);
    }
    Ok(())
}

#[test]
fn the_command_line_takes_its_root_certificates_from_pgsslrootcert() -> R {
    let Some(tls) = tls() else { return Ok(()) };
    let schema = tls.server.fresh_schema();
    let leasehold = |host: &str, roots: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["--db", &tls.url(host, "require"), "--schema", &schema])
            .args(args)
            .env("PGSSLROOTCERT", roots)
            .output()
            .expect("leasehold")
    };
    ok(&leasehold(
        "localhost",
        &tls.ca,
        &["claim", "ops", "tls", "h1", "--for", "60s"],
    ));
    let listed = ok(&leasehold("localhost", &tls.ca, &["list"]));
    assert!(listed.contains("ops/tls"), "{listed}");
    let refused = fails(&leasehold("localhost", &tls.stranger, &["list"]), 7);
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let refused = fails(&leasehold("127.0.0.1", &tls.ca, &["list"]), 7);
    assert!(refused.contains("not valid for name"), "{refused}");
    Ok(())
}

/// libpq's `sslmode=verify-full` and `sslrootcert` are not parsed by the
/// `postgres` crate: the error says what does the same here.
#[test]
fn libpq_verification_settings_are_refused_with_what_to_use_instead() {
    for url in [
        "host=db.example dbname=app sslmode=verify-full",
        "postgres://app@db.example/app?sslmode=verify-ca",
        "host=db.example dbname=app sslrootcert=/etc/ca.pem",
    ] {
        let err = PgEngine::builder(url).build().expect_err(url);
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("tls_root_certificates") && text.contains("PGSSLROOTCERT"),
            "{url}: {text}"
        );
    }
}

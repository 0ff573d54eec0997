//! Certificates and TLS servers for the TLS tests: a CA made here, leaves
//! it signs, a throwaway server showing one, and what a test asks of it.

use std::path::{Path, PathBuf};

use leasehold::Key;
use leasehold::postgres::PgEngine;
use leasehold::testing::{PgOptions, PgServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA: its certificate and key.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A root CA named `name`.
pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: params.self_signed(&key).expect("CA"),
        key,
    }
}

/// An intermediate CA signed by `by`.
pub fn intermediate(by: &Ca) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "leasehold intermediate");
    Ca {
        cert: params
            .signed_by(&key, &by.cert, &by.key)
            .expect("intermediate"),
        key,
    }
}

/// A leaf for `names` (IP addresses become IP SANs) signed by `by`, valid
/// between the given years if any: (chain PEM, key PEM).
pub fn leaf(names: &[&str], by: &Ca, years: Option<(i32, i32)>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    if let Some((from, to)) = years {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let cert = params.signed_by(&key, &by.cert, &by.key).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

/// A TLS server showing `chain`, reachable on 127.0.0.1 (and on `extra`
/// settings' addresses).
pub fn tls_server(chain: (String, String), extra: Vec<(String, String)>) -> Option<PgServer> {
    PgServer::start_or_skip(PgOptions {
        tcp: true,
        tls: Some(chain),
        settings: extra,
        ..PgOptions::default()
    })
}

/// The server's TCP port.
pub fn port(server: &PgServer) -> u16 {
    server.tcp_addr().expect("tcp").port()
}

/// `host=… hostaddr=127.0.0.1 port=… sslmode=…`.
pub fn url(server: &PgServer, host: &str, sslmode: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode={sslmode}",
        port(server)
    )
}

/// `text` written to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The key the TLS tests claim.
pub fn key() -> Key {
    Key::new("ops", "tls").expect("key")
}

/// Whether the engine's pooled session is encrypted.
pub fn encrypted(engine: &PgEngine) -> Result<bool, Box<dyn std::error::Error>> {
    let row = engine.client()?.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )?;
    Ok(row.get(0))
}

/// A builder for `server` under `host` and `sslmode`, on a schema of its
/// own, with `roots` if given.
pub fn builder(
    server: &PgServer,
    host: &str,
    sslmode: &str,
    roots: Option<&Path>,
) -> leasehold::postgres::PgBuilder {
    let builder = PgEngine::builder(&url(server, host, sslmode)).schema(&server.fresh_schema());
    match roots {
        Some(roots) => builder.tls_root_certificates(roots),
        None => builder,
    }
}

/// A TLS server whose certificate (for localhost) a root CA of its own
/// signed, and that CA's PEM file: the setup most TLS tests start from.
pub struct Verified {
    pub root: Ca,
    pub server: PgServer,
    pub roots: PathBuf,
    /// Holds `roots`: bind it (`dir: _dir`) for as long as they are used.
    pub dir: tempfile::TempDir,
}

/// A [`Verified`] server, or `None` without server binaries.
pub fn verified() -> Option<Verified> {
    let root = ca("root");
    let server = tls_server(leaf(&["localhost"], &root, None), vec![])?;
    let dir = tempfile::tempdir().expect("tempdir");
    let roots = write(dir.path(), "root.pem", &root.cert.pem());
    Some(Verified {
        root,
        server,
        roots,
        dir,
    })
}

/// Asserts that `roots` are refused before anything connects (port 1:
/// nothing listens), as invalid input naming the file and `why`.
pub fn assert_refused_before_connecting(roots: &Path, why: &str) {
    let err = PgEngine::builder("host=127.0.0.1 port=1 user=x dbname=x")
        .tls_root_certificates(roots)
        .build()
        .expect_err("unusable roots");
    assert!(
        matches!(err, leasehold::Error::InvalidArgument { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&roots.display().to_string()) && text.contains(why),
        "{text}"
    );
}

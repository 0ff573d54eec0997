//! TLS to the server, with rustls (pure Rust: nothing to install).
//!
//! The connection string's `sslmode` says whether to encrypt, as with
//! libpq: `disable` never, `prefer` (the default) if the server offers it,
//! `require` always. What is checked of the server depends on whether
//! root certificates were given
//! ([`PgBuilder::tls_root_certificates`](super::PgBuilder::tls_root_certificates)):
//!
//! - without them, the session is encrypted but the server is not
//!   authenticated (libpq's `require` without a root certificate): it stops
//!   an eavesdropper, not an impostor on the network path;
//! - with them, the server's chain must lead to one of them, be valid now,
//!   and name the host connected to (libpq's `verify-full`), `prefer`
//!   counts as `require` (no falling back to a session in clear), and
//!   `disable` is refused.
//!
//! Every connection the engine opens (its pool, the connection that opens
//! it, its listener) uses the same connector. Over a Unix socket the server
//! offers no TLS, and none is used.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::core::error::{Error, Result};

/// The connector every connection of an engine uses.
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// The connector for `roots` (a PEM file of root certificates), or for an
/// unauthenticated server when `None`, after settling `config`'s TLS:
///
/// - with roots, and any connection over TCP, `sslmode=prefer` (the
///   default) becomes `require` (a server answering that it offers no TLS,
///   or anyone on the path saying so for it, is refused, not spoken to in
///   clear), and `sslmode=disable` is refused: it would leave the roots
///   unused. Over a Unix socket alone the server offers no TLS, none is
///   needed, and `prefer` stays;
/// - a string with only `hostaddr` gets those addresses as its host names
///   (the `postgres` crate will not start TLS without a name); with roots
///   it is refused, since there is no name to check the certificate
///   against.
pub(crate) fn connector(config: &mut postgres::Config, roots: Option<&Path>) -> Result<Tls> {
    use postgres::config::{Host, SslMode};
    let hosts = config.get_hosts();
    // `hostaddr` is always reached over TCP, whatever `host` says.
    let over_tcp = hosts.is_empty()
        || !config.get_hostaddrs().is_empty()
        || hosts.iter().any(|h| matches!(h, Host::Tcp(_)));
    let nameless = hosts.is_empty() && !config.get_hostaddrs().is_empty();
    match roots {
        Some(path) if over_tcp => {
            let given = path.display().to_string();
            if config.get_ssl_mode() == SslMode::Disable {
                return Err(Error::invalid(
                    "TLS root certificates",
                    &given,
                    "were given, but the connection string says sslmode=disable: the session \
                     would be in clear and nothing verified (drop one or the other)",
                ));
            }
            if nameless {
                return Err(Error::invalid(
                    "TLS root certificates",
                    &given,
                    "were given, but the connection string names no host, only hostaddr: \
                     add host=<the name the server's certificate holds>",
                ));
            }
            if config.get_ssl_mode() == SslMode::Prefer {
                config.ssl_mode(SslMode::Require);
            }
        }
        None if nameless => {
            let names: Vec<String> = config
                .get_hostaddrs()
                .iter()
                .map(|a| a.to_string())
                .collect();
            for name in names {
                config.host(&name);
            }
        }
        _ => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |path: &Path, why: String| {
        Error::invalid("TLS root certificates", &path.display().to_string(), why)
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("TLS", "protocol versions", e.to_string()))?;
    let config = match roots {
        Some(path) => {
            let pem = read_bounded(path).map_err(|why| invalid(path, why))?;
            let certificates = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid(path, format!("is not a PEM file of certificates: {e}")))?;
            if certificates.is_empty() {
                return Err(invalid(path, "holds no PEM certificate".into()));
            }
            let mut store = RootCertStore::empty();
            for (i, certificate) in certificates.into_iter().enumerate() {
                store.add(certificate).map_err(|e| {
                    invalid(path, format!("certificate {} cannot be used: {e}", i + 1))
                })?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unauthenticated(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    Ok(Tls::new(config))
}

/// What to do about a connect that TLS refused, if it was TLS (said after
/// the error's own words): which root certificates judged the server, and
/// what usually fixes it.
pub(crate) fn hint(e: &postgres::Error, roots: Option<&Path>) -> Option<String> {
    use rustls::CertificateError as C;
    let roots = roots.map(|p| p.display().to_string())?;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = next {
        // tokio-rustls hands rustls's error over inside an io::Error.
        let rustls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(why)) = rustls {
            return Some(match why {
                C::UnknownIssuer => format!(
                    "the server's certificate does not chain to the root certificates in \
                     {roots} (tls_root_certificates, or PGSSLROOTCERT): give the CA that \
                     signed it"
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                    "checked against {roots}: set host= to a name the certificate holds \
                     (hostaddr= can still give the address)"
                ),
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => {
                    format!(
                        "checked against {roots}: the server's certificate is out of its dates; renew it on the server"
                    )
                }
                _ => format!("the server's certificate was checked against {roots}"),
            });
        }
        if cause.to_string().contains("does not support TLS") {
            return Some(format!(
                "root certificates were given ({roots}), so TLS is required: sslmode=prefer \
                 counts as require"
            ));
        }
        next = cause.source();
    }
    None
}

/// The most a root certificate file may hold (a system's whole bundle is
/// a few hundred KiB): `/dev/zero` or a log file named by mistake is
/// refused, not read for ever.
const MAX_PEM: u64 = 16 << 20;

/// The file's bytes, if it is a regular file of at most [`MAX_PEM`].
fn read_bounded(path: &Path) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    // Looked at before opening: opening a FIFO waits for a writer.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(if meta.is_dir() {
            "is a directory, not a PEM file".to_owned()
        } else {
            "is not a regular file".to_owned()
        });
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut pem = Vec::new();
    file.take(MAX_PEM + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if pem.len() as u64 > MAX_PEM {
        return Err(format!(
            "is larger than {} MiB: not root certificates",
            MAX_PEM >> 20
        ));
    }
    Ok(pem)
}

/// Accepts whatever certificate the server shows, but still checks that the
/// server holds its key (the handshake's signatures): encryption without
/// authentication, as libpq's `sslmode=require` without a root certificate.
#[derive(Debug)]
struct Unauthenticated(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

//! TLS termination: the PEM certificate chain and key from `server.tls` become
//! one rustls server config. Depends only on `config`.
//!
//! The crypto provider is named explicitly (aws-lc-rs, the one reqwest and
//! sqlx already use) rather than taken from a process-wide default, which
//! rustls refuses to guess when more than one provider is compiled in.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::TlsConfig;

/// Why `server.tls` cannot be used; `field` is the config key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub field: &'static str,
    pub message: String,
}

fn error(field: &'static str, message: String) -> TlsError {
    TlsError { field, message }
}

/// `Ok(None)` when TLS is off; an error when only one file is set, a file
/// cannot be read or parsed, or the key does not match the certificate.
pub fn server_config(tls: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (None, Some(_)) => return Err(error("cert_file", "required when key_file is set".into())),
        (Some(_), None) => return Err(error("key_file", "required when cert_file is set".into())),
    };
    let certs = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| error("key_file", format!("cannot read a PEM private key from {}: {e}", key_file.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error("cert_file", format!("TLS set-up failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| error("key_file", format!("the key does not fit the certificate: {e}")))?;
    // HTTP/1.1 only: see `server` for why.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        error("cert_file", format!("cannot read PEM certificates from {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(error("cert_file", format!("no certificate found in {}", path.display())));
    }
    Ok(certs)
}

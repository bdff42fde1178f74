//! TLS towards a broker (`mqtts://`): the CA certificates a client trusts.

use std::path::Path;
use std::sync::Arc;

use rumqttc::TlsConfiguration;

/// Where Debian and its derivatives keep the system's trusted CA certificates.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The CA file cannot be read or holds no usable certificate.
#[derive(Debug, thiserror::Error)]
#[error("mqtt.ca_file {path}: {reason}")]
pub struct CaError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The TLS settings of an MQTT client that trusts the certificates in `ca_file` (PEM), or the
/// system's CA certificates when none is given. A file without a usable certificate is an
/// error now, not a failed handshake later.
pub fn tls_config(ca_file: Option<&Path>) -> Result<TlsConfiguration, CaError> {
    let path = ca_file.unwrap_or_else(|| Path::new(SYSTEM_CA_FILE));
    let ca_err = |reason: String| CaError {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| ca_err(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate found".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ca_err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

//! The HTTPS listeners' TLS: the server certificate and key, and for a
//! mutual-TLS listener the CA its clients' certificates must chain to.
//! TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`. Reloaded whole on SIGHUP and
//! when a file changes (the gateway's `Reloadable`); a file that fails to
//! load keeps the config in force.

use std::path::PathBuf;
use std::sync::Arc;

use hsmgate_authz::tls::{
    Reloadable, TlsError, TlsFiles, read_certificates, read_private_key, roots_from,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsSettings;

/// What one listener's TLS config is built from.
#[derive(Debug, Clone)]
pub struct ListenerTlsFiles {
    pub settings: TlsSettings,
    /// Require and verify a client certificate (an `mtls` listener).
    pub client_auth: bool,
}

pub type ListenerTls = Reloadable<ListenerTlsFiles>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles for ListenerTlsFiles {
    type Config = rustls::ServerConfig;

    fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "TLS versions",
                source,
            })?;
        let builder = match (&self.settings.client_ca_file, self.client_auth) {
            (Some(ca), true) => {
                let mut roots = RootCertStore::empty();
                roots_from(ca, &mut roots)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::ClientVerifier {
                            path: ca.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                read_certificates(&self.settings.cert_file)?,
                read_private_key(&self.settings.key_file)?,
            )
            .map_err(|source| TlsError::Rustls {
                what: "certificate and key",
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.settings.cert_file.clone(),
            self.settings.key_file.clone(),
        ];
        if self.client_auth {
            files.extend(self.settings.client_ca_file.clone());
        }
        files
    }
}

//! Optional TLS for the admin listener (`[admin] tls_cert_file`,
//! `tls_key_file`): HTTP/1.1 over TLS 1.3, the certificate re-read on
//! SIGHUP and when its files change, as on the directory link
//! (`directory_tls.rs`): a file that does not load is refused and the
//! certificate in force stays, counted in
//! `hsmgate_tls_reloads_total{use="admin",result}`.

use std::path::PathBuf;
use std::sync::Arc;

use hsmgate_authz::tls::{Reloadable, ServerTlsFiles, TlsError, TlsFiles};

use crate::control::metrics::Metrics;

/// The admin listener's certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTlsFiles(ServerTlsFiles);

impl AdminTlsFiles {
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> AdminTlsFiles {
        AdminTlsFiles(ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
        })
    }
}

impl TlsFiles for AdminTlsFiles {
    type Config = rustls::ServerConfig;

    fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = self.0.build()?;
        // The admin server speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    fn files(&self) -> Vec<PathBuf> {
        self.0.files()
    }
}

/// The admin listener's reloadable TLS config.
pub type AdminTls = Reloadable<AdminTlsFiles>;

/// Load the admin TLS files named in `[admin]`, if any.
pub fn load(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> Result<Option<Arc<AdminTls>>, TlsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Arc::new(AdminTls::load(AdminTlsFiles::new(
            cert.clone(),
            key.clone(),
        ))?))),
        _ => Ok(None),
    }
}

/// Count and log the outcome of a reload of the admin TLS files.
pub fn record_reload(metrics: &Metrics, trigger: &str, outcome: &Result<(), TlsError>) {
    let result = if outcome.is_ok() { "ok" } else { "error" };
    metrics
        .tls_reloads
        .with_label_values(&["admin", result])
        .inc();
    match outcome {
        Ok(()) => tracing::info!(
            trigger,
            "admin TLS files reloaded; new admin connections use them"
        ),
        Err(e) => tracing::error!(
            trigger,
            error = %e,
            "admin TLS reload refused; the certificate in force stays"
        ),
    }
}

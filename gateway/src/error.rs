//! The gateway's errors at start and reload.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("directory client: {0}")]
    Directory(#[from] hsmgate_authz::AuthzError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin TLS: {0}")]
    AdminTls(#[from] hsmgate_authz::tls::TlsError),
    #[error("QUIC listener: {0}")]
    Quic(#[from] crate::accept::quic::QuicSetupError),
    #[error("cannot start the control thread: {0}")]
    ControlThread(std::io::Error),
}

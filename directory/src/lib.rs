//! hsmgate's reference directory service: a tonic server that answers the
//! gateways' `Authorize` calls from a TOML data file of tenants, partitions
//! and clients (keys, partitions, networks, limits).
//!
//! Modules: [`data`] (file model, validation, index), [`decide`] (the pure
//! decision), [`service`] (gRPC), [`tls`] (the TLS accept loop and the
//! gateway identity check). This file holds the shared, atomically
//! reloadable [`Directory`], [`serve`] (plain gRPC) and [`serve_tls`], which
//! the binary, the gateway's `hsmgate dev` and the end-to-end tests all use.

#![forbid(unsafe_code)]

pub mod data;
pub mod decide;
pub mod service;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hsmgate_authz::tls::ServerTls;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use data::{DirectoryData, DirectoryFile, LoadError, Problem, Summary};
pub use service::DirectoryService;
pub use tls::GatewayIdentity;

/// The directory's data, swapped whole on reload: a decision in flight
/// keeps the snapshot it started with.
#[derive(Debug)]
pub struct Directory {
    data: ArcSwap<DirectoryData>,
    path: Option<PathBuf>,
}

impl Directory {
    /// Load a data file; [`Directory::reload_from_file`] re-reads it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let data = DirectoryData::from_file(path)?;
        Ok(Directory {
            data: ArcSwap::from_pointee(data),
            path: Some(path.to_owned()),
        })
    }

    /// A directory over in-memory data (no file to reload).
    pub fn from_data(data: DirectoryData) -> Self {
        Directory {
            data: ArcSwap::from_pointee(data),
            path: None,
        }
    }

    /// The data file, if the directory was loaded from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The current data.
    pub fn snapshot(&self) -> Arc<DirectoryData> {
        self.data.load_full()
    }

    /// Swap in new data.
    pub fn replace(&self, data: DirectoryData) -> Summary {
        let summary = data.summary();
        self.data.store(Arc::new(data));
        summary
    }

    /// Re-read the data file. On any error the current data stays in use.
    pub fn reload_from_file(&self) -> Result<Summary, LoadError> {
        let path = self.path.as_deref().ok_or(LoadError::NoFile)?;
        let data = DirectoryData::from_file(path)?;
        Ok(self.replace(data))
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("directory server failed: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// Serve the directory's gRPC API on `listener`, in plain text, until
/// `shutdown` completes, then finish the calls in flight and return.
pub async fn serve(
    directory: Arc<Directory>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .serve_with_incoming_shutdown(
            DirectoryService::new(directory).into_server(),
            incoming,
            shutdown,
        )
        .await?;
    Ok(())
}

/// [`serve`] over TLS: every connection is a TLS 1.3 handshake with the
/// config `tls` holds at that moment (client certificates required when it
/// names a client CA), and with [`GatewayIdentity::Required`] every request
/// must claim a `gateway_id` its client certificate names.
pub async fn serve_tls(
    directory: Arc<Directory>,
    listener: TcpListener,
    tls: Arc<ServerTls>,
    identity: GatewayIdentity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (incoming, accepting) = tls::incoming(listener, tls);
    let served = Server::builder()
        .serve_with_incoming_shutdown(
            DirectoryService::with_identity(directory, identity).into_server(),
            incoming,
            shutdown,
        )
        .await;
    accepting.abort();
    served?;
    Ok(())
}

//! The tonic client of the directory service.
//!
//! The channel connects lazily, so a gateway starts (and answers from its
//! cache, or denies with a retryable code) while the directory is down; tonic
//! reconnects on its own once it is back. Connections go through our own
//! connector (`connect.rs`): TCP, then TLS with the certificates in force
//! when the connection opens, so that a certificate reload needs no new
//! channel.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hsmgate_wire::PublicKey;
use tonic::transport::{Channel, Endpoint};

use crate::answer::Answer;
use crate::connect::{ConnectFailure, ConnectObserver, Connector, IgnoreFailures};
use crate::error::AuthzError;
use crate::pb;
use crate::pb::directory_client::DirectoryClient as GrpcClient;
use crate::tls::{ClientTls, ClientTlsFiles};

/// Where the directory is and how long to wait for it. The gateway fills this
/// from its own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `https://host:port` (with `tls`) or `http://host:port` (without)
    /// of the directory service.
    pub endpoint: String,
    /// Bound on establishing the TCP connection and the TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on one `Authorize` call, connection time included.
    pub request_timeout: Duration,
    /// TLS to the directory; required by an `https://` endpoint, refused
    /// with an `http://` one.
    pub tls: Option<ClientTlsFiles>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: "http://127.0.0.1:7100".into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// One access question: may this client, with this key, from this address,
/// use this partition of this tenant?
#[derive(Clone, PartialEq, Eq)]
pub struct Query {
    pub client_id: String,
    /// The static key the client proved it holds in the outer handshake.
    pub client_static_key: PublicKey,
    pub tenant: String,
    pub partition: String,
    /// The connection's source address as the gateway sees it.
    pub source: IpAddr,
    /// This gateway instance, for the directory's audit log.
    pub gateway_id: String,
}

// Written by hand so that no key, public or not, reaches a log line.
impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("client_id", &self.client_id)
            .field("tenant", &self.tenant)
            .field("partition", &self.partition)
            .field("source", &self.source)
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

impl Query {
    fn to_request(&self) -> pb::AuthorizeRequest {
        pb::AuthorizeRequest {
            client_id: self.client_id.clone(),
            client_static_key: self.client_static_key.as_bytes().to_vec(),
            tenant: self.tenant.clone(),
            partition: self.partition.clone(),
            source_address: self.source.to_canonical().to_string(),
            gateway_id: self.gateway_id.clone(),
        }
    }
}

/// A cheap-to-clone handle on the directory service.
#[derive(Clone)]
pub struct DirectoryClient {
    grpc: GrpcClient<Channel>,
    connector: Connector,
    uri: http::Uri,
}

impl std::fmt::Debug for DirectoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryClient")
            .field("uri", &self.uri)
            .field("tls", &self.connector.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl DirectoryClient {
    /// Build the client without connecting. Must be called inside a tokio
    /// runtime (the channel spawns its worker task).
    pub fn new(config: &ClientConfig) -> Result<Self, AuthzError> {
        Self::with_observer(config, Arc::new(IgnoreFailures))
    }

    /// [`DirectoryClient::new`], telling `observer` about every failed
    /// connection. The TLS files are read here: a file that does not load
    /// is a configuration error.
    pub fn with_observer(
        config: &ClientConfig,
        observer: Arc<dyn ConnectObserver>,
    ) -> Result<Self, AuthzError> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| AuthzError::Config(format!("endpoint {:?}: {e}", config.endpoint)))?
            .timeout(config.request_timeout);
        let uri = endpoint.uri().clone();
        let tls = match (uri.scheme_str(), &config.tls) {
            (Some("https"), Some(files)) => Some(Arc::new(
                ClientTls::load(files.clone()).map_err(|e| AuthzError::Config(e.to_string()))?,
            )),
            (Some("https"), None) => {
                return Err(AuthzError::Config(
                    "an https:// endpoint needs TLS settings".into(),
                ));
            }
            (Some("http"), None) => None,
            (Some("http"), Some(_)) => {
                return Err(AuthzError::Config(
                    "TLS settings need an https:// endpoint".into(),
                ));
            }
            _ => {
                return Err(AuthzError::Config(format!(
                    "endpoint {:?}: must be https:// or http://",
                    config.endpoint
                )));
            }
        };
        let connector = Connector {
            tls,
            observer,
            timeout: config.connect_timeout,
        };
        Ok(DirectoryClient {
            grpc: GrpcClient::new(endpoint.connect_with_connector_lazy(connector.clone())),
            connector,
            uri,
        })
    }

    /// The TLS config of this client's connections, if it uses TLS.
    pub fn tls(&self) -> Option<&Arc<ClientTls>> {
        self.connector.tls.as_ref()
    }

    /// Open one connection to the directory (TCP, and the TLS handshake
    /// when configured) and close it: a reachability check that sends no
    /// request, so it does not show in the directory's audit log. A failure
    /// is reported to the observer like any other.
    pub async fn probe(&self) -> Result<(), ConnectFailure> {
        self.connector.connect(&self.uri).await.map(drop)
    }

    /// Ask the directory once (no cache, no retry).
    pub async fn authorize(&self, query: &Query) -> Result<Answer, AuthzError> {
        let mut grpc = self.grpc.clone();
        let response = grpc
            .authorize(query.to_request())
            .await
            .map_err(|status| AuthzError::from_status(&status))?;
        Answer::from_response(response.get_ref())
    }
}

//! The gRPC face of the directory: parses an `AuthorizeRequest`, checks the
//! gateway's identity when required (`tls.rs`), decides on the current data
//! snapshot and logs one line per decision (never the key).

use std::net::IpAddr;
use std::sync::Arc;

use hsmgate_authz::pb::{self, directory_server};
use hsmgate_wire::PublicKey;
use hsmgate_wire::text::validate_name;
use tonic::{Request, Response, Status};

use crate::Directory;
use crate::decide::{self, decide};
use crate::tls::{GatewayIdentity, GatewayPeer, check_identity};

/// The tonic service over a shared [`Directory`].
#[derive(Debug, Clone)]
pub struct DirectoryService {
    directory: Arc<Directory>,
    identity: GatewayIdentity,
}

impl DirectoryService {
    pub fn new(directory: Arc<Directory>) -> Self {
        Self::with_identity(directory, GatewayIdentity::Unchecked)
    }

    /// A service that checks the `gateway_id` of each request against the
    /// client certificate of its connection, as `identity` says.
    pub fn with_identity(directory: Arc<Directory>, identity: GatewayIdentity) -> Self {
        DirectoryService {
            directory,
            identity,
        }
    }

    /// The generated server, ready for `tonic::transport::Server`.
    pub fn into_server(self) -> directory_server::DirectoryServer<Self> {
        directory_server::DirectoryServer::new(self)
    }
}

fn check_name(field: &str, value: &str) -> Result<(), Status> {
    validate_name(value).map_err(|why| Status::invalid_argument(format!("{field}: {why}")))
}

#[tonic::async_trait]
impl directory_server::Directory for DirectoryService {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let req = request.get_ref();
        check_name("client_id", &req.client_id)?;
        check_name("tenant", &req.tenant)?;
        check_name("partition", &req.partition)?;
        if !req.gateway_id.is_empty() {
            check_name("gateway_id", &req.gateway_id)?;
        }
        // After the name checks: only validated names reach the log.
        if self.identity == GatewayIdentity::Required {
            let peer = request.extensions().get::<GatewayPeer>();
            let certificate = peer.and_then(|p| p.certificate.as_deref());
            if let Err(why) = check_identity(certificate, &req.gateway_id) {
                // An audit line: a gateway claiming another's name is what
                // this check exists to catch.
                tracing::warn!(
                    remote = %peer.map_or_else(|| "unknown".to_owned(), |p| p.remote.to_string()),
                    gateway_id = %req.gateway_id,
                    client_id = %req.client_id,
                    reason = %why,
                    "refused: gateway identity does not match its certificate"
                );
                return Err(Status::permission_denied(format!(
                    "gateway identity: {why}"
                )));
            }
        }
        let key = PublicKey::from_bytes(&req.client_static_key)
            .map_err(|_| Status::invalid_argument("client_static_key: a key is 32 bytes"))?;
        let source: IpAddr = req
            .source_address
            .parse()
            .map_err(|_| Status::invalid_argument("source_address: not an IP address"))?;

        let data = self.directory.snapshot();
        let response = decide(
            &data,
            &decide::Request {
                client_id: &req.client_id,
                key: &key,
                tenant: &req.tenant,
                partition: &req.partition,
                source,
            },
        );
        tracing::info!(
            client_id = %req.client_id,
            tenant = %req.tenant,
            partition = %req.partition,
            source = %source.to_canonical(),
            gateway_id = %req.gateway_id,
            decision = response.decision().as_str_name(),
            reason = response.reason().as_str_name(),
            "authorize"
        );
        Ok(Response::new(response))
    }
}

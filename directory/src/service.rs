//! The gRPC face of the directory: parses an `AuthorizeRequest`, decides on
//! the current data snapshot and logs one line per decision (never the key).

use std::net::IpAddr;
use std::sync::Arc;

use hsmgate_authz::pb::{self, directory_server};
use hsmgate_wire::PublicKey;
use hsmgate_wire::text::validate_name;
use tonic::{Request, Response, Status};

use crate::Directory;
use crate::decide::{self, decide};

/// The tonic service over a shared [`Directory`].
#[derive(Debug, Clone)]
pub struct DirectoryService {
    directory: Arc<Directory>,
}

impl DirectoryService {
    pub fn new(directory: Arc<Directory>) -> Self {
        DirectoryService { directory }
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

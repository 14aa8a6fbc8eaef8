//! A JWKS fetched over HTTPS (`jwt.jwks_url`): one GET with HTTP/1.1 over
//! rustls, the server verified against `jwt.jwks_ca_file` or the system's
//! CA bundle, a bounded answer (1 MiB, 10 s), status 200 only, no
//! redirects. The refresh loop lives in the service (lib.rs).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;

use super::jwks::{Jwks, JwksError};

/// Bound on one fetch, from connect to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS answer read.
const MAX_ANSWER: usize = 1 << 20;

pub struct JwksFetcher {
    url: Uri,
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl JwksFetcher {
    /// A fetcher for `url` (https), trusting `ca_file` or the system's CAs.
    pub fn new(url: &Uri, ca_file: Option<&Path>) -> Result<JwksFetcher, JwksError> {
        let host = url
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| JwksError::Fetch("the URL has no host".into()))?;
        let port = url.port_u16().unwrap_or(443);
        let bundle = match ca_file {
            Some(f) => f.to_owned(),
            None => hsmgate_authz::tls::system_bundle().ok_or_else(|| {
                JwksError::Fetch("no system CA bundle; set jwt.jwks_ca_file".into())
            })?,
        };
        let mut roots = RootCertStore::empty();
        hsmgate_authz::tls::roots_from(&bundle, &mut roots)
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| JwksError::Fetch(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(JwksFetcher {
            url: url.clone(),
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Fetch and parse the key set once.
    pub async fn fetch(&self) -> Result<Jwks, JwksError> {
        let text = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| JwksError::Fetch(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        Jwks::parse(&text)
    }

    async fn get(&self) -> Result<String, JwksError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| JwksError::Fetch(format!("{what}: {e}"));
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail("connect", &e))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| fail("server name", &e))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| fail("TLS", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail("HTTP", &e))?;
        let driver = tokio::spawn(conn);
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let request = Request::get(path)
            .header(header::HOST, authority(&self.url))
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail("HTTP", &e))?;
        if response.status() != http::StatusCode::OK {
            driver.abort();
            return Err(JwksError::Fetch(format!("status {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| fail("body", &e))?
            .to_bytes();
        driver.abort();
        String::from_utf8(body.to_vec())
            .map_err(|_| JwksError::Fetch("the answer is not UTF-8".into()))
    }
}

fn authority(url: &Uri) -> String {
    url.authority()
        .map_or_else(String::new, |a| a.as_str().to_owned())
}

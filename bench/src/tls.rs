//! The mutual TLS 1.3 anchor of the `sessions` scenario: test certificates
//! made at run time (a CA, a server certificate for HAProxy, a client
//! certificate; all P-256) and the rustls client that presents them.
//!
//! This is the standard way to authenticate a client at a proxy, so what
//! HAProxy spends per mutual-TLS connection is the yardstick for what
//! hsmgate's outer handshake costs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The server name in HAProxy's certificate.
pub const SERVER_NAME: &str = "localhost";

/// Files HAProxy reads, and the client configuration that matches them.
pub struct MutualTls {
    /// Certificate chain and key of the server, PEM, in one file (HAProxy `crt`).
    pub server_pem: PathBuf,
    /// The CA that signed the client certificate (HAProxy `ca-file`).
    pub ca_pem: PathBuf,
    pub client: Arc<rustls::ClientConfig>,
}

impl MutualTls {
    /// Make the certificates, write HAProxy's files under `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<MutualTls> {
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hsmgate-bench test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).context("CA certificate")?;
        let ca = Issuer::new(ca_params, ca_key);

        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<_> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![name.to_owned()])?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert, key))
        };
        let (server_cert, server_key) =
            leaf(SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth).context("server certificate")?;
        let (client_cert, client_key) = leaf("bench-client", ExtendedKeyUsagePurpose::ClientAuth)
            .context("client certificate")?;

        let server_pem = dir.join("haproxy-server.pem");
        std::fs::write(
            &server_pem,
            format!("{}{}", server_cert.pem(), server_key.serialize_pem()),
        )?;
        let ca_pem = dir.join("haproxy-ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem())?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from(client_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
            )?;
        // Every connection is a full handshake, as every hsmgate session is.
        client.resumption = rustls::client::Resumption::disabled();
        Ok(MutualTls {
            server_pem,
            ca_pem,
            client: Arc::new(client),
        })
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).expect("static server name")
    }
}

//! TLS on the directory link, both ends: the gateway's client side
//! ([`ClientTls`], used by the channel's connector in `connect.rs`) and the
//! directory's server side ([`ServerTls`], used by `hsmgate-directory`).
//!
//! Each holds its rustls config in an `ArcSwap` built from PEM files. A
//! reload re-reads the files and swaps the config: connections opened from
//! then on use the new certificates, connections already up and the
//! gateway's cached decisions are untouched. A file that does not load (or
//! a key that does not match its certificate) is refused and the config in
//! force stays. [`Reloadable::reload_if_changed`] re-reads only when a file's
//! identity (device, inode, size, modification time, following symlinks)
//! changed, so polling it every few seconds notices cert-manager and
//! Kubernetes secrets swapping their symlinks.
//!
//! Both sides speak TLS 1.3 only, with ALPN `h2`, on the ring provider.
//! Error messages name files and rustls errors, never key material.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, crypto::CryptoProvider};

/// Where the system's CA bundle is looked for with `system_roots`, after
/// `$SSL_CERT_FILE`: Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, RHEL 7+,
/// and the BSD-style path some minimal images use.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why TLS material could not be loaded. The message names the file and
/// what is wrong with it, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not PEM: {message}", .path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in it (expected a PEM PKCS#8, PKCS#1 or SEC1 key)", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable CA certificate: {message}", .path.display())]
    BadCa { path: PathBuf, message: String },
    #[error("no CA to verify the directory with: set ca_file or system_roots = true")]
    NoRoots,
    #[error(
        "system_roots: no CA bundle found ($SSL_CERT_FILE, or one of {})",
        SYSTEM_BUNDLES.join(", ")
    )]
    NoSystemBundle,
    #[error("client_cert_file and client_key_file go together")]
    HalfClientIdentity,
    #[error("server name {0:?}: not a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the assembled config (a key that does not match its
    /// certificate, an unsupported key type, ...).
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("client CA {}: {message}", .path.display())]
    ClientVerifier { path: PathBuf, message: String },
}

/// What a TLS config is built from: a set of files and how to turn them
/// into a rustls config.
pub trait TlsFiles: Send + Sync + 'static {
    type Config: Send + Sync + 'static;
    /// Read every file and build the config.
    fn build(&self) -> Result<Self::Config, TlsError>;
    /// The files whose change means a reload.
    fn files(&self) -> Vec<PathBuf>;
}

/// A file's identity: changes when it is rewritten or a symlink on its
/// path is swapped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    dev: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn file_ids(files: &[PathBuf]) -> Vec<Option<FileId>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| FileId {
                dev: m.dev(),
                inode: m.ino(),
                len: m.len(),
                modified: m.modified().ok(),
            })
        })
        .collect()
}

/// A rustls config built from files, swapped whole on reload.
pub struct Reloadable<F: TlsFiles> {
    files: F,
    current: ArcSwap<F::Config>,
    /// The identities of the files when they were last read.
    seen: Mutex<Vec<Option<FileId>>>,
}

impl<F: TlsFiles> std::fmt::Debug for Reloadable<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("files", &self.files.files())
            .finish_non_exhaustive()
    }
}

impl<F: TlsFiles> Reloadable<F> {
    /// Read the files once; an error here is a configuration error.
    pub fn load(files: F) -> Result<Self, TlsError> {
        let seen = file_ids(&files.files());
        let config = files.build()?;
        Ok(Reloadable {
            files,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// The config new connections use.
    pub fn current(&self) -> Arc<F::Config> {
        self.current.load_full()
    }

    /// What the config is built from.
    pub fn files(&self) -> &F {
        &self.files
    }

    /// Re-read the files now (SIGHUP). On error the config in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        // Taken before reading: a change during the read is seen next time.
        let ids = file_ids(&self.files.files());
        let built = self.files.build();
        if let Ok(mut seen) = self.seen.lock() {
            // Recorded on failure too: a broken file is reported once, not
            // at every poll; its next change is read again.
            *seen = ids;
        }
        self.current.store(Arc::new(built?));
        Ok(())
    }

    /// Re-read the files if any of them changed since they were last read:
    /// `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let ids = file_ids(&self.files.files());
        let changed = self.seen.lock().map(|seen| *seen != ids).unwrap_or(true);
        changed.then(|| self.reload())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file (a chain or a bundle); at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        // The PEM error names a section or a position, not the key.
        other => TlsError::Pem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })
}

/// Add every certificate of a PEM file to `store` as a trust anchor.
pub fn roots_from(path: &Path, store: &mut RootCertStore) -> Result<(), TlsError> {
    for cert in read_certificates(path)? {
        store.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// The system's CA bundle file: `$SSL_CERT_FILE`, else the first of
/// [`SYSTEM_BUNDLES`] that exists.
pub fn system_bundle() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        return Some(PathBuf::from(file));
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The gateway's TLS settings for the directory link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM bundle of the CAs that may sign the directory's certificate.
    pub ca_file: Option<PathBuf>,
    /// Trust the system's CA bundle as well.
    pub system_roots: bool,
    /// The name the directory's certificate must carry, when it is not the
    /// endpoint's host.
    pub server_name: Option<String>,
    /// This gateway's certificate chain and key, for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// The name to verify the directory's certificate against: the
    /// override, else the endpoint's host (a DNS name or an IP address).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
    }
}

impl TlsFiles for ClientTlsFiles {
    type Config = rustls::ClientConfig;

    fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &self.ca_file {
            roots_from(ca, &mut roots)?;
        }
        if self.system_roots {
            let bundle = system_bundle().ok_or(TlsError::NoSystemBundle)?;
            // A system bundle may hold certificates webpki cannot use; the
            // others still count.
            roots.add_parsable_certificates(read_certificates(&bundle)?);
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS versions",
                source,
            })?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certificates(cert)?, read_private_key(key)?)
                .map_err(|source| TlsError::Rustls {
                    what: "client_cert_file and client_key_file",
                    source,
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfClientIdentity),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            [&self.ca_file, &self.client_cert_file, &self.client_key_file]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
        if self.system_roots
            && let Some(bundle) = system_bundle()
        {
            files.push(bundle);
        }
        files
    }
}

/// The directory's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, the directory's own certificate first.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, every client must present a certificate signed by one of
    /// these CAs (PEM bundle).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles for ServerTlsFiles {
    type Config = rustls::ServerConfig;

    fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS versions",
                source,
            })?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
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
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                read_certificates(&self.cert_file)?,
                read_private_key(&self.key_file)?,
            )
            .map_err(|source| TlsError::Rustls {
                what: "certificate and key",
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn files(&self) -> Vec<PathBuf> {
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// The gateway's reloadable TLS config for the directory link.
pub type ClientTls = Reloadable<ClientTlsFiles>;
/// The directory's reloadable TLS config.
pub type ServerTls = Reloadable<ServerTlsFiles>;

/// Why a connection to the directory failed, as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No TCP connection (refused, unreachable, timed out, name not found).
    Connect,
    /// The TLS handshake failed for a reason other than a certificate
    /// (protocol, ALPN, a peer that does not speak TLS, ...).
    TlsHandshake,
    /// A certificate was refused: the directory's by this gateway
    /// (unknown CA, expired, wrong name), or this gateway's by the
    /// directory (missing, unknown CA, expired).
    Certificate,
}

impl FailureKind {
    pub const ALL: [FailureKind; 3] = [
        FailureKind::Connect,
        FailureKind::TlsHandshake,
        FailureKind::Certificate,
    ];

    /// Stable lower-case name for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::TlsHandshake => "tls_handshake",
            FailureKind::Certificate => "certificate",
        }
    }

    /// Classify a rustls error.
    pub fn of_rustls(error: &rustls::Error) -> FailureKind {
        use rustls::AlertDescription as A;
        match error {
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_) => FailureKind::Certificate,
            rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired
                | A::AccessDenied,
            ) => FailureKind::Certificate,
            _ => FailureKind::TlsHandshake,
        }
    }

    /// Classify an I/O error from a TLS stream: a rustls error inside is
    /// classified by [`FailureKind::of_rustls`], anything else is a
    /// handshake failure (the peer closed, or did not speak TLS).
    pub fn of_tls_io(error: &std::io::Error) -> FailureKind {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls) => FailureKind::of_rustls(rustls),
            None => FailureKind::TlsHandshake,
        }
    }
}

#[cfg(test)]
mod tests;

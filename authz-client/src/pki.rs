//! A throwaway certificate authority for the directory link: `hsmgate dev`
//! makes one in its state directory, and the tests make one per test. Not
//! for production: there, certificates come from the operator's PKI
//! (cert-manager, a corporate CA, ...).
//!
//! Every key is P-256. Certificates are valid from 1975 to 4096 (rcgen's
//! default) unless [`Leaf::expired`] asks for one that ended in 2001.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that issues leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (the directory).
    Server,
    /// A TLS client (a gateway).
    Client,
}

/// The leaf certificate to issue.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The subject's common name.
    pub common_name: String,
    /// subjectAltName entries: IP addresses become IP entries, anything
    /// else a DNS name.
    pub names: Vec<String>,
    pub usage: Usage,
    /// Valid only in 2000: an expired certificate, for tests.
    pub expired: bool,
}

impl Leaf {
    pub fn new(usage: Usage, common_name: &str, names: &[&str]) -> Leaf {
        Leaf {
            common_name: common_name.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            usage,
            expired: false,
        }
    }
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Issued {
    /// Write the certificate and the key (the key readable by its owner
    /// only).
    pub fn write(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
        std::fs::write(cert, &self.cert_pem)?;
        write_private(key, &self.key_pem)
    }
}

/// Write `contents` to `path`, readable and writable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

impl Ca {
    /// A new CA with a fresh key.
    pub fn new(common_name: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what the other side trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a leaf certificate with a fresh key.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(leaf.names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match leaf.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

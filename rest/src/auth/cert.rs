//! Mutual TLS: the names of a verified client certificate, and the
//! configured identity they map to.
//!
//! rustls has already verified the chain against `tls.client_ca_file`
//! (signature, validity, client-auth usage) before a request is read; here
//! the end-entity certificate's subject common name and subjectAltName
//! entries (dNSName, rfc822Name, URI) are read and matched exactly against
//! `[[mtls.identities]] match`.

use hsmgate_wire::der::{element, tlv};

use super::{AuthFailure, Principal};
use crate::config::CertIdentity;

/// A name a client certificate can carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertName {
    Dns(String),
    Uri(String),
    Email(String),
    CommonName(String),
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertName::Dns(n) => write!(f, "dns:{n}"),
            CertName::Uri(n) => write!(f, "uri:{n}"),
            CertName::Email(n) => write!(f, "email:{n}"),
            CertName::CommonName(n) => write!(f, "cn:{n}"),
        }
    }
}

impl std::str::FromStr for CertName {
    type Err = String;

    fn from_str(s: &str) -> Result<CertName, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or("must be dns:NAME, uri:URI, email:ADDRESS or cn:NAME")?;
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err("the name must be 1-256 printable characters".into());
        }
        let name = name.to_owned();
        match kind {
            "dns" => Ok(CertName::Dns(name.to_ascii_lowercase())),
            "uri" => Ok(CertName::Uri(name)),
            "email" => Ok(CertName::Email(name)),
            "cn" => Ok(CertName::CommonName(name)),
            _ => Err("must start with dns:, uri:, email: or cn:".into()),
        }
    }
}

/// The names in a DER certificate: subjectAltName entries first, then the
/// subject's common names. Unreadable parts give no names.
pub fn names_of(der: &[u8]) -> Vec<CertName> {
    let mut out = Vec::new();
    let Some((tbs_rest, subject)) = tbs_after_subject(der) else {
        return out;
    };
    sans(tbs_rest, &mut out);
    common_names(subject, &mut out);
    out
}

/// The tbsCertificate's fields after the subject, and the subject's
/// contents.
fn tbs_after_subject(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let tbs = hsmgate_wire::der::tbs_fields(der)?;
    let (_, subject, _) = tlv(tbs.subject)?;
    Some((tbs.after_subject, subject))
}

const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// subjectAltName entries from the fields after the subject
/// (subjectPublicKeyInfo, optional unique ids, `[3]` extensions).
fn sans(mut rest: &[u8], out: &mut Vec<CertName>) {
    while let Some((tag, contents, next)) = tlv(rest) {
        rest = next;
        if tag != 0xa3 {
            continue;
        }
        let Some((0x30, mut exts, _)) = tlv(contents) else {
            return;
        };
        while let Some((0x30, ext, next)) = tlv(exts) {
            exts = next;
            let Some((0x06, oid, mut fields)) = tlv(ext) else {
                continue;
            };
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            if fields.first() == Some(&0x01) {
                // critical BOOLEAN
                fields = element(fields).map_or(&[][..], |(_, r)| r);
            }
            let Some((0x04, value, _)) = tlv(fields) else {
                continue;
            };
            let Some((0x30, mut names, _)) = tlv(value) else {
                continue;
            };
            while let Some((tag, name, next)) = tlv(names) {
                names = next;
                let Ok(text) = std::str::from_utf8(name) else {
                    continue;
                };
                match tag {
                    0x82 => out.push(CertName::Dns(text.to_ascii_lowercase())),
                    0x81 => out.push(CertName::Email(text.to_owned())),
                    0x86 => out.push(CertName::Uri(text.to_owned())),
                    _ => {}
                }
            }
        }
    }
}

/// Common names of a subject `SEQUENCE OF SET OF AttributeTypeAndValue`.
fn common_names(mut subject: &[u8], out: &mut Vec<CertName>) {
    while let Some((0x31, mut set, next)) = tlv(subject) {
        subject = next;
        while let Some((0x30, atv, next)) = tlv(set) {
            set = next;
            let Some((0x06, oid, value)) = tlv(atv) else {
                continue;
            };
            // UTF8String, PrintableString, IA5String
            if let Some((0x0c | 0x13 | 0x16, text, _)) = tlv(value)
                && oid == OID_COMMON_NAME
                && let Ok(text) = std::str::from_utf8(text)
            {
                out.push(CertName::CommonName(text.to_owned()));
            }
        }
    }
}

/// The principal of a verified client certificate: the first configured
/// identity that one of its names matches.
pub fn principal(der: &[u8], identities: &[CertIdentity]) -> Result<Principal, AuthFailure> {
    let names = names_of(der);
    identities
        .iter()
        .find(|id| names.contains(&id.name))
        .map(|id| Principal {
            subject: format!("cert:{}", id.name),
            tenant: id.tenant.clone(),
            partitions: id.partitions.clone(),
        })
        .ok_or(AuthFailure::UnknownCertificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_authz::pki::{Ca, Leaf, Usage};

    fn cert_der(cn: &str, names: &[&str]) -> Vec<u8> {
        let ca = Ca::new("test CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        ca.issue(&Leaf::new(Usage::Client, cn, names))
            .unwrap()
            .write(&c, &k)
            .unwrap();
        hsmgate_authz::tls::read_certificates(&c).unwrap()[0].to_vec()
    }

    #[test]
    fn reads_the_common_name_and_dns_names() {
        let der = cert_der("ci-runner", &["CI.example.test", "b.example.test"]);
        let names = names_of(&der);
        assert!(
            names.contains(&CertName::Dns("ci.example.test".into())),
            "{names:?}"
        );
        assert!(names.contains(&CertName::Dns("b.example.test".into())));
        assert!(names.contains(&CertName::CommonName("ci-runner".into())));
    }

    #[test]
    fn maps_to_the_first_matching_identity_or_refuses() {
        let der = cert_der("ci-runner", &["ci.example.test"]);
        let ids = vec![
            CertIdentity {
                name: "dns:other.example.test".parse().unwrap(),
                tenant: "t".into(),
                partitions: vec!["p".into()],
            },
            CertIdentity {
                name: "cn:ci-runner".parse().unwrap(),
                tenant: "demo".into(),
                partitions: vec!["demo".into()],
            },
        ];
        let p = principal(&der, &ids).unwrap();
        assert_eq!(p.subject, "cert:cn:ci-runner");
        assert_eq!(p.tenant, "demo");
        assert_eq!(
            principal(&der, &ids[..1]),
            Err(AuthFailure::UnknownCertificate)
        );
        assert_eq!(
            principal(&[0x30, 0x03, 1, 2], &ids),
            Err(AuthFailure::UnknownCertificate)
        );
    }
}

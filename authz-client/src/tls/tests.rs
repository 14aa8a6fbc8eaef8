use std::path::PathBuf;

use super::*;
use crate::pki::{Ca, Leaf, Usage};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

fn issue(ca: &Ca, usage: Usage, name: &str, dir: &Files, stem: &str) -> (PathBuf, PathBuf) {
    let issued = ca.issue(&Leaf::new(usage, name, &[name])).expect("issue");
    let (cert, key) = (
        dir.path(&format!("{stem}.pem")),
        dir.path(&format!("{stem}.key")),
    );
    issued.write(&cert, &key).expect("write");
    (cert, key)
}

fn client_files(files: &Files, ca: &Ca) -> ClientTlsFiles {
    let (cert, key) = issue(ca, Usage::Client, "gw-1", files, "gateway");
    ClientTlsFiles {
        ca_file: Some(files.write("ca.pem", ca.cert_pem())),
        client_cert_file: Some(cert),
        client_key_file: Some(key),
        ..ClientTlsFiles::default()
    }
}

#[test]
fn loads_a_client_config_with_a_ca_and_a_client_certificate() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let tls = ClientTls::load(client_files(&files, &ca)).expect("loads");
    let config = tls.current();
    assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(config.client_auth_cert_resolver.has_certs());
}

#[test]
fn refuses_a_client_config_without_any_ca() {
    let err = ClientTls::load(ClientTlsFiles::default()).expect_err("no roots");
    assert!(matches!(err, TlsError::NoRoots), "{err}");
}

#[test]
fn refuses_a_certificate_without_its_key() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let mut settings = client_files(&files, &ca);
    settings.client_key_file = None;
    let err = ClientTls::load(settings).expect_err("half an identity");
    assert!(matches!(err, TlsError::HalfClientIdentity), "{err}");
}

#[test]
fn refuses_a_key_that_does_not_match_its_certificate() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let mut settings = client_files(&files, &ca);
    let (_, other_key) = issue(&ca, Usage::Client, "gw-2", &files, "other");
    settings.client_key_file = Some(other_key);
    let err = ClientTls::load(settings).expect_err("mismatched key");
    assert!(err.to_string().contains("client_cert_file"), "{err}");
}

#[test]
fn names_the_file_that_is_missing_or_not_pem() {
    let files = Files::new();
    let missing = ClientTlsFiles {
        ca_file: Some(files.path("nowhere.pem")),
        ..ClientTlsFiles::default()
    };
    let err = ClientTls::load(missing).expect_err("missing");
    assert!(err.to_string().contains("nowhere.pem"), "{err}");

    let garbage = ClientTlsFiles {
        ca_file: Some(files.write("garbage.pem", "not a certificate\n")),
        ..ClientTlsFiles::default()
    };
    let err = ClientTls::load(garbage).expect_err("garbage");
    assert!(
        matches!(err, TlsError::NoCertificate { ref path } if path.ends_with("garbage.pem")),
        "{err}"
    );

    let no_key = ServerTlsFiles {
        cert_file: files.write("ca-as-cert.pem", Ca::new("x").expect("ca").cert_pem()),
        key_file: files.write("empty.key", ""),
        client_ca_file: None,
    };
    let err = ServerTls::load(no_key).expect_err("no key");
    assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
}

#[test]
fn loads_a_server_config_that_requires_client_certificates() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let (cert, key) = issue(&ca, Usage::Server, "localhost", &files, "directory");
    let tls = ServerTls::load(ServerTlsFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: Some(files.write("clients.pem", ca.cert_pem())),
    })
    .expect("loads");
    assert_eq!(tls.current().alpn_protocols, vec![b"h2".to_vec()]);
}

#[test]
fn a_bad_new_file_is_refused_and_the_old_config_stays() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let settings = client_files(&files, &ca);
    let tls = ClientTls::load(settings.clone()).expect("loads");
    let before = tls.current();

    std::fs::write(settings.ca_file.as_deref().expect("ca"), "garbage\n").expect("write");
    let outcome = tls.reload_if_changed().expect("the change is seen");
    assert!(outcome.is_err());
    assert!(Arc::ptr_eq(&before, &tls.current()), "old config kept");
    // Reported once: no change since, nothing to do.
    assert!(tls.reload_if_changed().is_none());
}

#[test]
fn a_changed_file_is_read_again_and_an_unchanged_one_is_not() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let settings = client_files(&files, &ca);
    let tls = ClientTls::load(settings.clone()).expect("loads");
    assert!(tls.reload_if_changed().is_none(), "nothing changed");
    let before = tls.current();

    // cert-manager style: the new file appears under the old name by rename.
    let next = Ca::new("next CA").expect("ca");
    let staged = files.write("staged.pem", next.cert_pem());
    std::fs::rename(&staged, settings.ca_file.as_deref().expect("ca")).expect("rename");
    tls.reload_if_changed()
        .expect("the change is seen")
        .expect("and loads");
    assert!(!Arc::ptr_eq(&before, &tls.current()), "new config in force");
}

#[test]
fn swapping_a_symlinked_directory_is_a_change() {
    let files = Files::new();
    let ca = Ca::new("test CA").expect("ca");
    let (first, second) = (files.path("v1"), files.path("v2"));
    for dir in [&first, &second] {
        std::fs::create_dir(dir).expect("mkdir");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write");
    }
    // Kubernetes secret volumes: ..data -> a timestamped directory.
    let data = files.path("..data");
    std::os::unix::fs::symlink(&first, &data).expect("symlink");
    let tls = ClientTls::load(ClientTlsFiles {
        ca_file: Some(data.join("ca.pem")),
        ..ClientTlsFiles::default()
    })
    .expect("loads");
    let staged = files.path("..data_tmp");
    std::os::unix::fs::symlink(&second, &staged).expect("symlink");
    std::fs::rename(&staged, &data).expect("swap");
    assert!(tls.reload_if_changed().is_some(), "the swap is seen");
}

#[test]
fn the_server_name_is_the_override_or_the_host() {
    let files = ClientTlsFiles::default();
    assert_eq!(
        files.server_name("127.0.0.1").expect("ip"),
        ServerName::try_from("127.0.0.1").expect("ip")
    );
    assert_eq!(
        files.server_name("[::1]").expect("ipv6"),
        ServerName::try_from("::1").expect("ip")
    );
    let with_override = ClientTlsFiles {
        server_name: Some("directory.hsm.svc".into()),
        ..ClientTlsFiles::default()
    };
    assert_eq!(
        with_override.server_name("10.0.0.1").expect("override"),
        ServerName::try_from("directory.hsm.svc").expect("dns")
    );
    let bad = ClientTlsFiles {
        server_name: Some("not a name".into()),
        ..ClientTlsFiles::default()
    };
    assert!(bad.server_name("x").is_err());
}

#[test]
fn classifies_certificate_errors_apart_from_other_tls_errors() {
    let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
    assert_eq!(FailureKind::of_rustls(&cert), FailureKind::Certificate);
    let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
    assert_eq!(FailureKind::of_rustls(&alert), FailureKind::Certificate);
    let alpn = rustls::Error::NoApplicationProtocol;
    assert_eq!(FailureKind::of_rustls(&alpn), FailureKind::TlsHandshake);
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, cert);
    assert_eq!(FailureKind::of_tls_io(&io), FailureKind::Certificate);
    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    assert_eq!(FailureKind::of_tls_io(&eof), FailureKind::TlsHandshake);
}

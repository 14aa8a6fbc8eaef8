//! Config validation against the fixture files in `tests/fixtures/`: every
//! invalid file must be refused with the field's name and the reason.

use std::path::PathBuf;
use std::time::Duration;

use hsmgate_client::{ClientConfig, ClientError, ConfigError, GatewayAddr};

/// The fixtures, copied once into the target directory with the key files
/// made private (git does not keep file modes, and a private key file that
/// others may read is refused).
fn fixture(name: &str) -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let to = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("client-config-fixtures");
        std::fs::create_dir_all(&to).expect("fixture copy dir");
        for entry in std::fs::read_dir(&from).expect("fixtures") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            let _ = std::fs::remove_file(&target);
            std::fs::copy(&path, &target).expect("copy fixture");
            let mode = if path.extension().is_some_and(|e| e == "key") {
                0o600
            } else {
                0o644
            };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }
        to
    });
    dir.join(name)
}

fn problems(name: &str) -> Vec<(String, String)> {
    match ClientConfig::load(fixture(name)) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.into_iter().map(|p| (p.field, p.reason)).collect()
        }
        other => panic!("{name}: expected field problems, got {other:?}"),
    }
}

fn has(problems: &[(String, String)], field: &str, reason_part: &str) -> bool {
    problems
        .iter()
        .any(|(f, r)| f == field && r.contains(reason_part))
}

#[test]
fn loads_a_valid_config_with_key_files_relative_to_it() {
    let config = ClientConfig::load(fixture("valid.toml")).unwrap();
    assert_eq!(
        config.gateway,
        GatewayAddr::Name {
            host: "gw.example.com".into(),
            port: 2300
        }
    );
    assert_eq!(config.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(config.client_id, "demo-app");
    assert_eq!(config.hsm_keys.len(), 1);
    assert_eq!(config.request_timeout, Duration::from_millis(2500));
    // Defaults fill what the file leaves out.
    assert_eq!(config.connect_timeout, Duration::from_millis(3000));
    assert_eq!(config.handshake_timeout, Duration::from_millis(5000));
    assert_ne!(config.identity.public(), config.partition_key.public());
}

#[test]
fn a_key_file_other_users_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("client-config-open-key");
    std::fs::create_dir_all(&dir).expect("dir");
    for name in ["valid.toml", "service.key", "partition.key"] {
        let target = dir.join(name);
        let _ = std::fs::remove_file(&target);
        std::fs::copy(fixture(name), &target).expect("copy");
    }
    std::fs::set_permissions(
        dir.join("service.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let err = ClientConfig::load(dir.join("valid.toml")).expect_err("refused");
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "identity_file");
    assert!(problems[0].reason.contains("chmod 600"), "{problems:?}");
}

#[test]
fn reports_every_missing_required_field() {
    let p = problems("missing_fields.toml");
    for field in [
        "gateway_key",
        "client_id",
        "tenant",
        "partition",
        "identity_file",
        "partition_key_file",
        "hsm_keys",
    ] {
        assert!(has(&p, field, "is required"), "{field} missing from {p:?}");
    }
    assert!(!p.iter().any(|(f, _)| f == "gateway"), "{p:?}");
}

#[test]
fn reports_every_bad_value_with_its_field_and_reason() {
    let p = problems("bad_values.toml");
    assert!(has(&p, "gateway", "expected host:port"), "{p:?}");
    assert!(has(&p, "dns_server", "expected an IP address"), "{p:?}");
    assert!(has(&p, "gateway_key", "x25519:"), "{p:?}");
    assert!(has(&p, "client_id", "outside [A-Za-z0-9._-]"), "{p:?}");
    assert!(has(&p, "tenant", "empty name"), "{p:?}");
    assert!(has(&p, "identity_file", "cannot read"), "{p:?}");
    assert!(has(&p, "identity_file", "missing.key"), "{p:?}");
    assert!(has(&p, "partition_key_file", "bad.key"), "{p:?}");
    assert!(has(&p, "hsm_keys[1]", "64 hex digits"), "{p:?}");
    assert!(has(&p, "connect_timeout_ms", "out of range"), "{p:?}");
    assert!(has(&p, "request_timeout_ms", "9999999"), "{p:?}");
    assert!(
        !p.iter()
            .any(|(f, _)| f == "partition" || f == "hsm_keys[0]")
    );
    assert_eq!(p.len(), 10, "{p:?}");
}

#[test]
fn requires_at_least_one_trusted_hsm_key() {
    let p = problems("empty_hsm_keys.toml");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(has(&p, "hsm_keys", "at least one"), "{p:?}");
}

#[test]
fn refuses_unknown_fields_by_name() {
    let err = ClientConfig::load(fixture("unknown_field.toml")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(text.contains("gateway_pin"), "{text}");
    assert!(text.contains("unknown_field.toml"), "{text}");
}

#[test]
fn refuses_wrong_types_naming_the_file() {
    let err = ClientConfig::load(fixture("wrong_type.toml")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(text.contains("wrong_type.toml"), "{text}");
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let err = ClientConfig::load(fixture("does-not-exist.toml")).unwrap_err();
    assert!(err.to_string().contains("does-not-exist.toml"));
    assert_eq!(ClientError::from(err).exit_code(), 2);
}

#[test]
fn the_error_message_lists_all_problems_on_one_line() {
    let err = ClientConfig::load(fixture("bad_values.toml")).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("bad_values.toml"), "{text}");
    assert!(text.contains("client_id: "), "{text}");
    assert!(text.contains("hsm_keys[1]: "), "{text}");
}

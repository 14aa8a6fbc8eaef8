//! Config files under tests/fixtures: the good one loads, each bad one is
//! refused with the path of every offending field.

use std::path::{Path, PathBuf};

use hsmgate_hsm::{ConfigError, HsmConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn problems(name: &str) -> Vec<String> {
    match HsmConfig::load(fixture(name)) {
        Ok(_) => panic!("{name} should be refused"),
        Err(e) => e.problems(),
    }
}

#[test]
fn loads_the_good_fixture_and_resolves_paths_against_its_directory() {
    let config = HsmConfig::load(fixture("good.toml")).unwrap();
    assert_eq!(config.hsm_id, "hsm-1");
    assert_eq!(config.key_file, fixture("hsm-1.key"));
    assert_eq!(config.state_dir, fixture("state/hsm-1"));
    assert_eq!(config.limits.max_sessions, 16);
    assert_eq!(config.limits.handshake_timeout_ms, 1000);
    assert_eq!(config.limits.idle_timeout_ms, 300_000, "default");
    assert_eq!(config.limits.max_keys_per_partition, 256, "default");
    assert_eq!(config.partitions.len(), 2);
}

#[test]
fn names_the_bad_client_key_by_its_path() {
    let problems = problems("bad_client_key.toml");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("partitions[1].client_keys[0]: bad key text: "),
        "{problems:?}"
    );
    assert_eq!(problems[1], "partitions[1].client_keys[2]: duplicate key");
}

#[test]
fn reports_every_problem_of_a_file_at_once() {
    let problems = problems("many_problems.toml");
    let fields: Vec<&str> = problems
        .iter()
        .map(|p| p.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        [
            "hsm_id",
            "state_dir",
            "limits.idle_timeout_ms",
            "limits.max_keys_per_partition",
            "partitions[1].name",
            "partitions[2].name",
        ],
        "{problems:?}"
    );
    assert!(problems[4].contains("duplicate partition"), "{problems:?}");
}

#[test]
fn requires_at_least_one_partition() {
    assert_eq!(
        problems("no_partitions.toml"),
        ["partitions: at least one partition is required"]
    );
}

#[test]
fn refuses_unknown_fields_naming_them() {
    let err = HsmConfig::load(fixture("unknown_field.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("max_session"), "{text}");
    assert!(text.contains("unknown_field.toml"), "{text}");
}

#[test]
fn refuses_a_bad_listen_address_naming_the_field() {
    let text = HsmConfig::load(fixture("bad_listen.toml"))
        .unwrap_err()
        .to_string();
    assert!(text.contains("listen"), "{text}");
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = HsmConfig::load(fixture("absent.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("absent.toml"));
}

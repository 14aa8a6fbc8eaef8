//! Invalid data files (fixtures/*.toml): every problem is reported, each with
//! the path of the field at fault.

use std::path::PathBuf;

use hsmgate_directory::{DirectoryData, LoadError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_err(name: &str) -> (LoadError, String) {
    let err = DirectoryData::from_file(&fixture(name)).expect_err("fixture must be refused");
    let text = err.to_string();
    (err, text)
}

fn assert_mentions(text: &str, expected: &[&str]) {
    for e in expected {
        assert!(text.contains(e), "missing {e:?} in:\n{text}");
    }
}

#[test]
fn accepts_the_valid_fixtures_and_the_example() {
    for path in [
        fixture("valid.toml"),
        fixture("valid_two_clients.toml"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/directory.toml"),
    ] {
        let data = DirectoryData::from_file(&path)
            .unwrap_or_else(|e| panic!("{} must load: {e}", path.display()));
        assert!(data.summary().clients >= 1);
    }
}

#[test]
fn reports_every_bad_key_with_its_path() {
    let (err, text) = load_err("bad_keys.toml");
    assert_eq!(err.problems().len(), 3, "{text}");
    assert_mentions(
        &text,
        &[
            "bad_keys.toml has 3 problem(s)",
            "clients[0].public_key: bad key text: a key is 64 hex digits",
            "clients[1].public_key: bad key text: a public key starts with \"x25519:\"",
            "clients[2].public_key: bad key text: a key is 64 hex digits",
        ],
    );
}

#[test]
fn reports_unknown_tenants_and_partitions() {
    let (err, text) = load_err("unknown_references.toml");
    assert_eq!(err.problems().len(), 3, "{text}");
    assert_mentions(
        &text,
        &[
            "partitions[0].tenant: unknown tenant \"x\"",
            "clients[0].tenant: unknown tenant \"nobody\"",
            "clients[1].partitions[0]: unknown partition \"missing\"",
        ],
    );
}

#[test]
fn reports_duplicate_names_and_ids() {
    let (err, text) = load_err("duplicates.toml");
    assert_eq!(err.problems().len(), 3, "{text}");
    assert_mentions(
        &text,
        &[
            "tenants[1].name: duplicate tenant \"demo\" (first at tenants[0])",
            "partitions[1].name: duplicate partition \"p1\" (first at partitions[0])",
            "clients[1].id: duplicate client \"app\" (first at clients[0])",
        ],
    );
}

#[test]
fn reports_bad_names_networks_and_ttl() {
    let (err, text) = load_err("bad_names_and_networks.toml");
    assert_mentions(
        &text,
        &[
            "defaults.ttl_seconds: must be between 1 and 86400",
            "tenants[0].name: invalid name \"bad name\"",
            "tenants[0].networks[0]: bad network \"10.0.0.0/33\"",
            "tenants[1].networks[1]: bad network \"not-a-network\"",
            "partitions[0].name: invalid name \"p/1\"",
            "partitions[0].pool: invalid name \"\"",
            "clients[0].networks[0]: bad network \"127.0.0.1\"",
        ],
    );
    assert_eq!(err.problems().len(), 7, "{text}");
    // One problem per line, after the heading.
    assert_eq!(text.lines().count(), 8, "{text}");
}

#[test]
fn refuses_a_partition_of_another_tenant() {
    let (_, text) = load_err("cross_tenant_partition.toml");
    assert_mentions(
        &text,
        &["clients[0].partitions[0]: partition \"b-part\" belongs to tenant \"b\", not \"a\""],
    );
}

#[test]
fn refuses_unknown_fields_with_their_location() {
    let (err, text) = load_err("unknown_field.toml");
    assert!(matches!(err, LoadError::Syntax { .. }), "{text}");
    assert_mentions(&text, &["unknown_field.toml", "enabeld", "line 9"]);
}

#[test]
fn syntax_errors_name_the_line() {
    let (err, text) = load_err("syntax_error.toml");
    assert!(matches!(err, LoadError::Syntax { .. }), "{text}");
    assert_mentions(&text, &["syntax_error.toml", "line 3"]);
}

#[test]
fn a_missing_file_is_an_io_error() {
    let (err, text) = load_err("no_such_file.toml");
    assert!(matches!(err, LoadError::Io { .. }), "{text}");
}

//! The `hsmgate-rest` command line: usage and a config that cannot be read.
//! (This target also makes `cargo test` build the binary, which the
//! end-to-end tests in tests/tests/rest.rs start.)

use std::process::Command;

fn hsmgate_rest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hsmgate-rest"))
}

#[test]
fn help_names_the_config_and_the_check() {
    let out = hsmgate_rest().arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--check", "--log-format"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn a_missing_config_file_is_exit_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let out = hsmgate_rest()
        .arg("--config")
        .arg(&missing)
        .arg("--check")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn a_config_with_problems_lists_each_with_its_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rest.toml");
    std::fs::write(
        &path,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nauth = \"basic\"\n[limits]\nburst = 0\n",
    )
    .expect("write");
    let out = hsmgate_rest()
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "listeners[0].auth",
        "limits.burst",
        "tls: missing",
        "partitions",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

//! The `hsmgate` binary's command line. (Having an integration test here
//! also makes `cargo test --workspace` build the binary, which the
//! end-to-end tests in `tests/` run.)

use std::process::Command;

fn hsmgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hsmgate"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = hsmgate()
        .arg("--help")
        .output()
        .expect("run hsmgate --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "keygen", "dev"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let out = hsmgate()
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .expect("run hsmgate");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = hsmgate().arg("serve").output().expect("run hsmgate");
    assert_eq!(out.status.code(), Some(2));
}

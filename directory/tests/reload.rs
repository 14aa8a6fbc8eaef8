//! Reload: a broken file keeps the last good data, a good one is taken.

use std::path::PathBuf;

use hsmgate_directory::{Directory, DirectoryData, LoadError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_fixture(name: &str, to: &std::path::Path) {
    std::fs::copy(fixture(name), to).expect("copy fixture");
}

#[test]
fn reload_keeps_old_data_on_a_broken_file_and_takes_a_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directory.toml");
    copy_fixture("valid.toml", &path);
    let directory = Directory::load(&path).expect("initial load");
    assert_eq!(directory.snapshot().summary().clients, 1);

    for broken in ["bad_keys.toml", "syntax_error.toml", "duplicates.toml"] {
        copy_fixture(broken, &path);
        let err = directory
            .reload_from_file()
            .expect_err("broken file refused");
        assert!(err.to_string().contains("directory.toml"), "{err}");
        assert_eq!(directory.snapshot().summary().clients, 1, "old data kept");
    }

    std::fs::remove_file(&path).expect("remove");
    assert!(matches!(
        directory.reload_from_file(),
        Err(LoadError::Io { .. })
    ));
    assert_eq!(directory.snapshot().summary().clients, 1, "old data kept");

    copy_fixture("valid_two_clients.toml", &path);
    let summary = directory.reload_from_file().expect("good file taken");
    assert_eq!(summary.clients, 2);
    assert_eq!(summary.partitions, 2);
    assert_eq!(directory.snapshot().summary().clients, 2);
}

#[test]
fn in_memory_directory_has_nothing_to_reload() {
    let data = DirectoryData::from_file(&fixture("valid.toml")).expect("valid");
    let directory = Directory::from_data(data);
    assert!(matches!(
        directory.reload_from_file(),
        Err(LoadError::NoFile)
    ));
}

//! The directory's data file loader (`DirectoryData::from_toml_str`:
//! `DirectoryFile::parse`, then `validate` building the index) on any text.
//!
//! Properties: no panic on any text; a file that parses, written back as
//! TOML, parses to the same file (decode → encode → decode), and validates
//! the same way; a syntax error names a line and column.
#![no_main]

use hsmgate_directory::{DirectoryData, DirectoryFile, LoadError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match DirectoryFile::parse(text) {
        Ok(file) => file,
        Err(e) => {
            assert!(matches!(e, LoadError::Syntax { .. }), "{e}");
            assert!(DirectoryData::from_toml_str(text).is_err());
            return;
        }
    };
    let written = toml::to_string(&file).expect("a parsed file serializes");
    let again = DirectoryFile::parse(&written)
        .unwrap_or_else(|e| panic!("written file does not parse: {e}\n{written}"));
    assert_eq!(again, file);
    match (file.validate(), again.validate()) {
        (Ok(a), Ok(b)) => assert_eq!(a.summary(), b.summary()),
        (Err(a), Err(b)) => {
            assert!(!a.problems().is_empty());
            assert_eq!(a.problems(), b.problems());
        }
        (a, b) => panic!("the same file validates differently: {a:?} / {b:?}"),
    }
    assert_eq!(
        DirectoryData::from_toml_str(text).is_ok(),
        file.validate().is_ok()
    );
});

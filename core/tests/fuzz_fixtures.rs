//! Inputs on which a fuzz target (`fuzz/`, see fuzz/README.md) once panicked, replayed by every
//! `cargo test`: each must now give its expected verdict, and no decoder may panic on it.
//!
//! Fixtures live in `tests/fixtures/fuzz/<target>/`; every file there must have an entry in
//! the table of its target below, so a new crasher cannot be added without its expectation.

use std::collections::BTreeMap;
use std::path::Path;

use harmonylite_core::wire::{decode_batch, decode_frame, Compression, WireError};

/// Every fixture of `target`, by file name.
fn fixtures(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn wire_crashers_decode_to_their_expected_errors() {
    let expected: BTreeMap<&str, WireError> = [(
        // A frame whose message version (postcard variant index) is u64::MAX: adding one to
        // name the version overflowed.
        "version-index-u64-max.bin",
        WireError::UnsupportedVersion(u64::MAX),
    )]
    .into_iter()
    .collect();
    let found = fixtures("wire");
    assert_eq!(
        found.keys().map(String::as_str).collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>(),
        "every wire fixture needs an expectation here"
    );
    for (name, bytes) in &found {
        assert_eq!(
            decode_frame(bytes).as_ref(),
            Err(&expected[name.as_str()]),
            "{name}"
        );
        // The batch decoder sees garbage here; it must refuse it, not panic.
        assert!(decode_batch(Compression::None, bytes).is_err(), "{name}");
        assert!(decode_batch(Compression::Lz4, bytes).is_err(), "{name}");
    }
}

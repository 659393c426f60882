//! The fuzz target's seed corpus as a regression test under the normal `cargo test`: every file
//! parses without a panic, `valid_*` files to a complete header and `invalid_*` files to an
//! error. Crashes the fuzzer finds are fixed, then added there under one of those names.

use std::path::Path;

use ethgate::server::proxy_protocol::{parse, Parsed};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/proxy_header");

#[test]
fn seed_corpus_parses_as_its_names_say() {
    let mut entries: Vec<_> = std::fs::read_dir(Path::new(CORPUS))
        .expect("fuzz/corpus/proxy_header exists")
        .map(|entry| entry.expect("readable corpus entry").path())
        .collect();
    entries.sort();
    let (mut valid, mut invalid) = (0, 0);
    for path in &entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let bytes = std::fs::read(path).expect("readable corpus file");
        let result = parse(&bytes);
        if name.starts_with("valid_") {
            match result {
                Ok(Parsed::Complete { consumed, .. }) => assert!(consumed <= bytes.len(), "{name}"),
                other => panic!("{name}: expected a complete header, got {other:?}"),
            }
            valid += 1;
        } else if name.starts_with("invalid_") {
            assert!(result.is_err(), "{name}: expected an error, got {result:?}");
            invalid += 1;
        }
    }
    assert!(
        valid >= 5 && invalid >= 5,
        "seed corpus went missing: {valid} valid, {invalid} invalid"
    );
}

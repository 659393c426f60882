//! The JSON-RPC fuzz targets' seed corpora as regression tests under the normal `cargo test`.
//! Request decoder (`fuzz/corpus/jsonrpc_request`): `valid_*` decode to calls, `invalid_*` to a
//! rejected request (`*keeps_id*` with the client's id), `parse_*` to a body-level error.
//! Splicing (`fuzz/corpus/upstream_answer`, request NUL answer): `ok_*` splice to one response
//! per call under the client's id byte for byte, `bad_*` are refused. Crashes the fuzzer finds
//! are fixed, then added under one of those names.

use std::path::{Path, PathBuf};

use ethgate::jsonrpc::{decode, Call, Incoming};
use ethgate::router::{splice, Framing};
use serde_json::value::RawValue;

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let bytes = std::fs::read(&path).expect("readable corpus file");
            (name, bytes)
        })
        .collect()
}

#[test]
fn request_corpus_decodes_as_its_names_say() {
    let (mut valid, mut invalid, mut parse) = (0, 0, 0);
    for (name, bytes) in corpus("jsonrpc_request") {
        let decoded = decode(&bytes, 1000);
        if name.starts_with("valid_") {
            match decoded {
                Ok(Incoming::Single(Ok(_))) => {}
                Ok(Incoming::Batch(items)) => assert!(items.iter().any(Result::is_ok), "{name}"),
                other => panic!("{name}: expected calls, got {other:?}"),
            }
            valid += 1;
        } else if name.starts_with("invalid_") {
            let Ok(Incoming::Single(Err(rejected))) = decoded else {
                panic!("{name}: expected a rejected request, got {decoded:?}");
            };
            assert_eq!(rejected.id.is_some(), name.contains("keeps_id"), "{name}");
            invalid += 1;
        } else if name.starts_with("parse_") {
            assert!(
                decoded.is_err(),
                "{name}: expected an error, got {decoded:?}"
            );
            parse += 1;
        }
    }
    assert!(
        valid >= 5 && invalid >= 5 && parse >= 5,
        "corpus went missing"
    );
}

#[test]
fn answer_corpus_splices_as_its_names_say() {
    let (mut ok, mut bad) = (0, 0);
    for (name, bytes) in corpus("upstream_answer") {
        let split = bytes
            .iter()
            .position(|&b| b == 0)
            .expect("request NUL answer");
        let (items, batch) = match decode(&bytes[..split], 1000) {
            Ok(Incoming::Single(item)) => (vec![item], Framing::Single),
            Ok(Incoming::Batch(items)) => (items, Framing::Batch),
            Err(e) => panic!("{name}: request does not decode: {e:?}"),
        };
        let calls: Vec<&Call<'_>> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        let result = splice(&bytes[split + 1..], &calls, batch);
        if name.starts_with("ok_") {
            let rendered = result.unwrap_or_else(|e| panic!("{name}: refused: {e}"));
            for (call, reply) in calls.iter().zip(&rendered) {
                let Some(id) = call.id else {
                    assert!(reply.is_none(), "{name}: a notification got an answer");
                    continue;
                };
                let reply = reply
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: no answer"));
                let object: std::collections::HashMap<String, Box<RawValue>> =
                    serde_json::from_slice(&reply.body).expect("spliced answer is JSON");
                assert_eq!(object["id"].get(), id.get(), "{name}");
            }
            ok += 1;
        } else if name.starts_with("bad_") {
            assert!(result.is_err(), "{name}: expected a refusal");
            bad += 1;
        }
    }
    assert!(ok >= 4 && bad >= 5, "corpus went missing");
}

//! Fuzzes the client request decoder: it must never panic, never accept a batch longer than
//! the limit, and every call or rejection it returns carries an id of a type ids may have.
#![no_main]
#![forbid(unsafe_code)]

use ethgate::jsonrpc::{decode, Incoming};
use libfuzzer_sys::fuzz_target;

/// Small, so batch-length handling is exercised by small inputs.
const MAX_BATCH_LEN: usize = 8;

fn id_ok(id: Option<&serde_json::value::RawValue>) -> bool {
    id.is_none_or(|id| {
        matches!(
            id.get().as_bytes().first(),
            Some(b'"' | b'-' | b'0'..=b'9' | b'n')
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let items = match decode(data, MAX_BATCH_LEN) {
        Err(_) => return,
        Ok(Incoming::Single(item)) => vec![item],
        Ok(Incoming::Batch(items)) => {
            assert!(
                !items.is_empty() && items.len() <= MAX_BATCH_LEN,
                "batch of {}",
                items.len()
            );
            items
        }
    };
    for item in &items {
        match item {
            Ok(call) => {
                assert!(id_ok(call.id), "call id {:?}", call.id);
                assert!(!call.method.is_empty());
            }
            Err(rejected) => assert!(id_ok(rejected.id), "rejected id {:?}", rejected.id),
        }
    }
});

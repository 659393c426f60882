//! Fuzzes splicing an upstream answer under the client's ids. The input is a client request
//! body, a NUL byte (never valid inside JSON), then the upstream's answer. Splicing must never
//! panic, and what it accepts must be one JSON response per call that carries the client's id
//! byte for byte.
#![no_main]
#![forbid(unsafe_code)]

use ethgate::jsonrpc::{decode, Call, Incoming};
use ethgate::router::{splice, Framing};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (request, answer) = (&data[..split], &data[split + 1..]);
    let (items, batch) = match decode(request, 1000) {
        Ok(Incoming::Single(item)) => (vec![item], Framing::Single),
        Ok(Incoming::Batch(items)) => (items, Framing::Batch),
        Err(_) => return,
    };
    let calls: Vec<&Call<'_>> = items.iter().filter_map(|item| item.as_ref().ok()).collect();
    if calls.is_empty() {
        return;
    }
    let Ok(rendered) = splice(answer, &calls, batch) else {
        return;
    };
    assert_eq!(rendered.len(), calls.len());
    for (call, reply) in calls.iter().zip(&rendered) {
        match (call.id, reply) {
            (None, None) => {}
            (Some(id), Some(reply)) => {
                #[derive(serde::Deserialize)]
                struct Object<'a> {
                    #[serde(borrow)]
                    id: &'a RawValue,
                }
                let object: Object = serde_json::from_slice(&reply.body)
                    .unwrap_or_else(|e| panic!("spliced answer is not JSON ({e})"));
                assert_eq!(object.id.get(), id.get());
            }
            (id, reply) => panic!("id {id:?} but reply {reply:?}"),
        }
    }
});

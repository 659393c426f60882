//! Fuzzes the PROXY protocol parser: it must never panic, and its answers must agree with
//! themselves on prefixes and re-parses, which is what `read_header` relies on when it peeks at a
//! header that arrives in pieces.
#![no_main]
#![forbid(unsafe_code)]

use ethgate::server::proxy_protocol::{parse, Parsed, MAX_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    match &full {
        Ok(Parsed::Complete { header, consumed }) => {
            assert!(*consumed > 0 && *consumed <= data.len() && *consumed <= MAX_HEADER_LEN);
            // The header alone parses to the same header: nothing after it was looked at.
            let alone = parse(&data[..*consumed]);
            let expected = Parsed::Complete {
                header: *header,
                consumed: *consumed,
            };
            assert!(
                matches!(&alone, Ok(p) if *p == expected),
                "header alone reparsed as {alone:?}"
            );
        }
        // More bytes are never needed once the largest header fits.
        Ok(Parsed::Incomplete) => assert!(data.len() < MAX_HEADER_LEN),
        Err(_) => {}
    }
    // Prefixes never contradict the whole: an error is final, a complete header stays complete.
    let step = (data.len() / 64).max(1);
    for cut in (0..data.len()).step_by(step) {
        match parse(&data[..cut]) {
            Ok(Parsed::Incomplete) => {}
            Ok(prefix @ Parsed::Complete { .. }) => {
                assert!(
                    matches!(&full, Ok(whole) if *whole == prefix),
                    "prefix {cut} complete"
                )
            }
            Err(e) => assert!(
                full.is_err(),
                "prefix {cut} failed ({e}) but whole is {full:?}"
            ),
        }
    }
});

//! The hash of a raw transaction, as every node computes it: keccak-256 of the bytes sent
//! (the RLP of a legacy transaction, or an EIP-2718 typed envelope). It lets a send that every
//! node answered with "already known" get the success the transaction deserves.

use serde_json::value::RawValue;
use sha3::{Digest, Keccak256};

/// `"0x…"` (quoted JSON) hash of the raw transaction in `eth_sendRawTransaction` params.
pub fn of_send_params(params: Option<&RawValue>) -> Option<String> {
    let [raw]: [String; 1] = serde_json::from_str(params?.get()).ok()?;
    let bytes = decode_hex(raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X"))?)?;
    let digest = Keccak256::digest(&bytes);
    let mut out = String::with_capacity(68);
    out.push_str("\"0x");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out.push('"');
    Some(out)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.is_empty() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn the_hash_is_keccak_of_the_raw_bytes() {
        // keccak256("") and of a known signed legacy transaction (EIP-155 example).
        let raw = "0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83";
        assert_eq!(
            of_send_params(Some(&params(&format!("[\"{raw}\"]")))).as_deref(),
            Some("\"0x33469b22e9f636356c4160a87eb19df52b7412e8eac32a4a55ffe88ea8350788\"")
        );
    }

    #[test]
    fn malformed_params_give_no_hash() {
        for bad in [
            r#"[]"#,
            r#"["0x1"]"#,
            r#"["zz"]"#,
            r#"["0xzz"]"#,
            r#"[1]"#,
            r#"["0x"]"#,
        ] {
            assert_eq!(of_send_params(Some(&params(bad))), None, "{bad}");
        }
        assert_eq!(of_send_params(None), None);
    }
}

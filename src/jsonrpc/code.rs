//! Every JSON-RPC error code ethgate mints, in one place. Clients (Chainlink nodes, ethers,
//! web3) branch on these numbers, so each is the one geth or EIP-1474 uses for the same case;
//! the README's "Errors" table lists which answer carries which.

/// -32700: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// -32600: not a JSON-RPC request object, an empty batch, a batch over `max_batch_len`.
pub const INVALID_REQUEST: i64 = -32600;
/// -32601: an unknown or denied method, a subscription kind geth does not have, `eth_subscribe`
/// over HTTP.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// -32602: parameters that do not decode (geth: "invalid argument N: …").
pub const INVALID_PARAMS: i64 = -32602;
/// -32000: geth's generic server error ("subscription not found", "exceed max addresses").
pub const SERVER_ERROR: i64 = -32000;
/// -32002, EIP-1474 "resource unavailable": no upstream could serve the call.
pub const RESOURCE_UNAVAILABLE: i64 = -32002;
/// -32003: an upstream answer over `server.max_response_bytes` (geth's "response too large").
pub const RESPONSE_TOO_LARGE: i64 = -32003;
/// -32005, EIP-1474 "limit exceeded": a subscription cap was hit.
pub const LIMIT_EXCEEDED: i64 = -32005;

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are the wire contract (README "Errors"); a renumbering must fail here
    /// before it reaches a client.
    #[test]
    fn codes_are_the_documented_ones() {
        let codes = [
            (PARSE_ERROR, -32700),
            (INVALID_REQUEST, -32600),
            (METHOD_NOT_FOUND, -32601),
            (INVALID_PARAMS, -32602),
            (SERVER_ERROR, -32000),
            (RESOURCE_UNAVAILABLE, -32002),
            (RESPONSE_TOO_LARGE, -32003),
            (LIMIT_EXCEEDED, -32005),
        ];
        for (constant, documented) in codes {
            assert_eq!(constant, documented);
        }
    }
}

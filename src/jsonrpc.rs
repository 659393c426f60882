//! JSON-RPC 2.0 framing: decoding client requests without building value trees, encoding
//! upstream requests with ethgate's own ids, and splicing upstream answers back under the
//! client's original id bytes.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

mod batch;
pub mod code;
mod element;
mod exact;
mod fast;
mod scan;

pub use fast::{batch_answer, single_answer};

/// A standard error that ethgate produces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// Human-readable message.
    pub message: Cow<'static, str>,
    /// Optional detail, sent as the error's `data` string.
    pub data: Option<String>,
}

impl RpcError {
    /// An error with a fixed message.
    pub const fn new(code: i64, message: &'static str) -> Self {
        RpcError {
            code,
            message: Cow::Borrowed(message),
            data: None,
        }
    }

    /// The same error carrying a detail string in `data`.
    pub fn with_data(mut self, data: String) -> Self {
        self.data = Some(data);
        self
    }
}

/// -32700: the body is not JSON.
pub const PARSE_ERROR: RpcError = RpcError::new(code::PARSE_ERROR, "parse error");
/// -32600: valid JSON but not a JSON-RPC request.
pub const INVALID_REQUEST: RpcError = RpcError::new(code::INVALID_REQUEST, "invalid request");
/// -32600: a batch with no element.
pub const EMPTY_BATCH: RpcError = RpcError::new(code::INVALID_REQUEST, "empty batch");
/// -32600: a batch longer than `server.max_batch_len`.
pub const BATCH_TOO_LARGE: RpcError = RpcError::new(code::INVALID_REQUEST, "batch too large");
/// -32601: `eth_subscribe` over HTTP.
pub const NOTIFICATIONS_UNSUPPORTED: RpcError =
    RpcError::new(code::METHOD_NOT_FOUND, "notifications not supported");
/// -32002: no upstream could serve the call.
pub const NO_HEALTHY_UPSTREAM: RpcError =
    RpcError::new(code::RESOURCE_UNAVAILABLE, "no healthy upstream");
/// -32002: every attempt timed out.
pub const UPSTREAM_TIMEOUT: RpcError =
    RpcError::new(code::RESOURCE_UNAVAILABLE, "upstream timeout");

/// -32601 for a method matched by the deny list.
pub fn method_not_allowed(method: &str) -> RpcError {
    RpcError {
        code: code::METHOD_NOT_FOUND,
        message: Cow::Owned(format!("method not allowed: {method}")),
        data: None,
    }
}

/// One decoded request; every field borrows from the request body.
#[derive(Debug)]
pub struct Call<'a> {
    /// The client's id, exactly as sent; `None` for a notification.
    pub id: Option<&'a RawValue>,
    /// Method name.
    pub method: Cow<'a, str>,
    /// Parameters, exactly as sent.
    pub params: Option<&'a RawValue>,
    /// What follows the id in the client's text when that is exactly what
    /// [`encode_request`] writes after its id (`,"method":"M","params":P}`), so
    /// [`encode_call`] forwards it in one copy. Set only by the decoder, which checked it.
    tail: Option<&'a [u8]>,
}

impl<'a> Call<'a> {
    /// A call made by ethgate itself (not decoded from a client's body).
    pub fn new(
        id: Option<&'a RawValue>,
        method: Cow<'a, str>,
        params: Option<&'a RawValue>,
    ) -> Self {
        Call {
            id,
            method,
            params,
            tail: None,
        }
    }

    /// The call with `tail`, the client's text after its id (see the field).
    fn with_tail(mut self, tail: &'a [u8]) -> Self {
        self.tail = Some(tail);
        self
    }
}

/// -32003: an upstream answer over `server.max_response_bytes` (geth's code and wording).
pub const RESPONSE_TOO_LARGE: RpcError =
    RpcError::new(code::RESPONSE_TOO_LARGE, "response too large");

/// A request element that is not a valid call, with the id it carried when one could be read,
/// so the error goes back under that id as geth does.
#[derive(Debug, Clone)]
pub struct Rejected<'a> {
    /// The client's id, when the element is an object with a usable `id`.
    pub id: Option<&'a RawValue>,
    /// Why the element was refused.
    pub error: RpcError,
}

impl Rejected<'_> {
    fn without_id(error: RpcError) -> Self {
        Rejected { id: None, error }
    }
}

/// One element of a request body, decoded.
pub type Decoded<'a> = Result<Call<'a>, Rejected<'a>>;

/// A decoded request body.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A single request object (or the error that makes it invalid).
    Single(Decoded<'a>),
    /// A batch; each element decoded on its own.
    Batch(Vec<Decoded<'a>>),
}

/// Decodes a request body: a parse error only when the body is not JSON at all, "batch too
/// large" as soon as a batch grows past `max_batch_len` elements (the rest is never decoded,
/// so a body of millions of tiny elements costs no more than one of `max_batch_len`).
pub fn decode(body: &[u8], max_batch_len: usize) -> Result<Incoming<'_>, RpcError> {
    // Validated once here, so every string below is read from `&str` without its UTF-8 being
    // checked again (that check was the largest single cost of a batch). Invalid UTF-8 was a
    // parse error before too: outside strings JSON allows only ASCII.
    let text = std::str::from_utf8(body).map_err(|_| PARSE_ERROR)?;
    decode_text(text, max_batch_len)
}

/// [`decode`] for a body already known to be UTF-8 (a WebSocket text message, which the frame
/// reader checked): not checked a second time.
pub fn decode_text(text: &str, max_batch_len: usize) -> Result<Incoming<'_>, RpcError> {
    // The hand-written scanner answers the common bodies; what it leaves goes to serde.
    if let Some(decoded) = fast::decode(text, max_batch_len) {
        return decoded;
    }
    match single_pass(text, max_batch_len) {
        // The single pass refuses a few bodies the exact decoder reads (see `exact`); a body
        // that is not JSON costs a second look, and only then.
        Err(error) if error == PARSE_ERROR => exact::decode(text.as_bytes(), max_batch_len),
        decoded => decoded,
    }
}

/// Decodes a request body in one serde pass per element ([`element`]).
fn single_pass(body: &str, max_batch_len: usize) -> Result<Incoming<'_>, RpcError> {
    let first = body.bytes().find(|b| !b.is_ascii_whitespace());
    if first == Some(b'[') {
        let elements = batch::elements(body, max_batch_len)?;
        if elements.is_empty() {
            return Err(EMPTY_BATCH);
        }
        return Ok(Incoming::Batch(elements));
    }
    match serde_json::from_str::<element::Element>(body) {
        Ok(element::Element(decoded)) => Ok(Incoming::Single(decoded)),
        Err(_) => Err(PARSE_ERROR),
    }
}

/// Keeps a present `null` as `Some(raw "null")`; only an absent key is `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// How every request and response ethgate writes opens, before the id.
const OPENING: &[u8; 22] = b"{\"jsonrpc\":\"2.0\",\"id\":";

/// Appends `call` as [`encode_request`] does, with ethgate's numeric id and `pin` (when set)
/// in place of its params; a call decoded from the compact layout is its opening, the id and
/// the client's own text after the id (which is what `encode_request` would write).
#[inline]
pub fn encode_call(out: &mut Vec<u8>, id: u64, call: &Call<'_>, pin: Option<&RawValue>) {
    if let (Some(tail), None) = (call.tail, pin) {
        // The opening and the id are assembled on the stack and copied at once.
        let mut head = [0u8; OPENING.len() + 20];
        let (opening, digits) = head.split_at_mut(OPENING.len());
        if let Some(digits) = digits.first_chunk_mut::<20>() {
            opening.copy_from_slice(OPENING);
            let len = OPENING.len() + write_u64(digits, id);
            if out.capacity() - out.len() >= head.len() {
                // The whole buffer at its fixed size (stores, no `memcpy` call), cut back.
                let end = out.len() + len;
                out.extend_from_slice(&head);
                out.truncate(end);
            } else {
                out.extend_from_slice(&head[..len]);
            }
            out.extend_from_slice(tail);
            return;
        }
    }
    encode_request(out, id, &call.method, pin.or(call.params));
}

/// Appends `{"jsonrpc":"2.0","id":ID,"method":M,"params":P}` with ethgate's numeric id.
pub fn encode_request(out: &mut Vec<u8>, id: u64, method: &str, params: Option<&RawValue>) {
    out.extend_from_slice(OPENING);
    push_u64(out, id);
    out.extend_from_slice(b",\"method\":");
    push_json_str(out, method);
    if let Some(params) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(params.get().as_bytes());
    }
    out.push(b'}');
}

/// Appends `n` in decimal: every forwarded call carries one, and `write!` costs several times
/// as much through `fmt`.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let len = write_u64(&mut digits, n);
    out.extend_from_slice(&digits[..len]);
}

/// Writes `n` in decimal at the start of `out` (20 bytes hold any u64); returns its length.
fn write_u64(out: &mut [u8; 20], mut n: u64) -> usize {
    let mut len = 1;
    while len < 20 && n >= POWERS[len] {
        len += 1;
    }
    for slot in out[..len].iter_mut().rev() {
        // `n % 10` is below 10, so the cast cannot truncate.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    len
}

/// `10^i`: a u64 of `i` digits or fewer is below `POWERS[i]`.
const POWERS: [u64; 20] = {
    let mut powers = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// Appends `text` as a JSON string. Method names need no escaping in practice and are copied
/// as they are; anything that needs escaping takes serde_json's escaper.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    // serde_json escapes exactly these bytes (quote, backslash, control bytes): a name
    // without them is written as it is.
    if scan::string_stop(text.as_bytes()).is_none() {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// The part of an upstream response object that ethgate looks at; borrows from the body.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamResponse<'a> {
    /// Echo of ethgate's id.
    #[serde(default, borrow, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
    /// Result, exactly as the upstream wrote it.
    #[serde(default, borrow, deserialize_with = "present")]
    pub result: Option<&'a RawValue>,
    /// Error object, exactly as the upstream wrote it.
    #[serde(default, borrow, deserialize_with = "present")]
    pub error: Option<&'a RawValue>,
}

impl UpstreamResponse<'_> {
    /// ethgate's numeric id echoed by the upstream.
    pub fn numeric_id(&self) -> Option<u64> {
        let text = self.id?.get();
        // Up to 19 digits cannot overflow: summed directly, as every answer's id is read
        // here; anything else takes the library's parser, which decides.
        if text.len() <= 19 && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return Some(
                text.bytes()
                    .fold(0, |n, digit| n * 10 + u64::from(digit - b'0')),
            );
        }
        text.parse().ok()
    }

    /// Code and message of a JSON-RPC error answer.
    pub fn error_summary(&self) -> Option<(i64, String)> {
        #[derive(Deserialize)]
        struct ErrorObject {
            code: i64,
            #[serde(default)]
            message: String,
        }
        let raw = self.error?;
        let parsed: ErrorObject = serde_json::from_str(raw.get()).ok()?;
        Some((parsed.code, parsed.message))
    }
}

/// Appends a response object for `id` carrying a raw JSON result.
pub fn encode_result(out: &mut Vec<u8>, id: &RawValue, result: &str) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
}

/// Appends an error response object; `id` `None` writes `null`.
pub fn encode_error(out: &mut Vec<u8>, id: Option<&RawValue>, error: &RpcError) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.map_or("null", RawValue::get).as_bytes());
    out.extend_from_slice(b",\"error\":");
    encode_error_object(out, error);
    out.push(b'}');
}

/// Appends the error object itself: `{"code":C,"message":M}`, with `"data"` when present.
pub fn encode_error_object(out: &mut Vec<u8>, error: &RpcError) {
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(error.code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    let _ = serde_json::to_writer(&mut *out, error.message.as_ref());
    if let Some(data) = &error.data {
        out.extend_from_slice(b",\"data\":");
        let _ = serde_json::to_writer(&mut *out, data);
    }
    out.push(b'}');
}

/// A complete error response body.
pub fn error_body(id: Option<&RawValue>, error: &RpcError) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    encode_error(&mut out, id, error);
    out
}

#[cfg(test)]
mod decode_tests;
#[cfg(test)]
mod edits;
#[cfg(test)]
mod tests;

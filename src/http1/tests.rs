use bytes::BytesMut;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

use super::chunked::{self, BodyError};
use super::request::{describe, parse, MAX_HEAD_BYTES};
use super::response::{switching_protocols, Response};
use super::{BodyLength, HeadError, Method, RequestHead};

fn head(text: &str) -> RequestHead {
    let (len, head) = parse(text.as_bytes()).expect("valid").expect("complete");
    assert_eq!(len, text.len());
    head
}

fn refused(text: &str) -> HeadError {
    parse(text.as_bytes()).expect_err(text)
}

#[test]
fn a_post_with_a_length_keeps_the_connection() {
    let h = head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(h.method, Method::Post);
    assert!(h.http11 && h.keep_alive && !h.expect_continue);
    assert_eq!(h.body, BodyLength::Length(12));
    assert!(h.websocket.is_none());
}

#[test]
fn methods_are_told_apart() {
    for (text, method) in [
        ("GET", Method::Get),
        ("POST", Method::Post),
        ("OPTIONS", Method::Options),
        ("HEAD", Method::Head),
        ("DELETE", Method::Other),
        ("post", Method::Other),
    ] {
        assert_eq!(head(&format!("{text} / HTTP/1.1\r\n\r\n")).method, method);
    }
}

#[test]
fn keep_alive_follows_the_version_and_connection_tokens() {
    assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
    let old = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(old.keep_alive && !old.http11);
}

#[test]
fn body_framing_is_judged_strictly() {
    let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_eq!(head(chunked).body, BodyLength::Chunked);
    assert_eq!(
        head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body,
        BodyLength::Empty
    );
    assert_eq!(head("POST / HTTP/1.1\r\n\r\n").body, BodyLength::Empty);
    let same_twice = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(head(same_twice).body, BodyLength::Length(3));
    for bad in [
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(matches!(refused(bad), HeadError::Invalid(_)), "{bad}");
    }
    // Codings other than `chunked` alone would hand encoded bytes to the JSON decoder.
    for unsupported in [
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(
            refused(unsupported),
            HeadError::Unsupported,
            "{unsupported}"
        );
    }
}

#[test]
fn expect_continue_is_noted() {
    let h = head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n");
    assert!(h.expect_continue);
}

#[test]
fn a_websocket_upgrade_carries_its_accept_value() {
    // RFC 6455 §1.3's example.
    let upgrade = "GET / HTTP/1.1\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let accept = head(upgrade).websocket.expect("an upgrade").accept;
    assert_eq!(accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let refused = |text: &str| head(text).websocket.expect("an upgrade").accept;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let no_version = format!("GET / HTTP/1.1\r\nUpgrade: websocket\r\n{key}\r\n");
    assert_eq!(refused(&no_version), None);
    let no_key = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(refused(no_key), None);
    let old =
        format!("GET / HTTP/1.0\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}\r\n");
    assert_eq!(refused(&old), None, "HTTP/1.0 cannot upgrade");
    for bad_key in [
        "a2V5",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZ!==",
        "dGhlIHNhbXBsZSBub25jZQ===",
    ] {
        let text = format!(
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {bad_key}\r\n\r\n"
        );
        assert_eq!(refused(&text), None, "{bad_key}");
    }
    assert!(head("GET / HTTP/1.1\r\n\r\n").websocket.is_none());
}

#[test]
fn partial_heads_wait_and_oversized_ones_are_refused() {
    assert!(parse(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .expect("valid")
        .is_none());
    let endless = format!("POST / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(refused(&endless), HeadError::TooLarge);
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
        HeadError::TooLarge
    );
    assert!(matches!(refused("GARBAGE\r\n\r\n"), HeadError::Invalid(_)));
}

#[test]
fn describe_gives_the_method_path_and_forwarded_values() {
    let text = "GET /a?b HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\n\r\n";
    let description = describe(text.as_bytes());
    assert_eq!(description.method, "GET");
    assert_eq!(description.path, "/a?b");
    assert_eq!(description.forwarded, ["1.2.3.4", "5.6.7.8"]);
}

/// The encoded answer with its date line taken out (and checked).
fn encoded(response: &Response, head_only: bool) -> String {
    let mut out = Vec::new();
    response.encode(head_only, &mut out);
    let text = String::from_utf8(out).expect("ASCII");
    let start = text.find("date: ").expect("a date");
    let end = start + text[start..].find("\r\n").expect("line end") + 2;
    let date = &text[start + 6..end - 2];
    assert!(date.len() == 29 && date.ends_with(" GMT"), "{date}");
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn answers_are_encoded_with_length_and_optional_headers() {
    let json = Response::json(b"{\"a\":1}".to_vec());
    assert_eq!(
        encoded(&json, false),
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
    );
    let refusal = Response::plain(StatusCode::METHOD_NOT_ALLOWED, "no\n")
        .allowing()
        .closing();
    assert_eq!(
        encoded(&refusal, true),
        "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: text/plain; charset=utf-8\r\n\
         allow: GET, POST, OPTIONS\r\nconnection: close\r\ncontent-length: 3\r\n\r\n"
    );
    let options = Response::empty(StatusCode::NO_CONTENT).allowing();
    assert_eq!(
        encoded(&options, false),
        "HTTP/1.1 204 No Content\r\nallow: GET, POST, OPTIONS\r\n\r\n",
        "no Content-Length on a 204"
    );
    let mut old_client = Response::empty(StatusCode::OK);
    old_client.keep_alive = true;
    assert_eq!(
        encoded(&old_client, false),
        "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn switching_protocols_names_the_accept_value() {
    let mut out = Vec::new();
    switching_protocols("abc=", &mut out);
    let text = String::from_utf8(out).expect("ASCII");
    assert!(text.starts_with(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-accept: abc=\r\ndate: "
    ));
    assert!(text.ends_with(" GMT\r\n\r\n"));
}

/// Decodes `wire` written `piece` bytes at a time (a slow peer: a few).
async fn decode_in(
    wire: &[u8],
    piece: usize,
    limit: usize,
) -> (Result<bytes::Bytes, BodyError>, BytesMut) {
    let (mut client, mut server) = tokio::io::duplex(4096);
    let wire = wire.to_vec();
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(piece) {
            if client.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::new();
    let body = chunked::read(&mut server, &mut buf, limit).await;
    drop(server);
    let _ = writer.await;
    (body, buf)
}

async fn decode(wire: &[u8], limit: usize) -> (Result<bytes::Bytes, BodyError>, BytesMut) {
    decode_in(wire, 3, limit).await
}

#[tokio::test]
async fn chunked_bodies_decode_across_reads_and_keep_what_follows() {
    let wire =
        b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let (body, _) = decode(wire, 1024).await;
    assert_eq!(&body.expect("decoded")[..], b"Wikipedia in\r\n\r\nchunks.");
    // Read in one piece, what follows the body stays in the buffer for the next request.
    let (body, rest) = decode_in(wire, wire.len(), 1024).await;
    assert_eq!(&body.expect("decoded")[..], b"Wikipedia in\r\n\r\nchunks.");
    assert_eq!(&rest[..], b"NEXT");
}

#[tokio::test]
async fn chunked_bodies_are_bounded_and_checked() {
    let (body, _) = decode(b"10\r\n0123456789abcdef\r\n0\r\n\r\n", 8).await;
    assert!(matches!(body, Err(BodyError::TooLarge)));
    let (body, _) = decode(b"4\r\nabcdXY0\r\n\r\n", 64).await;
    assert!(matches!(body, Err(BodyError::Invalid(_))));
    let (body, _) = decode(b"g\r\n", 64).await;
    assert!(matches!(body, Err(BodyError::Invalid(_))));
    let (body, _) = decode(&[b'1'; 2000], 64).await;
    assert!(matches!(
        body,
        Err(BodyError::Invalid("invalid chunk: line too long"))
    ));
    let (body, _) = decode(b"4\r\nab", 64).await;
    assert!(matches!(body, Err(BodyError::Closed)));
    // One line longer than the limit that arrives whole is refused too.
    let long = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(2000));
    let (body, _) = decode_in(long.as_bytes(), long.len(), 64).await;
    assert!(matches!(
        body,
        Err(BodyError::Invalid("invalid chunk: line too long"))
    ));
}

#[tokio::test]
async fn chunk_size_lines_are_hex_digits_and_extensions_only() {
    for good in [
        "3;name=value\r\n",
        "3 ;name\r\n",
        "03\r\n",
        "3\t; a=\"b\"\r\n",
    ] {
        let wire = format!("{good}abc\r\n0\r\n\r\n");
        let (body, _) = decode(wire.as_bytes(), 64).await;
        assert_eq!(&body.expect(good)[..], b"abc", "{good:?}");
    }
    // A sign, whitespace before the digits or with no extension after it, and bare CR/LF
    // (the TERM.EXT desync) are all refused.
    for bad in [
        "+3\r\n",
        " 3\r\n",
        "3 \r\n",
        "3\x0b\r\n",
        "3\n\r\n",
        "3\r;x\r\n",
        "0x3\r\n",
    ] {
        let wire = format!("{bad}abc\r\n0\r\n\r\n");
        let (body, _) = decode(wire.as_bytes(), 64).await;
        assert!(
            matches!(body, Err(BodyError::Invalid(_))),
            "{bad:?}: {body:?}"
        );
    }
}

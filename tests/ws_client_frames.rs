//! The client's frames as ethgate itself reads them (RFC 6455, server role), byte by byte on
//! a raw socket: every rule a client can break closes its session with the right code, and
//! the protocol's corners (fragments with a ping between them, frames sent with the upgrade
//! request, the close handshake) work.

mod support;

use serde_json::Value;
use support::gateway::{Gateway, GatewayConfig};
use support::http::WAIT;
use support::mock::MockUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]}"#;

async fn gateway(mock: &MockUpstream, max_request_bytes: usize) -> Gateway {
    mock.set_head(0x2a);
    let config = GatewayConfig::new()
        .upstream("a", mock, 0)
        .server("max_request_bytes", &max_request_bytes.to_string());
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    gw
}

/// A frame header for `len` payload bytes, `mask` set or not.
fn header(first: u8, len: usize, masked: bool) -> Vec<u8> {
    let bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match len {
        0..=125 => out.push(bit | len as u8),
        126..=0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out
}

/// A client frame, masked as RFC 6455 asks.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header(first, payload.len(), true);
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// A raw client connection after its upgrade.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Upgrades, sending `along` in the same write as the request.
    async fn connect(gw: &Gateway, along: &[u8]) -> Raw {
        let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
        let mut request = b"GET / HTTP/1.1\r\nHost: ethgate\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n"
            .to_vec();
        request.extend_from_slice(along);
        stream.write_all(&request).await.expect("write");
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(raw.fill().await, "closed before its 101");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the server answers or closes in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The server's next frame (first byte, payload); `None` once it closed the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "a server frame is never masked");
                let (len, start) = match self.buf[1] {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    126 | 127 => (usize::MAX, 0),
                    short => (short as usize, 2),
                };
                if start > 0 && self.buf.len() >= start + len {
                    let first = self.buf[0];
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((first, payload));
                }
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "stream ended inside a frame");
                return None;
            }
        }
    }

    /// The close code the server ends with, after any other frames; then the stream's end.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.frame().await {
                Some((0x88, payload)) => {
                    assert!(
                        self.frame().await.is_none(),
                        "nothing after the close frame"
                    );
                    return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                }
                Some(_) => continue,
                None => panic!("the stream ended without a close frame"),
            }
        }
    }

    /// The next text message, parsed.
    async fn json(&mut self) -> Value {
        match self.frame().await {
            Some((0x81, payload)) => serde_json::from_slice(&payload).expect("JSON"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn frames_against_rfc_6455_close_the_session_with_1002() {
    let a = MockUpstream::start().await;
    let gw = gateway(&a, 1000).await;
    let mut unmasked = header(0x81, CALL.len(), false);
    unmasked.extend_from_slice(CALL.as_bytes());
    let mut interleaved = masked(0x01, b"{\"jsonrpc\"");
    interleaved.extend(masked(0x81, CALL.as_bytes()));
    let cases: [(&str, Vec<u8>); 9] = [
        ("unmasked", unmasked),
        ("reserved bit 1", masked(0xC1, CALL.as_bytes())),
        ("reserved bit 3", masked(0x91, CALL.as_bytes())),
        ("unknown data opcode", masked(0x83, b"x")),
        ("unknown control opcode", masked(0x8B, b"x")),
        ("fragmented ping", masked(0x09, b"x")),
        ("ping over 125 bytes", masked(0x89, &[b'p'; 126])),
        (
            "continuation without a start",
            masked(0x80, CALL.as_bytes()),
        ),
        ("new message inside a fragmented one", interleaved),
    ];
    for (case, bytes) in cases {
        let mut client = Raw::connect(&gw, &[]).await;
        client.send(&bytes).await;
        assert_eq!(client.close_code().await, Some(1002), "{case}");
    }
    // The gateway goes on serving.
    let mut client = Raw::connect(&gw, &[]).await;
    client.send(&masked(0x81, CALL.as_bytes())).await;
    assert_eq!(client.json().await["result"], "0x2a");
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007_and_binary_is_answered_like_text() {
    let a = MockUpstream::start().await;
    let gw = gateway(&a, 1000).await;
    let mut client = Raw::connect(&gw, &[]).await;
    let mut other = Raw::connect(&gw, &[]).await;
    client.send(&masked(0x82, CALL.as_bytes())).await;
    assert_eq!(client.json().await["result"], "0x2a");
    // A binary message is not checked by the frame reader: bytes that are not UTF-8 are
    // refused when decoded, as a parse error, and the session goes on.
    client.send(&masked(0x82, &[b'{', 0xff, b'}'])).await;
    assert_eq!(client.json().await["error"]["code"], -32700);
    // "é" (0xC3 0xA9) cut in two across fragments is still valid; a lone lead byte is not.
    let call = r#"{"jsonrpc":"2.0","id":"é","method":"eth_blockNumber","params":[]}"#;
    let cut = call.find('é').expect("in the call") + 1;
    client.send(&masked(0x01, &call.as_bytes()[..cut])).await;
    client.send(&masked(0x80, &call.as_bytes()[cut..])).await;
    assert_eq!(client.json().await["id"], "é");
    client.send(&masked(0x81, &call.as_bytes()[..cut])).await;
    assert_eq!(client.close_code().await, Some(1007));
    // Another client's session is untouched.
    other.send(&masked(0x81, CALL.as_bytes())).await;
    assert_eq!(other.json().await["result"], "0x2a");
}

#[tokio::test]
async fn a_frame_over_max_request_bytes_closes_with_1009_from_its_header_alone() {
    let a = MockUpstream::start().await;
    let gw = gateway(&a, 1000).await;
    // A 1 GiB frame's header only: waiting for its payload (or buffering it) would hang here.
    let mut client = Raw::connect(&gw, &[]).await;
    let mut huge = header(0x81, 1 << 30, true);
    huge.extend_from_slice(&KEY);
    client.send(&huge).await;
    assert_eq!(client.close_code().await, Some(1009));
    // Fragments each within the limit that add up past it.
    let mut client = Raw::connect(&gw, &[]).await;
    client.send(&masked(0x01, &[b' '; 600])).await;
    client.send(&masked(0x80, &[b' '; 600])).await;
    assert_eq!(client.close_code().await, Some(1009));
}

#[tokio::test]
async fn a_ping_between_fragments_is_answered_and_the_message_reassembled() {
    let a = MockUpstream::start().await;
    let gw = gateway(&a, 1000).await;
    let mut client = Raw::connect(&gw, &[]).await;
    let (start, rest) = CALL.as_bytes().split_at(20);
    let (middle, end) = rest.split_at(20);
    client.send(&masked(0x01, start)).await;
    client.send(&masked(0x89, b"still there?")).await;
    client.send(&masked(0x00, middle)).await;
    client.send(&masked(0x8A, b"unasked pong")).await;
    client.send(&masked(0x80, end)).await;
    assert_eq!(client.frame().await, Some((0x8A, b"still there?".to_vec())));
    let answer = client.json().await;
    assert_eq!(
        (answer["id"].clone(), answer["result"].clone()),
        (7.into(), "0x2a".into())
    );
}

#[tokio::test]
async fn frames_sent_along_with_the_upgrade_request_are_read() {
    let a = MockUpstream::start().await;
    let gw = gateway(&a, 1000).await;
    let mut along = masked(0x81, CALL.as_bytes());
    along.extend(masked(0x89, b"early"));
    let mut client = Raw::connect(&gw, &along).await;
    let mut frames = [client.frame().await, client.frame().await];
    frames.sort();
    assert_eq!(frames[0].as_ref().map(|f| f.0), Some(0x81));
    assert_eq!(frames[1], Some((0x8A, b"early".to_vec())));
}

#[tokio::test]
async fn a_clients_close_is_echoed_and_the_session_ends_though_the_client_stays() {
    let a = MockUpstream::start().await;
    let gw = gateway(&a, 1000).await;
    let mut client = Raw::connect(&gw, &[]).await;
    let mut close = 4001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"done");
    client.send(&masked(0x88, &close)).await;
    // The client never closes its side: the server ends the stream regardless.
    assert_eq!(client.close_code().await, Some(4001));
    // A code no endpoint may send, and a close without a code.
    let mut client = Raw::connect(&gw, &[]).await;
    client.send(&masked(0x88, &1005u16.to_be_bytes())).await;
    assert_eq!(client.close_code().await, Some(1002));
    let mut client = Raw::connect(&gw, &[]).await;
    client.send(&masked(0x88, b"")).await;
    assert_eq!(client.close_code().await, None);
}

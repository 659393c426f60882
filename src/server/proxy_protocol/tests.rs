use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::v2::{crc32c_zeroed, PP2_TYPE_CRC32C, SIGNATURE as V2_SIGNATURE};
use super::*;

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { header, consumed }) => (header, consumed),
        other => panic!("expected a complete header, got {other:?}"),
    }
}

fn addresses(buf: &[u8]) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let (header, consumed) = complete(buf);
    assert_eq!(consumed, buf.len(), "whole input is the header");
    (header.source, header.destination)
}

fn err(buf: &[u8]) -> ProxyError {
    match parse(buf) {
        Err(e) => e,
        Ok(parsed) => panic!("expected an error, got {parsed:?}"),
    }
}

/// Every strict prefix must ask for more bytes, so a header split across segments is read.
fn assert_prefixes_incomplete(buf: &[u8]) {
    let (_, consumed) = complete(buf);
    for cut in 0..consumed {
        let prefix = buf.get(..cut).unwrap();
        assert!(
            matches!(parse(prefix), Ok(Parsed::Incomplete)),
            "prefix of {cut} bytes: {:?}",
            parse(prefix)
        );
    }
}

fn v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(family);
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn tcp4_block() -> Vec<u8> {
    let mut block = vec![192, 0, 2, 1, 10, 0, 0, 5];
    block.extend_from_slice(&56324u16.to_be_bytes());
    block.extend_from_slice(&8545u16.to_be_bytes());
    block
}

fn tcp6_block() -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8::ffff".parse().unwrap();
    let mut block = src.octets().to_vec();
    block.extend_from_slice(&dst.octets());
    block.extend_from_slice(&443u16.to_be_bytes());
    block.extend_from_slice(&8545u16.to_be_bytes());
    block
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A v2 TCP4 header carrying a CRC32C TLV computed as a sender would.
fn tcp4_with_crc() -> Vec<u8> {
    let mut payload = tcp4_block();
    payload.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
    let mut header = v2(0x21, 0x11, &payload);
    let at = header.len() - 4;
    let crc = crc32c_zeroed(&header, at);
    header
        .get_mut(at..)
        .unwrap()
        .copy_from_slice(&crc.to_be_bytes());
    header
}

// ---- v1: valid ----

#[test]
fn v1_tcp4_yields_both_endpoints() {
    let line = b"PROXY TCP4 192.0.2.1 10.0.0.5 56324 8545\r\n";
    let (src, dst) = addresses(line);
    assert_eq!(src, Some(sock("192.0.2.1", 56324)));
    assert_eq!(dst, Some(sock("10.0.0.5", 8545)));
    assert_prefixes_incomplete(line);
}

#[test]
fn v1_tcp6_yields_both_endpoints() {
    let line = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.5 0 65535\r\n";
    let (src, dst) = addresses(line);
    assert_eq!(src, Some(sock("2001:db8::1", 0)));
    assert_eq!(dst, Some(sock("::ffff:10.0.0.5", 65535)));
    assert_prefixes_incomplete(line);
}

#[test]
fn v1_unknown_carries_no_address_and_ignores_the_rest() {
    assert_eq!(addresses(b"PROXY UNKNOWN\r\n"), (None, None));
    let worst = format!(
        "PROXY UNKNOWN {f} {f} 65535 65535\r\n",
        f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    );
    assert_eq!(worst.len(), V1_MAX_LEN);
    assert_eq!(addresses(worst.as_bytes()), (None, None));
    assert_prefixes_incomplete(worst.as_bytes());
}

#[test]
fn v1_header_stops_at_crlf_leaving_following_bytes() {
    let input = b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2\r\nPOST / HTTP/1.1\r\n";
    let (_, consumed) = complete(input);
    assert_eq!(input.get(consumed..).unwrap(), b"POST / HTTP/1.1\r\n");
}

// ---- v1: malformed ----

#[test]
fn v1_unknown_family_is_refused() {
    for line in [
        &b"PROXY UDP4 192.0.2.1 10.0.0.5 1 2\r\n"[..],
        b"PROXY tcp4 192.0.2.1 10.0.0.5 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1BadFamily), "{line:?}");
    }
}

#[test]
fn v1_bad_address_is_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2 10.0.0.5 1 2\r\n"[..],
        b"PROXY TCP4 192.0.2.256 10.0.0.5 1 2\r\n",
        b"PROXY TCP4 ::1 10.0.0.5 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
        b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n",
        b"PROXY TCP6 ::1 1:2:3:4:5:6:7:8:9 1 2\r\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1BadAddress), "{line:?}");
    }
}

#[test]
fn v1_ipv4_leading_zero_is_refused() {
    for line in [
        &b"PROXY TCP4 010.0.0.1 10.0.0.5 1 2\r\n"[..],
        b"PROXY TCP4 10.0.0.1 10.00.0.5 1 2\r\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1LeadingZero), "{line:?}");
    }
}

#[test]
fn v1_bad_port_is_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2.1 10.0.0.5 65536 2\r\n"[..],
        b"PROXY TCP4 192.0.2.1 10.0.0.5 1 080\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 00 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 -1 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 +1 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 1 99999999999\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 0x50 2\r\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1BadPort), "{line:?}");
    }
}

#[test]
fn v1_lone_cr_or_lf_is_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2\n"[..],
        b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2\rX",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2\r\r\n",
        b"PROXY UNKNOWN\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1MissingCrlf), "{line:?}");
    }
}

#[test]
fn v1_extra_spaces_are_refused() {
    for line in [
        &b"PROXY  TCP4 192.0.2.1 10.0.0.5 1 2\r\n"[..],
        b"PROXY TCP4 192.0.2.1  10.0.0.5 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2 \r\n",
        b"PROXY \r\n",
        b"PROXYTCP4 192.0.2.1 10.0.0.5 1 2\r\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1ExtraSpace), "{line:?}");
    }
}

#[test]
fn v1_wrong_field_count_is_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2.1 10.0.0.5 1\r\n"[..],
        b"PROXY TCP4\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2 3\r\n",
    ] {
        assert!(matches!(err(line), ProxyError::V1FieldCount), "{line:?}");
    }
}

#[test]
fn v1_non_printable_byte_is_refused() {
    for line in [
        &b"PROXY TCP4\t192.0.2.1 10.0.0.5 1 2\r\n"[..],
        b"PROXY TCP4 192.0.2.1\0",
        b"PROXY TCP4 \xc3\xa9",
    ] {
        assert!(matches!(err(line), ProxyError::V1BadChar), "{line:?}");
    }
}

#[test]
fn v1_line_without_crlf_in_107_bytes_is_refused() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(V1_MAX_LEN - 1, b'f');
    assert!(matches!(parse(&line), Ok(Parsed::Incomplete)));
    line.push(b'\r');
    assert!(matches!(err(&line), ProxyError::V1TooLong));
    line.push(b'\n');
    assert!(matches!(err(&line), ProxyError::V1TooLong));
}

// ---- detection ----

#[test]
fn other_protocols_are_not_proxy_headers() {
    for start in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01",
        b"proxy TCP4",
        b"\r\n\r\n\r\n",
    ] {
        assert!(matches!(err(start), ProxyError::NotProxy), "{start:?}");
    }
}

#[test]
fn signature_prefixes_wait_for_more() {
    for start in [
        &b""[..],
        b"P",
        b"PROXY",
        b"PROXY ",
        b"\r\n\r\n\0",
        b"\r\n\r\n\0\r\nQUIT\n",
    ] {
        assert!(matches!(parse(start), Ok(Parsed::Incomplete)), "{start:?}");
    }
}

// ---- v2: valid ----

#[test]
fn v2_tcp4_yields_both_endpoints() {
    let header = v2(0x21, 0x11, &tcp4_block());
    let (src, dst) = addresses(&header);
    assert_eq!(src, Some(sock("192.0.2.1", 56324)));
    assert_eq!(dst, Some(sock("10.0.0.5", 8545)));
    assert_prefixes_incomplete(&header);
}

#[test]
fn v2_tcp6_yields_both_endpoints() {
    let header = v2(0x21, 0x21, &tcp6_block());
    let (src, dst) = addresses(&header);
    assert_eq!(src, Some(sock("2001:db8::1", 443)));
    assert_eq!(dst, Some(sock("2001:db8::ffff", 8545)));
    assert_prefixes_incomplete(&header);
}

#[test]
fn v2_tlvs_are_skipped() {
    let mut payload = tcp6_block();
    payload.extend(tlv(0x01, b"http/1.1"));
    payload.extend(tlv(0x04, b""));
    payload.extend(tlv(0xEA, b"\x01vpce-0123456789abcdef"));
    let mut header = v2(0x21, 0x21, &payload);
    let (src, _) = addresses(&header);
    assert_eq!(src, Some(sock("2001:db8::1", 443)));
    assert_prefixes_incomplete(&header);
    header.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let (_, consumed) = complete(&header);
    assert_eq!(header.get(consumed..).unwrap(), b"GET / HTTP/1.1\r\n");
}

#[test]
fn v2_local_is_a_health_check_without_addresses() {
    assert_eq!(addresses(&v2(0x20, 0x00, &[])), (None, None));
    // LOCAL ignores the family and skips whatever block it announces.
    assert_eq!(addresses(&v2(0x20, 0xFF, &tcp4_block())), (None, None));
    assert_prefixes_incomplete(&v2(0x20, 0x11, &tcp4_block()));
}

#[test]
fn v2_families_without_tcp_addresses_fall_back_to_the_peer() {
    assert_eq!(addresses(&v2(0x21, 0x00, &[])), (None, None));
    assert_eq!(addresses(&v2(0x21, 0x00, &[1, 2, 3])), (None, None));
    assert_eq!(addresses(&v2(0x21, 0x12, &tcp4_block())), (None, None));
    assert_eq!(addresses(&v2(0x21, 0x22, &tcp6_block())), (None, None));
    assert_eq!(addresses(&v2(0x21, 0x31, &[0; 216])), (None, None));
    assert_eq!(addresses(&v2(0x21, 0x32, &[0; 216])), (None, None));
}

#[test]
fn v2_matching_crc32c_is_accepted() {
    let header = tcp4_with_crc();
    let (src, _) = addresses(&header);
    assert_eq!(src, Some(sock("192.0.2.1", 56324)));
}

#[test]
fn crc32c_matches_the_rfc_check_value() {
    assert_eq!(crc32c_zeroed(b"123456789", 100), 0xE306_9283);
}

// ---- v2: malformed ----

#[test]
fn v2_bad_version_is_refused() {
    for ver_cmd in [0x11, 0x31, 0x01, 0xF1] {
        let header = v2(ver_cmd, 0x11, &tcp4_block());
        assert!(
            matches!(err(&header), ProxyError::V2BadVersion(_)),
            "{ver_cmd:#x}"
        );
    }
}

#[test]
fn v2_bad_command_is_refused() {
    for ver_cmd in [0x22, 0x2F] {
        let header = v2(ver_cmd, 0x11, &tcp4_block());
        assert!(
            matches!(err(&header), ProxyError::V2BadCommand(_)),
            "{ver_cmd:#x}"
        );
    }
}

#[test]
fn v2_bad_family_is_refused() {
    for family in [0x01, 0x10, 0x13, 0x41, 0xFF] {
        let header = v2(0x21, family, &tcp4_block());
        assert!(matches!(err(&header), ProxyError::V2BadFamily(f) if f == family));
    }
}

#[test]
fn v2_length_too_small_for_family_is_refused() {
    let short4 = v2(0x21, 0x11, tcp4_block().get(..11).unwrap());
    assert!(matches!(
        err(&short4),
        ProxyError::V2TooShort {
            family: 0x11,
            len: 11,
            needed: 12
        }
    ));
    let short6 = v2(0x21, 0x21, &tcp4_block());
    assert!(matches!(
        err(&short6),
        ProxyError::V2TooShort { needed: 36, .. }
    ));
    let short_unix = v2(0x21, 0x31, &[0; 108]);
    assert!(matches!(
        err(&short_unix),
        ProxyError::V2TooShort { needed: 216, .. }
    ));
}

#[test]
fn v2_oversized_length_is_refused_before_the_payload_arrives() {
    for len in [V2_MAX_PAYLOAD + 1, usize::from(u16::MAX)] {
        let mut start = V2_SIGNATURE.to_vec();
        start.extend_from_slice(&[0x21, 0x11]);
        start.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        assert!(matches!(err(&start), ProxyError::Oversized(n) if n == 16 + len));
    }
    let largest = v2(0x20, 0x00, &[0; V2_MAX_PAYLOAD]);
    assert_eq!(complete(&largest).1, MAX_HEADER_LEN);
}

#[test]
fn v2_truncated_tlvs_are_refused() {
    let mut overrun = tcp4_block();
    overrun.extend_from_slice(&[0x01, 0x00, 0x09, b'h']);
    let mut stub = tcp4_block();
    stub.extend_from_slice(&[0x04, 0x00]);
    for payload in [overrun, stub] {
        assert!(matches!(
            err(&v2(0x21, 0x11, &payload)),
            ProxyError::V2BadTlv
        ));
    }
}

#[test]
fn v2_crc32c_mismatch_or_bad_size_is_refused() {
    let mut header = tcp4_with_crc();
    if let Some(last) = header.last_mut() {
        *last ^= 1;
    }
    assert!(matches!(err(&header), ProxyError::V2BadChecksum));
    let mut payload = tcp4_block();
    payload.extend(tlv(PP2_TYPE_CRC32C, &[0; 3]));
    assert!(matches!(
        err(&v2(0x21, 0x11, &payload)),
        ProxyError::V2BadTlv
    ));
}

#[test]
fn errors_are_final_whatever_follows() {
    for bad in [
        &b"PROXY TCP4 192.0.2.1\n"[..],
        b"GET",
        b"\r\n\r\n\0\r\nQUIT\n\x31",
        b"PROXY TCP4\x01",
    ] {
        let mut longer = bad.to_vec();
        longer.extend_from_slice(b" 10.0.0.5 1 2\r\n");
        assert!(parse(bad).is_err() && parse(&longer).is_err(), "{bad:?}");
    }
}

// ---- read_header over a real socket ----

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

async fn rest_of(mut server: TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    rest
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn read_header_leaves_the_http_request_unread() {
    let (mut client, mut server) = pair().await;
    client
        .write_all(b"PROXY TCP4 192.0.2.1 10.0.0.5 56324 8545\r\nPOST / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let header = read_header(&mut server, TIMEOUT).await.unwrap();
    assert_eq!(header.source, Some(sock("192.0.2.1", 56324)));
    assert_eq!(rest_of(server).await, b"POST / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn read_header_v2_leaves_the_tls_hello_unread() {
    let (mut client, mut server) = pair().await;
    let mut bytes = v2(0x21, 0x21, &tcp6_block());
    bytes.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
    client.write_all(&bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let header = read_header(&mut server, TIMEOUT).await.unwrap();
    assert_eq!(header.source, Some(sock("2001:db8::1", 443)));
    assert_eq!(rest_of(server).await, b"\x16\x03\x01\x00\x05hello");
}

#[tokio::test]
async fn read_header_waits_for_a_header_split_across_writes() {
    let (mut client, mut server) = pair().await;
    client.set_nodelay(true).unwrap();
    let reader = tokio::spawn(async move {
        let header = read_header(&mut server, TIMEOUT).await;
        (header, server)
    });
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\nGET";
    for chunk in line.chunks(7) {
        client.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.shutdown().await.unwrap();
    let (header, server) = reader.await.unwrap();
    assert_eq!(header.unwrap().source, Some(sock("2001:db8::1", 1)));
    assert_eq!(rest_of(server).await, b"GET");
}

#[tokio::test]
async fn read_header_refuses_a_truncated_header_when_the_peer_closes() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    client.shutdown().await.unwrap();
    let result = read_header(&mut server, TIMEOUT).await;
    assert!(matches!(result, Err(ProxyError::Truncated)), "{result:?}");
}

#[tokio::test]
async fn read_header_refuses_a_peer_that_closes_at_once() {
    let (client, mut server) = pair().await;
    drop(client);
    let result = read_header(&mut server, TIMEOUT).await;
    assert!(matches!(result, Err(ProxyError::Truncated)), "{result:?}");
}

#[tokio::test]
async fn read_header_refuses_garbage_without_waiting() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let result = read_header(&mut server, TIMEOUT).await;
    assert!(matches!(result, Err(ProxyError::NotProxy)), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn read_header_times_out_on_a_silent_peer() {
    let (_client, mut server) = pair().await;
    let result = read_header(&mut server, Duration::from_secs(3)).await;
    assert!(matches!(result, Err(ProxyError::TimedOut)), "{result:?}");
}

#[tokio::test(start_paused = true)]
async fn read_header_times_out_on_a_stalled_partial_header() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
    let result = read_header(&mut server, Duration::from_secs(3)).await;
    assert!(matches!(result, Err(ProxyError::TimedOut)), "{result:?}");
}

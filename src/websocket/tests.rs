//! The reader in the server role, reading a client's masked frames. The rules both roles
//! share (fragments, control frames, UTF-8, opcodes, reserved bits) are tested byte by byte
//! in `upstream/ws/reader_tests.rs`; here, what differs.

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame (masked with [`KEY`]) with `first` as its first byte.
pub(crate) fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// Every event of a client's `parts` fed one after the other, as separate reads would bring
/// them.
fn read_in(max: usize, parts: &[&[u8]]) -> Result<Vec<Event>, FrameError> {
    events(Reader::new(Peer::Client, max, BytesMut::new()), parts)
}

/// Every event `reader` makes of `parts` fed one after the other (either role).
pub(crate) fn events(mut reader: Reader, parts: &[&[u8]]) -> Result<Vec<Event>, FrameError> {
    let mut events = Vec::new();
    for part in parts {
        let (buf, _) = reader.space();
        buf.extend_from_slice(part);
        while let Some(event) = reader.next()? {
            events.push(event);
        }
    }
    Ok(events)
}

fn read_all(max: usize, bytes: &[u8]) -> Result<Vec<Event>, FrameError> {
    read_in(max, &[bytes])
}

fn message(text: &[u8]) -> Event {
    Event::Text(Bytes::copy_from_slice(text).try_into().expect("UTF-8"))
}

fn binary(payload: &[u8]) -> Event {
    Event::Binary(Bytes::copy_from_slice(payload))
}

#[test]
fn client_frames_of_every_length_are_unmasked() {
    // Lengths around the 8-byte steps of the unmasking and the 7/16/64-bit length forms.
    for len in [
        0, 1, 3, 4, 7, 8, 9, 15, 17, 125, 126, 127, 1000, 65535, 65536, 70001,
    ] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let events = read_all(1 << 20, &frame(0x82, &payload)).expect("valid");
        assert_eq!(events, vec![binary(&payload)], "{len}");
    }
}

#[test]
fn each_fragment_and_control_frame_is_unmasked_with_its_own_key() {
    let mut bytes = frame(0x01, b"frag");
    // Another key for the ping: each frame carries its own.
    let mut ping = frame(0x89, b"are you there");
    ping[2..6].copy_from_slice(&[9, 8, 7, 6]);
    let masked: Vec<u8> = b"are you there"
        .iter()
        .zip([9, 8, 7, 6].iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect();
    ping.truncate(6);
    ping.extend(masked);
    bytes.extend(ping);
    bytes.extend(frame(0x80, b"mented"));
    bytes.extend(frame(0x88, &1000u16.to_be_bytes()));
    let events = read_all(1024, &bytes).expect("valid");
    assert_eq!(
        events,
        vec![
            Event::Ping(Bytes::from_static(b"are you there")),
            message(b"fragmented"),
            Event::Close(Bytes::from_static(&[0x03, 0xe8])),
        ]
    );
    // The same bytes in every split, the mask key itself cut in two included.
    for split in 0..bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(read_in(1024, &[a, b]).expect("valid").len(), 3, "{split}");
    }
}

#[test]
fn an_unmasked_frame_from_a_client_is_an_error() {
    let unmasked = [0x81, 0x01, b'x'];
    assert_eq!(read_all(1024, &unmasked), Err(FrameError::Unmasked));
    // Seen as soon as the second byte is in, before any payload.
    assert_eq!(read_all(1024, &unmasked[..2]), Err(FrameError::Unmasked));
}

#[test]
fn invalid_utf8_in_a_client_text_message_is_an_error_and_binary_is_not_checked() {
    assert_eq!(read_all(1024, &frame(0x81, &[0xff])), Err(FrameError::Utf8));
    assert_eq!(
        read_all(1024, &frame(0x82, &[0xff])),
        Ok(vec![binary(&[0xff])])
    );
}

#[test]
fn a_client_message_over_the_limit_is_reported_from_its_header_alone() {
    // Only the header of a 1 GiB frame: reported without waiting for (or keeping) its payload.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&KEY);
    let mut reader = Reader::new(Peer::Client, 1000, BytesMut::new());
    reader.space().0.extend_from_slice(&header);
    assert_eq!(reader.next(), Ok(Some(Event::TooLarge(None))));
    assert!(reader.held() < 64 * 1024, "{}", reader.held());
    // Over the limit only once its fragments add up: reported at the fragment that crosses it.
    let mut bytes = frame(0x01, &[b'a'; 600]);
    bytes.extend(frame(0x00, &[b'a'; 600]));
    assert_eq!(read_all(1000, &bytes), Ok(vec![Event::TooLarge(None)]));
    // At the limit exactly: read.
    assert_eq!(
        read_all(1000, &frame(0x81, &[b'a'; 1000])),
        Ok(vec![message(&[b'a'; 1000])])
    );
}

#[test]
fn the_buffer_can_be_lent_between_reads_and_frames_left_in_it_stay() {
    let mut reader = Reader::new(Peer::Client, 1024, BytesMut::new());
    let mut spare = BytesMut::with_capacity(4096);
    reader.swap_buffer(&mut spare);
    let mut bytes = frame(0x81, b"one");
    bytes.extend(&frame(0x81, b"two")[..4]);
    reader.space().0.extend_from_slice(&bytes);
    assert_eq!(reader.next(), Ok(Some(message(b"one"))));
    assert_eq!(reader.next(), Ok(None));
    assert_eq!(reader.buffered(), 4, "half a frame stays with the reader");
    reader
        .space()
        .0
        .extend_from_slice(&frame(0x81, b"two")[4..]);
    assert_eq!(reader.next(), Ok(Some(message(b"two"))));
    assert_eq!(reader.buffered(), 0);
}

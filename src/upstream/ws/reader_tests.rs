use super::*;

/// A server frame (unmasked) with `first` as its first byte.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn text(payload: &[u8]) -> Vec<u8> {
    frame(0x81, payload)
}

/// Every event in `bytes`, fed all at once; the error if the frames break a rule.
fn read_all(max: usize, bytes: &[u8]) -> Result<Vec<Event>, FrameError> {
    read_in(max, &[bytes])
}

/// Every event of `parts` fed one after the other, as separate reads would bring them.
fn read_in(max: usize, parts: &[&[u8]]) -> Result<Vec<Event>, FrameError> {
    crate::websocket::tests::events(Reader::new(max, BytesMut::new()).0, parts)
}

fn message(text: &str) -> Event {
    Event::Text(text.into())
}

#[test]
fn whole_and_fragmented_messages_are_read_with_control_frames_between_fragments() {
    let mut bytes = text(b"one");
    bytes.extend(frame(0x01, b"tw"));
    bytes.extend(frame(0x89, b"are you there"));
    bytes.extend(frame(0x00, b"o "));
    bytes.extend(frame(0x8A, b""));
    bytes.extend(frame(0x80, b"parts"));
    bytes.extend(frame(0x82, &[0xff, 0x00]));
    let events = read_all(1 << 20, &bytes).expect("valid");
    assert_eq!(
        events,
        vec![
            message("one"),
            Event::Ping(Bytes::from_static(b"are you there")),
            Event::Pong,
            message("two parts"),
            // Binary messages are not UTF-8 checked.
            Event::Binary(Bytes::from_static(&[0xff, 0x00])),
        ]
    );
}

#[test]
fn every_split_point_of_a_few_frames_gives_the_same_events() {
    let mut bytes = text(br#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#);
    bytes.extend(frame(0x01, "h\u{e9}".as_bytes()));
    bytes.extend(frame(0x89, b"p"));
    bytes.extend(frame(0x80, b"llo"));
    bytes.extend(text(&[b'x'; 300]));
    bytes.extend(frame(0x88, &1000u16.to_be_bytes()));
    let whole = read_all(1 << 20, &bytes).expect("valid");
    assert_eq!(whole.len(), 5, "{whole:?}");
    for split in 0..bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(
            read_in(1 << 20, &[a, b]),
            Ok(whole.clone_events()),
            "{split}"
        );
    }
    let bytes_one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(
        read_in(1 << 20, &bytes_one_by_one),
        Ok(whole.clone_events())
    );
}

trait CloneEvents {
    fn clone_events(&self) -> Vec<Event>;
}

impl CloneEvents for Vec<Event> {
    fn clone_events(&self) -> Vec<Event> {
        self.iter()
            .map(|event| match event {
                Event::Text(t) => Event::Text(t.clone()),
                Event::Binary(b) => Event::Binary(b.clone()),
                Event::Ping(b) => Event::Ping(b.clone()),
                Event::Pong => Event::Pong,
                Event::Close(b) => Event::Close(b.clone()),
                Event::TooLarge(id) => Event::TooLarge(*id),
            })
            .collect()
    }
}

#[test]
fn frames_no_conforming_server_sends_are_errors() {
    let masked = [0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1];
    assert_eq!(read_all(1024, &masked), Err(FrameError::Masked));
    for rsv in [0x40, 0x20, 0x10] {
        assert_eq!(
            read_all(1024, &frame(0x81 | rsv, b"x")),
            Err(FrameError::Reserved)
        );
    }
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        assert_eq!(
            read_all(1024, &frame(0x80 | opcode, b"x")),
            Err(FrameError::Opcode(opcode))
        );
    }
    assert_eq!(
        read_all(1024, &frame(0x09, b"fragmented ping")),
        Err(FrameError::Control)
    );
    assert_eq!(
        read_all(1024, &frame(0x89, &[0; 126])),
        Err(FrameError::Control)
    );
    assert_eq!(read_all(1024, &frame(0x88, &[3])), Err(FrameError::Close));
    assert_eq!(
        read_all(1024, &frame(0x80, b"stray")),
        Err(FrameError::StrayContinuation)
    );
    let mut interleaved = frame(0x01, b"start");
    interleaved.extend(text(b"another"));
    assert_eq!(read_all(1024, &interleaved), Err(FrameError::Interleaved));
    let mut huge = vec![0x82, 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    assert_eq!(read_all(1024, &huge), Err(FrameError::Length));
}

#[test]
fn text_must_be_utf8_across_fragment_boundaries() {
    // "é" is 0xC3 0xA9: split between two fragments it is still valid.
    let mut split = frame(0x01, &[b'a', 0xC3]);
    split.extend(frame(0x80, &[0xA9, b'b']));
    assert_eq!(read_all(1024, &split), Ok(vec![message("a\u{e9}b")]));
    // A lead byte whose continuation never comes.
    let mut broken = frame(0x01, &[b'a', 0xC3]);
    broken.extend(frame(0x80, b"b"));
    assert_eq!(read_all(1024, &broken), Err(FrameError::Utf8));
    assert_eq!(read_all(1024, &text(&[0xff])), Err(FrameError::Utf8));
}

#[test]
fn a_close_frame_is_reported_with_its_payload() {
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"going away");
    let events = read_all(1024, &frame(0x88, &close)).expect("valid");
    assert_eq!(events, vec![Event::Close(Bytes::from(close))]);
}

/// An answer to call `id` with a result of `size` bytes.
fn answer(id: u64, size: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":""#).into_bytes();
    body.resize(body.len() + size, b'a');
    body.extend_from_slice(br#""}"#);
    body
}

#[test]
fn a_message_over_the_limit_is_skipped_and_named_by_its_opening_then_reading_goes_on() {
    let mut bytes = text(&answer(7, 5000));
    bytes.extend(text(&answer(8, 10)));
    // Over the limit only once its fragments add up: still named by its opening.
    bytes.extend(frame(0x01, br#"{"jsonrpc":"2.0","id":9,"result":""#));
    bytes.extend(frame(0x89, b""));
    bytes.extend(frame(0x00, &[b'a'; 900]));
    bytes.extend(frame(0x00, &[b'a'; 900]));
    bytes.extend(frame(0x80, br#""}"#));
    // No usable id: reported as such.
    bytes.extend(text(&[b' '; 2000]));
    bytes.extend(text(&answer(10, 10)));
    let last = String::from_utf8(answer(10, 10)).expect("utf8");
    let expected = vec![
        Event::TooLarge(Some(7)),
        message(&String::from_utf8(answer(8, 10)).expect("utf8")),
        Event::Ping(Bytes::new()),
        Event::TooLarge(Some(9)),
        Event::TooLarge(None),
        message(&last),
    ];
    assert_eq!(read_all(1024, &bytes), Ok(expected.clone_events()));
    let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(read_in(1024, &one_by_one), Ok(expected));
}

#[test]
fn a_message_at_the_limit_is_read() {
    let body = answer(1, 1000);
    let events = read_all(body.len(), &text(&body)).expect("valid");
    assert_eq!(events, vec![Event::Text(body.try_into().expect("UTF-8"))]);
}

#[test]
fn a_skipped_message_is_never_buffered_past_the_limit_and_one_chunk() {
    let max = 64 * 1024;
    let body = answer(3, 8 << 20);
    let bytes = text(&body);
    let mut reader = Reader::new(max, BytesMut::new());
    let mut events = Vec::new();
    let mut fed = 0;
    while fed < bytes.len() {
        let (buf, want) = reader.space();
        let n = want.min(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        while let Some(event) = reader.next().expect("valid") {
            events.push(event);
        }
        assert!(
            reader.held() <= max + READ_CHUNK,
            "{} bytes held after {fed}",
            reader.held()
        );
    }
    assert_eq!(events, vec![Event::TooLarge(Some(3))]);
}

#[test]
fn a_fragmented_message_within_the_limit_is_assembled_within_it() {
    let max = 100_000;
    let mut bytes = Vec::new();
    for _ in 0..999 {
        bytes.extend(frame(0x00, &[b'a'; 100]));
    }
    bytes[0] = 0x01;
    bytes.extend(frame(0x80, &[b'a'; 100]));
    let mut reader = Reader::new(max, BytesMut::new());
    let (buf, _) = reader.space();
    buf.extend_from_slice(&bytes);
    let event = reader.next().expect("valid").expect("whole");
    assert_eq!(event, Event::Text("a".repeat(100_000).into()));
    assert!(reader.held() <= max + bytes.len());
}

/// How long reading one `size`-byte text message (within the limit) takes when it comes in
/// reads of `read` bytes; with `warm`, into a buffer already in memory (no page faults).
fn reading_time(size: usize, read: usize, warm: bool) -> std::time::Duration {
    let bytes = text(&vec![b'a'; size]);
    let mut start = BytesMut::new();
    if warm {
        start.resize(bytes.len(), 0);
        start.clear();
    }
    let mut reader = Reader::new(size, start);
    let begin = std::time::Instant::now();
    let mut read_whole = None;
    for part in bytes.chunks(read) {
        let (buf, _) = reader.space();
        buf.extend_from_slice(part);
        if let Some(event) = reader.next().expect("valid") {
            read_whole = Some(event);
        }
    }
    let elapsed = begin.elapsed();
    assert!(matches!(read_whole, Some(Event::Text(m)) if m.len() == size));
    elapsed
}

#[test]
fn a_huge_message_is_read_in_linear_time() {
    // Compared side by side, never against a clock, each the best of three so a hiccup
    // cannot fail the test. In 64 KiB reads, a 60 MB message costs about what it costs read
    // at once (a reader whose work per read grows with the buffer, as tungstenite's zeroing
    // does, or that grows its buffer a chunk at a time, takes a hundred times as long)...
    let best = |size, read, warm| {
        (0..3)
            .map(|_| reading_time(size, read, warm))
            .min()
            .expect("runs")
    };
    let (chunked, at_once) = (
        best(60 << 20, 64 << 10, false),
        best(60 << 20, 61 << 20, false),
    );
    assert!(
        chunked < 10 * at_once,
        "read in chunks took {:.1}x as long ({chunked:?} against {at_once:?})",
        chunked.as_secs_f64() / at_once.as_secs_f64()
    );
    // ...and ten times the size takes about ten times as long: more, as 60 MB falls out of
    // the caches where 6 MB does not, but far from the hundred times of quadratic work.
    let (large, small) = (
        best(60 << 20, 64 << 10, true),
        best(6 << 20, 64 << 10, true),
    );
    assert!(
        large < 60 * small,
        "10x the size took {:.1}x as long ({large:?} against {small:?})",
        large.as_secs_f64() / small.as_secs_f64()
    );
}

//! WebSocket frames (RFC 6455) as the other side sends them, in either role: a node's on a
//! multiplexed upstream connection (ethgate the client), or a client's on its session
//! (ethgate the server). Read from a buffer the connection's task fills: no I/O here, so
//! every rule is tested byte by byte.
//!
//! The buffer is never zeroed (the socket reads into its spare capacity), a message is
//! validated once, and a single-frame message leaves as a slice of the buffer (no copy, and
//! no allocation per message; a client's frame is unmasked in place). A message over the
//! limit is skipped as it streams in: a node's keeps only its opening, to name the call it
//! answers, so one huge answer costs that call alone and never more memory than the limit;
//! a client's is reported at once, nothing of it kept.

use bytes::{Buf, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Bytes read from the socket at a time, unless a frame in progress needs more.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Bytes of a skipped message kept to find its id: `{"jsonrpc":"2.0","id":` and 20 digits.
const OPENING: usize = 64;

/// Room below which the buffer is grown (by [`READ_CHUNK`]) before the next read.
const MIN_ROOM: usize = READ_CHUNK / 4;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Whose frames a [`Reader`] reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer {
    /// A node's, ethgate being its client: unmasked. A message over the limit is named by
    /// `name` from its opening (the id of the call it answers, if any).
    Server { name: fn(&[u8]) -> Option<u64> },
    /// A client's, ethgate being its server: masked (RFC 6455 §5.1). A message over the limit
    /// is reported as soon as its size is known.
    Client,
}

/// What the other side sent, one complete frame or message at a time.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// A whole text message, its UTF-8 checked here once: the type carries that, so nothing
    /// downstream checks it again.
    Text(Utf8Bytes),
    /// A whole binary message, not checked.
    Binary(Bytes),
    /// A ping, to be answered with a pong carrying `payload`.
    Ping(Bytes),
    /// A pong: the node is alive.
    Pong,
    /// The other side closes the connection; the payload (status code and reason).
    Close(Bytes),
    /// A message over the limit, skipped unread; the id its opening names, if any.
    TooLarge(Option<u64>),
}

/// A frame no conforming peer sends: the connection cannot go on.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("masked frame from the server")]
    Masked,
    #[error("unmasked frame from the client")]
    Unmasked,
    #[error("reserved bits set")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("fragmented control frame, or one over 125 bytes")]
    Control,
    #[error("continuation frame outside a fragmented message")]
    StrayContinuation,
    #[error("new message inside a fragmented one")]
    Interleaved,
    #[error("text message not valid UTF-8")]
    Utf8,
    #[error("frame length with its top bit set")]
    Length,
    #[error("close frame with a one-byte payload")]
    Close,
}

/// What reading one frame came to.
enum Step {
    Done(Event),
    /// The frame is incomplete: wait for more bytes.
    More,
    /// The frame was consumed without completing an event: read the next.
    Next,
}

/// A frame's header as read from its first bytes.
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    /// Bytes of the header, masking key included.
    size: usize,
    /// The masking key of a client's frame.
    mask: Option<[u8; 4]>,
}

/// The reading side of one connection.
pub(crate) struct Reader {
    buf: BytesMut,
    max: usize,
    peer: Peer,
    /// The fragments so far of a message sent in several frames, and whether it is text.
    partial: Option<(BytesMut, bool)>,
    /// Bytes of the current frame still to discard, and whether the message ends with it.
    skipping: Option<(u64, bool)>,
    /// Whether a skipped message goes on in later frames (to be skipped as well).
    skipped_goes_on: bool,
    /// Bytes the frame in progress still lacks: how much the next read may bring at once.
    lacking: usize,
}

impl Reader {
    /// A reader of `peer`'s messages up to `max` bytes that starts with `start` (bytes that
    /// arrived with the handshake).
    pub(crate) fn new(peer: Peer, max: usize, start: BytesMut) -> Self {
        Reader {
            buf: start,
            max,
            peer,
            partial: None,
            skipping: None,
            skipped_goes_on: false,
            lacking: 0,
        }
    }

    /// The buffer the next read appends to, with room for it; and how much that read may
    /// bring (one chunk, or all a frame within the limit still lacks).
    pub(crate) fn space(&mut self) -> (&mut BytesMut, usize) {
        let room = self.buf.capacity() - self.buf.len();
        if room < self.lacking {
            self.buf.reserve(self.lacking);
        } else if room < MIN_ROOM {
            self.buf.reserve(READ_CHUNK);
        }
        (&mut self.buf, self.lacking.max(READ_CHUNK))
    }

    /// Bytes held for messages not yet complete (the memory a connection's reading costs).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |(data, _)| data.capacity())
    }

    /// Bytes read and not yet consumed: the rest of a frame, or frames not asked for yet.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Exchanges the read buffer with `other` (a connection that lends its empty buffer
    /// between reads, see `frontend/ws/incoming.rs`).
    pub(crate) fn swap_buffer(&mut self, other: &mut BytesMut) {
        std::mem::swap(&mut self.buf, other);
    }

    /// The next complete event in what was read so far; `None` until more bytes come.
    pub(crate) fn next(&mut self) -> Result<Option<Event>, FrameError> {
        loop {
            if let Some((remaining, fin)) = &mut self.skipping {
                let n = (*remaining).min(self.buf.len() as u64);
                self.buf.advance(n as usize);
                *remaining -= n;
                if *remaining > 0 {
                    self.lacking = 0;
                    return Ok(None);
                }
                self.skipped_goes_on = !*fin;
                self.skipping = None;
                continue;
            }
            let Some(header) = header(&self.buf, self.peer)? else {
                self.lacking = 0;
                return Ok(None);
            };
            let step = match header.opcode {
                CLOSE | PING | PONG => self.control(&header).map_or(Step::More, Step::Done),
                _ => self.data(&header)?,
            };
            match step {
                Step::Done(event) => return Ok(Some(event)),
                Step::More => return Ok(None),
                Step::Next => {}
            }
        }
    }

    /// A ping, pong or close once whole (at most 125 bytes: [`header`] checked).
    fn control(&mut self, header: &Header) -> Option<Event> {
        let payload = self.take(header)?;
        Some(match header.opcode {
            PING => Event::Ping(payload),
            PONG => Event::Pong,
            _ => Event::Close(payload),
        })
    }

    /// A data frame: a whole message, a fragment kept for later, or the start of a skip.
    fn data(&mut self, header: &Header) -> Result<Step, FrameError> {
        let in_message = self.partial.is_some() || self.skipped_goes_on;
        match (header.opcode, in_message) {
            (CONTINUATION, false) => return Err(FrameError::StrayContinuation),
            (TEXT | BINARY, true) => return Err(FrameError::Interleaved),
            _ => {}
        }
        if self.skipped_goes_on {
            // The rest of a message already reported as too large.
            self.buf.advance(header.size);
            self.skipping = Some((header.len, header.fin));
            return Ok(Step::Next);
        }
        let so_far = self.partial.as_ref().map_or(0, |(data, _)| data.len());
        if header.len > (self.max - so_far) as u64 {
            return Ok(self
                .too_large(header, so_far)
                .map_or(Step::More, Step::Done));
        }
        let Some(payload) = self.take(header) else {
            return Ok(Step::More);
        };
        let text = match &self.partial {
            Some((_, text)) => *text,
            None => header.opcode == TEXT,
        };
        let message = match (self.partial.take(), header.fin) {
            (None, true) => payload,
            (Some((mut data, text)), fin) => {
                grow_within(&mut data, payload.len(), self.max);
                data.extend_from_slice(&payload);
                if !fin {
                    self.partial = Some((data, text));
                    return Ok(Step::Next);
                }
                data.freeze()
            }
            (None, false) => {
                let mut data = BytesMut::new();
                grow_within(&mut data, payload.len(), self.max);
                data.extend_from_slice(&payload);
                self.partial = Some((data, text));
                return Ok(Step::Next);
            }
        };
        let event = match text {
            true => Event::Text(Utf8Bytes::try_from(message).map_err(|_| FrameError::Utf8)?),
            false => Event::Binary(message),
        };
        Ok(Step::Done(event))
    }

    /// Starts skipping the message `header` would take over the limit, once a node's opening
    /// is in (`so_far` bytes of it came in earlier fragments).
    fn too_large(&mut self, header: &Header, so_far: usize) -> Option<Event> {
        let name = match self.peer {
            Peer::Server { name } => name,
            Peer::Client => {
                self.partial = None;
                self.buf.advance(header.size);
                self.skipping = Some((header.len, header.fin));
                return Some(Event::TooLarge(None));
            }
        };
        let want = OPENING.saturating_sub(so_far).min(header.len as usize);
        if self.buf.len() < header.size + want {
            self.lacking = header.size + want - self.buf.len();
            return None;
        }
        let mut opening = Vec::with_capacity(OPENING);
        if let Some((data, _)) = self.partial.take() {
            opening.extend_from_slice(&data[..data.len().min(OPENING)]);
        }
        opening.extend_from_slice(&self.buf[header.size..header.size + want]);
        self.buf.advance(header.size);
        self.skipping = Some((header.len, header.fin));
        Some(Event::TooLarge(name(&opening)))
    }

    /// The payload of the frame `header` opens, once all of it is in.
    fn take(&mut self, header: &Header) -> Option<Bytes> {
        // Within the limit (checked by the caller, or at most 125 bytes): fits in usize.
        let len = header.len as usize;
        let end = header.size + len;
        if self.buf.len() < end {
            self.lacking = end - self.buf.len();
            return None;
        }
        self.lacking = 0;
        self.buf.advance(header.size);
        // A slice of the buffer, not a copy: later reads fill the rest of its allocation, and
        // a new one is made only once that is used up while answers still hold the old.
        let mut payload = self.buf.split_to(len);
        if let Some(mask) = header.mask {
            apply_mask(&mut payload, mask);
        }
        Some(payload.freeze())
    }
}

/// XORs `payload` with the repeated 4-byte `mask` (RFC 6455 §5.3: masking and unmasking are
/// the same), eight bytes at a time: the frames a client sends us, and those ethgate sends a
/// node (`upstream/ws/writer.rs`).
pub(crate) fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = payload.chunks_exact_mut(8);
    for chunk in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Eight is a multiple of the key's length: the rest (up to 7 bytes) starts at the key's
    // first byte.
    for (byte, key) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Makes room for `more` bytes in a message being assembled, doubling (linear time) but never
/// past `max` (the memory bound).
fn grow_within(data: &mut BytesMut, more: usize, max: usize) {
    let need = data.len() + more;
    if need > data.capacity() {
        let target = need.max(data.capacity() * 2).min(max).max(need);
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(data);
        *data = grown;
    }
}

/// The header at the start of `buf`, checked for `peer`; `None` while incomplete.
fn header(buf: &[u8], peer: Peer) -> Result<Option<Header>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let masked = second & 0x80 != 0;
    match (peer, masked) {
        (Peer::Server { .. }, true) => return Err(FrameError::Masked),
        (Peer::Client, false) => return Err(FrameError::Unmasked),
        _ => {}
    }
    let (len, size) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if len >> 63 != 0 {
        return Err(FrameError::Length);
    }
    let (fin, opcode) = (first & 0x80 != 0, first & 0x0F);
    match opcode {
        CONTINUATION | TEXT | BINARY => {}
        CLOSE | PING | PONG if !fin || len > 125 => return Err(FrameError::Control),
        CLOSE if len == 1 => return Err(FrameError::Close),
        CLOSE | PING | PONG => {}
        other => return Err(FrameError::Opcode(other)),
    }
    let (size, mask) = match masked {
        false => (size, None),
        true => match buf
            .get(size..size + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        {
            Some(key) => (size + 4, Some(key)),
            None => return Ok(None),
        },
    };
    Ok(Some(Header {
        fin,
        opcode,
        len,
        size,
        mask,
    }))
}

#[cfg(test)]
pub(crate) mod tests;

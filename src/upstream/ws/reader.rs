//! The frames a node sends on a multiplexed WebSocket: the shared RFC 6455 reader
//! (`crate::websocket`, which reads a client's frames too) in the client role, where a
//! message over `max_response_bytes` is named by the id in its opening (see
//! [`opening_id`]) so that only the call it answers fails.

use bytes::BytesMut;

pub(super) use crate::websocket::{Event, FrameError};
use crate::websocket::{Peer, Reader as Frames};

use super::ids::opening_id;

#[cfg(test)]
use {crate::websocket::READ_CHUNK, bytes::Bytes};

/// The reading side of one upstream connection.
pub(super) struct Reader(Frames);

impl Reader {
    /// A reader of messages up to `max` bytes that starts with `start` (bytes that arrived
    /// with the handshake's answer).
    pub(super) fn new(max: usize, start: BytesMut) -> Self {
        Reader(Frames::new(Peer::Server { name: opening_id }, max, start))
    }

    /// The buffer the next read appends to, with room for it; and how much that read may
    /// bring (see `Reader::space` of the shared reader).
    pub(super) fn space(&mut self) -> (&mut BytesMut, usize) {
        self.0.space()
    }

    /// The next complete event in what was read so far; `None` until more bytes come.
    pub(super) fn next(&mut self) -> Result<Option<Event>, FrameError> {
        self.0.next()
    }

    /// Bytes held for messages not yet complete.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.0.held()
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;

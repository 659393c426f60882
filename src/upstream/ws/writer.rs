//! The frames ethgate writes on a multiplexed WebSocket, masked with a fresh random key each as
//! RFC 6455 requires of a client, into one buffer so that requests arriving together (and any
//! pong owed) share one write.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::websocket::apply_mask;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A write buffer kept between writes up to this size; a larger one (after a huge request)
/// is released.
const KEPT_CAPACITY: usize = 256 * 1024;

/// Frames waiting to be written on one connection.
pub(super) struct Writer {
    out: Vec<u8>,
    /// Masks must be unpredictable to the network (RFC 6455 §10.3): a CSPRNG seeded by the OS,
    /// one per connection so taking a mask costs no lock.
    rng: StdRng,
}

impl Writer {
    /// An empty buffer with a freshly seeded mask generator.
    pub(super) fn new() -> Self {
        Writer {
            out: Vec::new(),
            rng: StdRng::from_os_rng(),
        }
    }

    /// Adds a text message (valid UTF-8: the caller checked) as one frame.
    pub(super) fn text(&mut self, payload: &[u8]) {
        self.frame(TEXT, payload);
    }

    /// Adds a ping with no payload (the liveness check).
    pub(super) fn ping(&mut self) {
        self.frame(PING, &[]);
    }

    /// Adds the pong that answers a ping carrying `payload` (at most 125 bytes: read so).
    pub(super) fn pong(&mut self, payload: &[u8]) {
        self.frame(PONG, payload);
    }

    /// Adds a close frame with `payload` (empty, or a status code and reason to echo).
    pub(super) fn close(&mut self, payload: &[u8]) {
        self.frame(CLOSE, payload);
    }

    /// The bytes to write.
    pub(super) fn pending(&self) -> &[u8] {
        &self.out
    }

    /// Forgets what was written, keeping the buffer unless it grew past [`KEPT_CAPACITY`].
    pub(super) fn written(&mut self) {
        self.out.clear();
        if self.out.capacity() > KEPT_CAPACITY {
            self.out = Vec::new();
        }
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.rng.next_u32().to_ne_bytes();
        self.out.reserve(14 + payload.len());
        self.out.push(0x80 | opcode);
        // Every client frame is masked: bit 0x80 of the length byte.
        match payload.len() {
            len @ 0..=125 => self.out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&mask);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        apply_mask(&mut self.out[start..], mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame at the start of `bytes` unmasked: (first byte, payload, mask, frame size).
    fn unmask(bytes: &[u8]) -> (u8, Vec<u8>, [u8; 4], usize) {
        assert_eq!(bytes[1] & 0x80, 0x80, "client frames are masked");
        let (len, at) = match bytes[1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask: [u8; 4] = bytes[at..at + 4].try_into().expect("4");
        let payload = bytes[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        (bytes[0], payload, mask, at + 4 + len)
    }

    #[test]
    fn word_wise_masking_matches_the_byte_wise_rule_at_every_length() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        let data: Vec<u8> = (0..40u8).collect();
        for len in 0..data.len() {
            let mut masked = data[..len].to_vec();
            apply_mask(&mut masked, mask);
            let expected: Vec<u8> = data[..len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(masked, expected, "length {len}");
        }
    }

    #[test]
    fn frames_of_every_length_class_are_masked_with_a_fresh_key_each() {
        let mut writer = Writer::new();
        let payloads = [vec![b'a'; 5], vec![b'b'; 126], vec![b'c'; 70_000]];
        for payload in &payloads {
            writer.text(payload);
        }
        writer.pong(b"hi");
        let mut at = 0;
        let mut masks = Vec::new();
        for payload in &payloads {
            let (first, unmasked, mask, size) = unmask(&writer.pending()[at..]);
            assert_eq!(first, 0x81, "FIN + text");
            assert_eq!(&unmasked, payload);
            masks.push(mask);
            at += size;
        }
        let (first, unmasked, _, size) = unmask(&writer.pending()[at..]);
        assert_eq!((first, unmasked.as_slice()), (0x8A, &b"hi"[..]));
        assert_eq!(at + size, writer.pending().len(), "nothing else written");
        masks.dedup();
        assert_eq!(masks.len(), 3, "a key per frame");
        writer.written();
        assert!(writer.pending().is_empty());
    }
}

//! `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1): sizes, extensions and trailers, with
//! every line and the decoded body bounded, so a peer cannot make a read grow without end.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest chunk-size line (size and extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Largest total of trailer lines accepted.
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The read failed.
    #[error("reading the body: {0}")]
    Io(std::io::Error),
    /// The peer closed the connection before the body was complete.
    #[error("connection closed before the body was complete")]
    Closed,
    /// The framing is broken.
    #[error("{0}")]
    Invalid(&'static str),
    /// The body is larger than the limit.
    #[error("body too large")]
    TooLarge,
}

/// Reads a whole chunked body, at most `limit` decoded bytes; `buf` holds what was read past
/// the head and keeps what follows the body (a pipelined request, say).
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    loop {
        let size = read_size(reader, buf).await?;
        if size == 0 {
            skip_trailers(reader, buf).await?;
            return Ok(body.freeze());
        }
        if body.len() as u64 + size > limit as u64 {
            return Err(BodyError::TooLarge);
        }
        let size = size as usize;
        while buf.len() < size + 2 {
            fill(reader, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(BodyError::Invalid("invalid chunk: no CRLF after data"));
        }
        buf.advance(size + 2);
    }
}

/// Reads more bytes into `buf`; the end of the stream is `Closed`.
async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) -> Result<(), BodyError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match reader.read_buf(buf).await {
        Ok(0) => Err(BodyError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(BodyError::Io(e)),
    }
}

/// Reads one CRLF-terminated line (without the CRLF), at most `MAX_CHUNK_LINE` long; a
/// bare CR or LF inside it is refused, since a peer ending lines at a bare LF would frame
/// the body differently.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Bytes, BodyError> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            if end > MAX_CHUNK_LINE {
                return Err(BodyError::Invalid("invalid chunk: line too long"));
            }
            if buf[..end].iter().any(|&b| b == b'\r' || b == b'\n') {
                return Err(BodyError::Invalid("invalid chunk: bare CR or LF"));
            }
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_CHUNK_LINE {
            return Err(BodyError::Invalid("invalid chunk: line too long"));
        }
        fill(reader, buf).await?;
    }
}

async fn read_size<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<u64, BodyError> {
    let line = read_line(reader, buf).await?;
    chunk_size(&line).ok_or(BodyError::Invalid("invalid chunk size"))
}

/// The size of a chunk-size line: `1*HEXDIG [BWS ";" extensions]` (RFC 9112 §7.1), hex
/// digits only, no sign and no other whitespace.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = &line[..end];
    // Spaces and tabs are allowed only before the extensions' `;`.
    let digits = match line.get(end) {
        Some(_) => {
            let kept = digits.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
            &digits[..kept.map_or(0, |last| last + 1)]
        }
        None => digits,
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        Some(n * 16 + u64::from((d as char).to_digit(16)?))
    })
}

async fn skip_trailers<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<(), BodyError> {
    let mut trailer_bytes = 0;
    loop {
        let line = read_line(reader, buf).await?;
        if line.is_empty() {
            return Ok(());
        }
        trailer_bytes += line.len();
        if trailer_bytes > MAX_TRAILER_BYTES {
            return Err(BodyError::Invalid("trailers too large"));
        }
    }
}

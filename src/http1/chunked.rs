//! `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1): sizes, extensions and trailers, with
//! every line and the decoded body bounded, so a peer cannot make a read grow without end.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest chunk-size line (size and extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Largest total of trailer lines accepted.
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Why a chunked body could not be read.
#[derive(Debug)]
pub enum ChunkedError {
    /// The read failed.
    Io(std::io::Error),
    /// The peer closed the connection before the last chunk.
    Closed,
    /// The framing is broken.
    Invalid(&'static str),
    /// The decoded body is larger than the limit.
    TooLarge,
}

/// Reads a whole chunked body, at most `limit` decoded bytes; `buf` holds what was read past
/// the head and keeps what follows the body (a pipelined request, say).
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Bytes, ChunkedError> {
    let mut body = BytesMut::new();
    loop {
        let size = read_size(reader, buf).await?;
        if size == 0 {
            skip_trailers(reader, buf).await?;
            return Ok(body.freeze());
        }
        if body.len() as u64 + size > limit as u64 {
            return Err(ChunkedError::TooLarge);
        }
        let size = size as usize;
        while buf.len() < size + 2 {
            fill(reader, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ChunkedError::Invalid("invalid chunk: no CRLF after data"));
        }
        buf.advance(size + 2);
    }
}

/// Reads more bytes into `buf`; the end of the stream is `Closed`.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<(), ChunkedError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match reader.read_buf(buf).await {
        Ok(0) => Err(ChunkedError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(ChunkedError::Io(e)),
    }
}

/// Reads one CRLF-terminated line (without the CRLF), at most `MAX_CHUNK_LINE` long.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Bytes, ChunkedError> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_CHUNK_LINE {
            return Err(ChunkedError::Invalid("invalid chunk: line too long"));
        }
        fill(reader, buf).await?;
    }
}

async fn read_size<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<u64, ChunkedError> {
    let line = read_line(reader, buf).await?;
    let size = line.split(|&b| b == b';').next().unwrap_or_default();
    let size = std::str::from_utf8(size).unwrap_or("").trim();
    if size.is_empty() || size.len() > 15 {
        return Err(ChunkedError::Invalid("invalid chunk size"));
    }
    u64::from_str_radix(size, 16).map_err(|_| ChunkedError::Invalid("invalid chunk size"))
}

async fn skip_trailers<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<(), ChunkedError> {
    let mut trailer_bytes = 0;
    loop {
        let line = read_line(reader, buf).await?;
        if line.is_empty() {
            return Ok(());
        }
        trailer_bytes += line.len();
        if trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::Invalid("trailers too large"));
        }
    }
}

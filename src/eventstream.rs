//! AWS event-stream binary framing (`application/vnd.amazon.eventstream`), decoded incrementally
//! across arbitrary chunk boundaries: prelude (total length, headers length, prelude CRC32),
//! typed headers, payload, message CRC32.
//!
//! ```text
//! [total len u32 BE][headers len u32 BE][prelude CRC32 u32 BE][headers][payload][message CRC32]
//! header: [name len u8][name UTF-8][type u8][value]    both CRCs: CRC-32/ISO-HDLC (zlib's crc32)
//! ```
//!
//! The [`Decoder`] is fed body chunks as they arrive. A frame may be split anywhere and many
//! frames may share one chunk. Complete frames inside a chunk are handed out straight from the
//! chunk (no copy); only a frame that straddles chunks is buffered, and each byte is copied at
//! most once, so decoding is O(n) overall and the buffer never holds more than one frame
//! (at most [`MAX_MESSAGE_LEN`] bytes, and only as many as actually arrived). The first framing
//! violation (CRC, lengths, header encoding) is reported once as an [`Error`] and decoding stops
//! for good: input is untrusted network data, so nothing here panics or loops without
//! consuming input.

use std::fmt;

/// Largest accepted frame (total length), as in the AWS SDKs (aws-c-event-stream: 16 MiB).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// Smallest possible frame: 12-byte prelude and 4-byte message CRC, no headers, no payload.
pub const MIN_MESSAGE_LEN: usize = 16;
/// Largest accepted headers section (aws-c-event-stream: 128 KiB).
pub const MAX_HEADERS_LEN: usize = 128 * 1024;
/// Prelude: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;

/// Buffer capacity kept across frames; a larger buffer (one huge frame) is released afterwards.
const KEEP_CAPACITY: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// CRC-32/ISO-HDLC (reflected, polynomial 0xEDB88320, init and xorout 0xFFFFFFFF): zlib's crc32.

/// Slicing-by-8 tables: `tables[0]` is the classic byte table; `tables[k]` advances a byte's
/// CRC by k more zero bytes, so eight bytes cost one step instead of eight (every frame of a
/// Bedrock stream is checked whole). Built on first use (8 KB not carried in the module).
fn crc_tables() -> &'static [[u32; 256]; 8] {
    static TABLES: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for (i, slot) in t[0].iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        for k in 1..8 {
            let (done, rest) = t.split_at_mut(k);
            let (Some(prev), Some(first), Some(next)) = (done.last(), done.first(), rest.first_mut()) else { break };
            for (slot, &p) in next.iter_mut().zip(prev.iter()) {
                *slot = (p >> 8) ^ first.get((p & 0xFF) as usize).copied().unwrap_or(0);
            }
        }
        t
    })
}

/// The table entry for the low byte of `x` (an index below 256 by construction).
#[inline(always)]
fn crc_at(tables: &[[u32; 256]; 8], table: usize, x: u32) -> u32 {
    tables.get(table).and_then(|t| t.get((x & 0xFF) as usize)).copied().unwrap_or(0)
}

/// Continues a CRC-32 (start with `0`): `crc32_update(crc32_update(0, a), b) == crc32(a ++ b)`.
pub fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let t = crc_tables();
    let mut c = !crc;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let Ok(w) = <&[u8; 8]>::try_from(w) else { break };
        let lo = c ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        c = crc_at(t, 7, lo)
            ^ crc_at(t, 6, lo >> 8)
            ^ crc_at(t, 5, lo >> 16)
            ^ crc_at(t, 4, lo >> 24)
            ^ crc_at(t, 3, hi)
            ^ crc_at(t, 2, hi >> 8)
            ^ crc_at(t, 1, hi >> 16)
            ^ crc_at(t, 0, hi >> 24);
    }
    for &b in words.remainder() {
        c = crc_at(t, 0, c ^ u32::from(b)) ^ (c >> 8);
    }
    !c
}

/// CRC-32/ISO-HDLC of `bytes` (the same value as Python's `zlib.crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A framing violation. After one, the [`Decoder`] ignores all further input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The CRC over the first 8 bytes does not match the prelude CRC field.
    PreludeCrc { expected: u32, actual: u32 },
    /// The CRC over the frame does not match its last 4 bytes.
    MessageCrc { expected: u32, actual: u32 },
    /// Total length outside `MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN`.
    MessageLength(u32),
    /// Headers length larger than the frame or than [`MAX_HEADERS_LEN`].
    HeadersLength(u32),
    /// A header runs past the end of the headers section.
    HeaderTruncated,
    /// A header value type outside 0..=9.
    UnknownHeaderType(u8),
    /// A header name or string value is not UTF-8.
    HeaderNotUtf8,
    /// (Encoding only) a header name over 255 bytes, a value over 65535 bytes, or a frame over
    /// [`MAX_MESSAGE_LEN`].
    TooLong,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::PreludeCrc { expected, actual } => {
                write!(f, "prelude CRC mismatch (frame says {expected:#010x}, computed {actual:#010x})")
            }
            Error::MessageCrc { expected, actual } => {
                write!(f, "message CRC mismatch (frame says {expected:#010x}, computed {actual:#010x})")
            }
            Error::MessageLength(n) => write!(f, "invalid message length {n}"),
            Error::HeadersLength(n) => write!(f, "invalid headers length {n}"),
            Error::HeaderTruncated => f.write_str("truncated header"),
            Error::UnknownHeaderType(t) => write!(f, "unknown header value type {t}"),
            Error::HeaderNotUtf8 => f.write_str("header name or string value is not UTF-8"),
            Error::TooLong => f.write_str("header or message too long to encode"),
        }
    }
}

impl std::error::Error for Error {}

// ---------------------------------------------------------------------------------------------
// Headers and messages

/// A typed header value (the wire type byte in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// (0 = true, 1 = false)
    Bool(bool),
    /// (2)
    Byte(i8),
    /// (3)
    Short(i16),
    /// (4)
    Int(i32),
    /// (5)
    Long(i64),
    /// (6) u16 length + bytes
    Bytes(&'a [u8]),
    /// (7) u16 length + UTF-8
    String(&'a str),
    /// (8) milliseconds since the Unix epoch
    Timestamp(i64),
    /// (9)
    Uuid([u8; 16]),
}

impl<'a> HeaderValue<'a> {
    /// The value when it is a string header.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }

    fn wire_type(&self) -> u8 {
        match self {
            HeaderValue::Bool(true) => 0,
            HeaderValue::Bool(false) => 1,
            HeaderValue::Byte(_) => 2,
            HeaderValue::Short(_) => 3,
            HeaderValue::Int(_) => 4,
            HeaderValue::Long(_) => 5,
            HeaderValue::Bytes(_) => 6,
            HeaderValue::String(_) => 7,
            HeaderValue::Timestamp(_) => 8,
            HeaderValue::Uuid(_) => 9,
        }
    }
}

/// One header of a decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: HeaderValue<'a>,
}

/// A decoded, CRC-checked message borrowing the input (or the decoder's buffer).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    headers: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The headers in wire order (already validated, so iteration never fails).
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.headers }
    }

    /// The first header called `name` (names are compared exactly, as on the wire).
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.headers().find(|h| h.name == name).map(|h| h.value)
    }

    /// The value of the string header `name`; `None` if absent or not a string.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| v.as_str())
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// Iterator over the headers of a [`Message`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        match parse_header(self.rest) {
            Ok((header, rest)) => {
                self.rest = rest;
                Some(header)
            }
            Err(_) => {
                // Unreachable for a validated message; stop rather than loop.
                self.rest = &[];
                None
            }
        }
    }
}

fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), Error> {
    if bytes.len() < n {
        return Err(Error::HeaderTruncated);
    }
    Ok(bytes.split_at(n))
}

fn take_array<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), Error> {
    let (head, rest) = take(bytes, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok((out, rest))
}

/// Parses one header at the start of `bytes`; returns it and the rest.
fn parse_header(bytes: &[u8]) -> Result<(Header<'_>, &[u8]), Error> {
    let ([name_len], rest) = take_array::<1>(bytes)?;
    let (name, rest) = take(rest, usize::from(name_len))?;
    let name = std::str::from_utf8(name).map_err(|_| Error::HeaderNotUtf8)?;
    let ([ty], rest) = take_array::<1>(rest)?;
    let (value, rest) = match ty {
        0 => (HeaderValue::Bool(true), rest),
        1 => (HeaderValue::Bool(false), rest),
        2 => {
            let (b, rest) = take_array::<1>(rest)?;
            (HeaderValue::Byte(i8::from_be_bytes(b)), rest)
        }
        3 => {
            let (b, rest) = take_array::<2>(rest)?;
            (HeaderValue::Short(i16::from_be_bytes(b)), rest)
        }
        4 => {
            let (b, rest) = take_array::<4>(rest)?;
            (HeaderValue::Int(i32::from_be_bytes(b)), rest)
        }
        5 | 8 => {
            let (b, rest) = take_array::<8>(rest)?;
            let v = i64::from_be_bytes(b);
            (if ty == 5 { HeaderValue::Long(v) } else { HeaderValue::Timestamp(v) }, rest)
        }
        6 | 7 => {
            let (len, rest) = take_array::<2>(rest)?;
            let (v, rest) = take(rest, usize::from(u16::from_be_bytes(len)))?;
            if ty == 6 {
                (HeaderValue::Bytes(v), rest)
            } else {
                let s = std::str::from_utf8(v).map_err(|_| Error::HeaderNotUtf8)?;
                (HeaderValue::String(s), rest)
            }
        }
        9 => {
            let (b, rest) = take_array::<16>(rest)?;
            (HeaderValue::Uuid(b), rest)
        }
        other => return Err(Error::UnknownHeaderType(other)),
    };
    Ok((Header { name, value }, rest))
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_be_bytes(b)
}

/// Validates a 12-byte prelude; returns (total length, headers length).
fn check_prelude(prelude: &[u8]) -> Result<(usize, usize), Error> {
    let total = be_u32(prelude, 0);
    let headers = be_u32(prelude, 4);
    let expected = be_u32(prelude, 8);
    let actual = crc32(prelude.get(..8).unwrap_or_default());
    if expected != actual {
        return Err(Error::PreludeCrc { expected, actual });
    }
    let total_len = total as usize;
    if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&total_len) {
        return Err(Error::MessageLength(total));
    }
    let headers_len = headers as usize;
    if headers_len > MAX_HEADERS_LEN || headers_len > total_len - MIN_MESSAGE_LEN {
        return Err(Error::HeadersLength(headers));
    }
    Ok((total_len, headers_len))
}

/// Decodes exactly one complete frame (`frame.len()` must equal its total length).
pub fn decode_message(frame: &[u8]) -> Result<Message<'_>, Error> {
    let prelude = frame.get(..PRELUDE_LEN).ok_or(Error::MessageLength(frame.len() as u32))?;
    let (total, headers_len) = check_prelude(prelude)?;
    if frame.len() != total {
        return Err(Error::MessageLength(total as u32));
    }
    let body_end = total - 4;
    let expected = be_u32(frame, body_end);
    let covered = frame.get(..body_end).unwrap_or_default();
    let actual = crc32(covered);
    if expected != actual {
        return Err(Error::MessageCrc { expected, actual });
    }
    let data = covered.get(PRELUDE_LEN..).unwrap_or_default();
    let (headers, payload) = data.split_at(headers_len.min(data.len()));
    let mut rest = headers;
    while !rest.is_empty() {
        rest = parse_header(rest)?.1;
    }
    Ok(Message { headers, payload })
}

// ---------------------------------------------------------------------------------------------
// Incremental decoder

/// Incremental event-stream decoder. See the module docs.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The start of a frame that straddles chunks (empty between frames).
    buf: Vec<u8>,
    /// Total length of the buffered frame once its prelude is known.
    want: Option<usize>,
    error: Option<Error>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk and calls `on_message` for each complete, valid frame in order. On the first
    /// framing violation returns `Err` (frames before it in the chunk were delivered); from then
    /// on every call returns that error again and ignores its input.
    pub fn feed(&mut self, chunk: &[u8], on_message: &mut dyn FnMut(Message<'_>)) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let result = self.feed_inner(chunk, on_message);
        if let Err(e) = result {
            self.error = Some(e);
            self.buf = Vec::new();
            self.want = None;
        }
        result
    }

    fn feed_inner(&mut self, mut chunk: &[u8], on_message: &mut dyn FnMut(Message<'_>)) -> Result<(), Error> {
        // 1. Complete a frame begun in an earlier chunk.
        if !self.buf.is_empty() {
            if self.buf.len() < PRELUDE_LEN {
                let n = (PRELUDE_LEN - self.buf.len()).min(chunk.len());
                let (head, rest) = chunk.split_at(n);
                self.buf.extend_from_slice(head);
                chunk = rest;
                if self.buf.len() < PRELUDE_LEN {
                    return Ok(());
                }
            }
            let total = match self.want {
                Some(t) => t,
                None => {
                    let t = check_prelude(&self.buf)?.0;
                    self.want = Some(t);
                    t
                }
            };
            let n = total.saturating_sub(self.buf.len()).min(chunk.len());
            let (head, rest) = chunk.split_at(n);
            self.buf.extend_from_slice(head);
            chunk = rest;
            if self.buf.len() < total {
                return Ok(());
            }
            on_message(decode_message(&self.buf)?);
            self.buf.clear();
            self.want = None;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        // 2. Whole frames straight from the chunk.
        while chunk.len() >= PRELUDE_LEN {
            let (total, _) = check_prelude(chunk)?;
            if chunk.len() < total {
                self.want = Some(total);
                break;
            }
            let (frame, rest) = chunk.split_at(total);
            on_message(decode_message(frame)?);
            chunk = rest;
        }
        // 3. Keep the start of the next frame (shorter than one frame).
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// True while part of a frame is buffered: a stream that ends now was cut mid-frame.
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes of the incomplete frame held.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The violation that stopped decoding, if any.
    pub fn error(&self) -> Option<Error> {
        self.error
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding (tests, the bench, golden data, degraded answers)

fn push_header(out: &mut Vec<u8>, name: &str, value: &HeaderValue<'_>) -> Result<(), Error> {
    let name_len = u8::try_from(name.len()).map_err(|_| Error::TooLong)?;
    out.push(name_len);
    out.extend_from_slice(name.as_bytes());
    out.push(value.wire_type());
    match *value {
        HeaderValue::Bool(_) => {}
        HeaderValue::Byte(v) => out.extend_from_slice(&v.to_be_bytes()),
        HeaderValue::Short(v) => out.extend_from_slice(&v.to_be_bytes()),
        HeaderValue::Int(v) => out.extend_from_slice(&v.to_be_bytes()),
        HeaderValue::Long(v) | HeaderValue::Timestamp(v) => out.extend_from_slice(&v.to_be_bytes()),
        HeaderValue::Bytes(v) => push_var(out, v)?,
        HeaderValue::String(v) => push_var(out, v.as_bytes())?,
        HeaderValue::Uuid(v) => out.extend_from_slice(&v),
    }
    Ok(())
}

fn push_var(out: &mut Vec<u8>, v: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(v.len()).map_err(|_| Error::TooLong)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
    Ok(())
}

/// Encodes one message with typed headers; `Err(TooLong)` for a header name over 255 bytes, a
/// variable-length value over 65535 bytes, a headers section over [`MAX_HEADERS_LEN`] or a frame
/// over [`MAX_MESSAGE_LEN`] (which the decoder would reject).
pub fn try_encode(headers: &[(&str, HeaderValue<'_>)], payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(PRELUDE_LEN + 64 * headers.len() + payload.len() + 4);
    out.extend_from_slice(&[0u8; PRELUDE_LEN]);
    for (name, value) in headers {
        push_header(&mut out, name, value)?;
    }
    let headers_len = out.len() - PRELUDE_LEN;
    let total = out.len() + payload.len() + 4;
    if headers_len > MAX_HEADERS_LEN || total > MAX_MESSAGE_LEN {
        return Err(Error::TooLong);
    }
    let (total, headers_len) = ((total as u32).to_be_bytes(), (headers_len as u32).to_be_bytes());
    let [t0, t1, t2, t3] = total;
    let [h0, h1, h2, h3] = headers_len;
    let prelude = [t0, t1, t2, t3, h0, h1, h2, h3];
    let [c0, c1, c2, c3] = crc32(&prelude).to_be_bytes();
    for (dst, src) in out.iter_mut().zip(prelude.into_iter().chain([c0, c1, c2, c3])) {
        *dst = src;
    }
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Encodes one message with string headers (for tests, the bench and the mock's golden data).
///
/// Never fails: inputs beyond the format's limits (see [`try_encode`]) are shortened to fit --
/// header names to 255 bytes, values to 65535 bytes (both at a UTF-8 boundary), the headers
/// section to whole headers within [`MAX_HEADERS_LEN`] and the payload to what fits in
/// [`MAX_MESSAGE_LEN`] -- so the result is always a frame [`Decoder`] accepts.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut typed: Vec<(&str, HeaderValue<'_>)> = Vec::with_capacity(headers.len());
    let mut headers_len = 0usize;
    for (name, value) in headers {
        let name = truncate_str(name, usize::from(u8::MAX));
        let value = truncate_str(value, usize::from(u16::MAX));
        let len = 1 + name.len() + 1 + 2 + value.len();
        if headers_len + len > MAX_HEADERS_LEN {
            break;
        }
        headers_len += len;
        typed.push((name, HeaderValue::String(value)));
    }
    let room = MAX_MESSAGE_LEN - MIN_MESSAGE_LEN - headers_len;
    let payload = payload.get(..payload.len().min(room)).unwrap_or_default();
    try_encode(&typed, payload).unwrap_or_default()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! References:
    //! - AWS, "Event stream encoding" (Amazon Transcribe developer guide),
    //!   <https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html>: prelude, CRC32
    //!   (gzip/zlib), 16 bytes of overhead, header layout.
    //! - Smithy, "Amazon Event Stream Specification"
    //!   (<https://smithy.io/2.0/aws/amazon-eventstream.html>): header value types 0..=9.
    //! - awslabs/aws-c-event-stream `event_stream.h`: 16 MiB message and 128 KiB headers limits.
    //! - Published frames: emblica/aws-event-stream-parser-rs README (a `content-type:
    //!   application/json` frame) and the Elixir `event_stream` package docs (a frame without
    //!   headers); both re-checked here against Python `zlib.crc32`.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    type Decoded = Vec<(Vec<(String, String)>, Vec<u8>)>;

    fn decode_all(chunks: &[&[u8]]) -> (Decoded, Result<(), Error>) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut result = Ok(());
        for c in chunks {
            result = d.feed(c, &mut |m| {
                let headers = m.headers().map(|h| (h.name.to_string(), format!("{:?}", h.value))).collect();
                out.push((headers, m.payload().to_vec()));
            });
            if result.is_err() {
                break;
            }
        }
        (out, result)
    }

    #[test]
    fn crc32_check_values() {
        // CRC-32/ISO-HDLC check value, and python3 -c "import zlib;print(hex(zlib.crc32(b'hello world')))".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"hello world"), 0x0d4a_1185);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32_update(crc32(b"12345"), b"6789"), 0xCBF4_3926);
        // Slicing-by-8 agrees with the bit-by-bit definition at every length and split.
        let bitwise = |bytes: &[u8]| {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        };
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(crc32(&data[..n]), bitwise(&data[..n]), "length {n}");
            assert_eq!(crc32_update(crc32(&data[..n / 3]), &data[n / 3..n]), bitwise(&data[..n]), "split {n}");
        }
    }

    /// Published frame (aws-event-stream-parser-rs README); its CRCs re-checked with
    /// python3 -c "import zlib; b=bytes.fromhex(...); print(hex(zlib.crc32(b[:8])), hex(zlib.crc32(b[:-4])))"
    /// -> 0x7fd8396 0x8d9c08b1.
    const PUBLISHED_JSON_FRAME: &str = "0000003d0000002007fd83960c636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e7b27666f6f273a27626172277d8d9c08b1";

    #[test]
    fn decodes_published_frame_and_encoder_reproduces_it() {
        let bytes = hex(PUBLISHED_JSON_FRAME);
        let m = decode_message(&bytes).unwrap();
        assert_eq!(m.header_str("content-type"), Some("application/json"));
        assert_eq!(m.payload(), b"{'foo':'bar'}");
        assert_eq!(encode(&[("content-type", "application/json")], b"{'foo':'bar'}"), bytes);
        // Elixir event_stream docs: no headers, payload {"foo": "bar"}.
        let no_headers = hex("0000001e00000000baf2f68a7b22666f6f223a2022626172227dae7258e4");
        assert_eq!(encode(&[], br#"{"foo": "bar"}"#), no_headers);
        assert_eq!(decode_message(&no_headers).unwrap().payload(), br#"{"foo": "bar"}"#);
    }

    /// Independent computation:
    /// ```text
    /// python3 -c "
    /// import zlib,struct
    /// def h(n,v): return bytes([len(n)])+n+b'\x07'+struct.pack('>H',len(v))+v
    /// hd=h(b':event-type',b'chunk')+h(b':content-type',b'application/json')+h(b':message-type',b'event')
    /// p=b'{\"bytes\":\"eyJ0eXBlIjoicGluZyJ9\"}'
    /// pre=struct.pack('>II',12+len(hd)+len(p)+4,len(hd)); m=pre+struct.pack('>I',zlib.crc32(pre))+hd+p
    /// print((m+struct.pack('>I',zlib.crc32(m))).hex())"
    /// ```
    const BEDROCK_PING_FRAME: &str =
        "0000007b0000004b0a2e96af0b3a6576656e742d747970650700056368756e6b0d3a636f6e74656e742d747970\
        650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b2262\
        79746573223a2265794a306558426c496a6f6963476c755a794a39227da01f56c4";

    #[test]
    fn encoder_matches_independent_python_computation() {
        let frame = encode(
            &[(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
            br#"{"bytes":"eyJ0eXBlIjoicGluZyJ9"}"#,
        );
        assert_eq!(frame, hex(BEDROCK_PING_FRAME));
        let m = decode_message(&frame).unwrap();
        assert_eq!(m.header_str(":event-type"), Some("chunk"));
        assert_eq!(m.header_str(":message-type"), Some("event"));
        assert_eq!(m.header(":nope"), None);
    }

    #[test]
    fn round_trip() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let frame = encode(&[("a", "1"), ("b", ""), ("ünï", "çødé")], &payload);
        let m = decode_message(&frame).unwrap();
        let hs: Vec<_> = m.headers().map(|h| (h.name, h.value.as_str().unwrap())).collect();
        assert_eq!(hs, [("a", "1"), ("b", ""), ("ünï", "çødé")]);
        assert_eq!(m.payload(), &payload[..]);
        let empty = encode(&[], b"");
        assert_eq!(empty.len(), MIN_MESSAGE_LEN);
        let m = decode_message(&empty).unwrap();
        assert_eq!(m.headers().count(), 0);
        assert!(m.payload().is_empty());
    }

    #[test]
    fn all_header_value_types() {
        let uuid = [0x12u8; 16];
        let headers = [
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("byte", HeaderValue::Byte(-2)),
            ("short", HeaderValue::Short(-300)),
            ("int", HeaderValue::Int(-70_000)),
            ("long", HeaderValue::Long(-5_000_000_000)),
            ("bytes", HeaderValue::Bytes(&[0, 1, 255])),
            ("string", HeaderValue::String("hé")),
            ("ts", HeaderValue::Timestamp(1_700_000_000_123)),
            ("uuid", HeaderValue::Uuid(uuid)),
        ];
        let frame = try_encode(&headers, b"x").unwrap();
        let m = decode_message(&frame).unwrap();
        let got: Vec<_> = m.headers().map(|h| (h.name, h.value)).collect();
        assert_eq!(got, headers);
        // Hand-written wire bytes for the fixed-size types (big-endian, two's complement).
        let raw = hex("0162 02fe  0173 03fed4  0169 04fffeee90  016c 05fffffffed5fa0e00  0174 080000018bcfe5687b");
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&((16 + raw.len()) as u32).to_be_bytes());
        prelude.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        let mut f = prelude.clone();
        f.extend_from_slice(&crc32(&prelude).to_be_bytes());
        f.extend_from_slice(&raw);
        let c = crc32(&f);
        f.extend_from_slice(&c.to_be_bytes());
        let m = decode_message(&f).unwrap();
        let got: Vec<_> = m.headers().map(|h| h.value).collect();
        assert_eq!(
            got,
            [
                HeaderValue::Byte(-2),
                HeaderValue::Short(-300),
                HeaderValue::Int(-70_000),
                HeaderValue::Long(-5_000_000_000),
                HeaderValue::Timestamp(1_700_000_000_123),
            ]
        );
    }

    fn three_frames() -> Vec<u8> {
        let mut s = encode(&[(":message-type", "event")], b"one");
        s.extend(encode(&[], b""));
        s.extend(encode(&[("k", "v")], &[7u8; 300]));
        s
    }

    #[test]
    fn split_at_every_boundary_and_all_in_one_chunk_agree() {
        let stream = three_frames();
        let (whole, r) = decode_all(&[&stream]);
        r.unwrap();
        assert_eq!(whole.len(), 3);
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            let (got, r) = decode_all(&[a, b]);
            r.unwrap();
            assert_eq!(got, whole, "split at {i}");
        }
        for i in 0..stream.len() {
            for j in [i + 1, i + 7, i + 13, i + 200] {
                let j = j.min(stream.len());
                let (got, r) = decode_all(&[&stream[..i], &stream[i..j], &stream[j..]]);
                r.unwrap();
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (got, r) = decode_all(&bytes);
        r.unwrap();
        assert_eq!(got, whole);
    }

    #[test]
    fn truncated_frame_waits_and_reports_mid_frame() {
        let stream = three_frames();
        let mut d = Decoder::new();
        let mut n = 0;
        d.feed(&stream[..stream.len() - 1], &mut |_| n += 1).unwrap();
        assert_eq!(n, 2);
        assert!(d.is_mid_frame());
        d.feed(&stream[stream.len() - 1..], &mut |_| n += 1).unwrap();
        assert_eq!(n, 3);
        assert!(!d.is_mid_frame());
        assert_eq!(d.buffered_len(), 0);
        // A lone prelude fragment is mid-frame too.
        d.feed(&stream[..5], &mut |_| n += 1).unwrap();
        assert!(d.is_mid_frame());
        assert_eq!(n, 3);
    }

    fn expect_error(bytes: &[u8]) -> Error {
        let (got, r) = decode_all(&[bytes]);
        assert!(got.is_empty());
        r.unwrap_err()
    }

    #[test]
    fn bad_prelude_crc() {
        let mut f = encode(&[("a", "b")], b"x");
        f[9] ^= 1;
        assert!(matches!(expect_error(&f), Error::PreludeCrc { .. }));
    }

    #[test]
    fn bad_message_crc_and_corrupt_payload() {
        let mut f = encode(&[("a", "b")], b"payload");
        let n = f.len();
        f[n - 1] ^= 0x80;
        assert!(matches!(expect_error(&f), Error::MessageCrc { .. }));
        let mut f = encode(&[("a", "b")], b"payload");
        f[n - 6] = b'X';
        assert!(matches!(expect_error(&f), Error::MessageCrc { .. }));
    }

    fn frame_with_prelude(total: u32, headers: u32) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&headers.to_be_bytes());
        let c = crc32(&p);
        p.extend_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn absurd_lengths_fail_at_the_prelude() {
        // Reported as soon as the 12-byte prelude is in, without waiting for (or buffering) more.
        assert_eq!(expect_error(&frame_with_prelude(u32::MAX, 0)), Error::MessageLength(u32::MAX));
        assert_eq!(expect_error(&frame_with_prelude(16 * 1024 * 1024 + 1, 0)), Error::MessageLength(16_777_217));
        assert_eq!(expect_error(&frame_with_prelude(15, 0)), Error::MessageLength(15));
        assert_eq!(expect_error(&frame_with_prelude(0, 0)), Error::MessageLength(0));
        assert_eq!(expect_error(&frame_with_prelude(100, 85)), Error::HeadersLength(85));
        assert_eq!(expect_error(&frame_with_prelude(1 << 20, 200_000)), Error::HeadersLength(200_000));
        // The largest legal frame is accepted as a prelude and waited for.
        let mut d = Decoder::new();
        d.feed(&frame_with_prelude(MAX_MESSAGE_LEN as u32, 0), &mut |_| {}).unwrap();
        assert!(d.is_mid_frame());
    }

    #[test]
    fn bad_headers() {
        // Unknown type 10.
        let mut raw = vec![1, b'x', 10];
        let build = |raw: &[u8]| {
            let mut f = frame_with_prelude(16 + raw.len() as u32, raw.len() as u32);
            f.extend_from_slice(raw);
            let c = crc32(&f);
            f.extend_from_slice(&c.to_be_bytes());
            f
        };
        assert_eq!(expect_error(&build(&raw)), Error::UnknownHeaderType(10));
        // String longer than the headers section.
        raw = vec![1, b'x', 7, 0, 9, b'a'];
        assert_eq!(expect_error(&build(&raw)), Error::HeaderTruncated);
        // Name not UTF-8.
        raw = vec![1, 0xff, 0];
        assert_eq!(expect_error(&build(&raw)), Error::HeaderNotUtf8);
        // Name length past the end.
        raw = vec![5, b'x'];
        assert_eq!(expect_error(&build(&raw)), Error::HeaderTruncated);
    }

    #[test]
    fn stops_after_an_error_and_keeps_earlier_frames() {
        let mut stream = encode(&[], b"good");
        let mut bad = encode(&[], b"bad");
        bad[0] ^= 0x40;
        stream.extend_from_slice(&bad);
        stream.extend(encode(&[], b"after"));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let r = d.feed(&stream, &mut |m| got.push(m.payload().to_vec()));
        assert!(matches!(r, Err(Error::PreludeCrc { .. })));
        assert_eq!(got, [b"good".to_vec()]);
        assert_eq!(d.error(), r.err());
        assert_eq!(d.feed(&encode(&[], b"later"), &mut |m| got.push(m.payload().to_vec())), r);
        assert_eq!(got.len(), 1);
        assert!(!d.is_mid_frame());
    }

    #[test]
    fn encoder_limits() {
        let long = "n".repeat(256);
        assert_eq!(try_encode(&[(&long, HeaderValue::Bool(true))], b""), Err(Error::TooLong));
        let big = vec![0u8; 70_000];
        assert_eq!(try_encode(&[("b", HeaderValue::Bytes(&big))], b""), Err(Error::TooLong));
        assert_eq!(try_encode(&[], &vec![0u8; MAX_MESSAGE_LEN]), Err(Error::TooLong));
        // encode() shortens instead, and the result still decodes.
        let f = encode(&[(&long, "é".repeat(40_000).as_str())], b"p");
        let m = decode_message(&f).unwrap();
        let h = m.headers().next().unwrap();
        assert_eq!(h.name.len(), 255);
        assert_eq!(h.value.as_str().unwrap().len(), 65534);
    }

    #[test]
    fn fuzz_random_and_mutated_input_never_panics() {
        // xorshift64*: deterministic pseudo-random bytes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let valid = three_frames();
        for round in 0..4000 {
            let len = (next() % 600) as usize;
            let mut input: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                // Valid frames with a few flipped bytes, so decoding gets past the prelude.
                let mut v = valid.clone();
                for _ in 0..(next() % 3) {
                    let i = (next() as usize) % v.len();
                    v[i] ^= next() as u8 | 1;
                }
                v
            };
            if round % 7 == 0 {
                // A prelude with valid CRCs but random lengths.
                let mut p = frame_with_prelude(next() as u32 % 2048, next() as u32 % 2048);
                p.append(&mut input);
                input = p;
            }
            let mut d = Decoder::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % 64).min(rest.len() - 1);
                let (a, b) = rest.split_at(n);
                let _ = d.feed(a, &mut |m| {
                    let _ = m.headers().count();
                    let _ = m.payload().len();
                });
                rest = b;
            }
            assert!(d.buffered_len() <= MAX_MESSAGE_LEN);
        }
    }
}

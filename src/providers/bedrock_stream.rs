//! Claude on AWS Bedrock, streaming (`invoke-with-response-stream`): the event-stream answer
//! turned into the Anthropic SSE events it carries (`chunk` events with base64 `bytes`), and its
//! exceptions (`throttlingException`, `modelStreamErrorException`, ...) into Anthropic `error`
//! events, so the client and the stream monitor see one format.
//!
//! Mapping (frames are decoded by [`crate::eventstream::Decoder`]):
//! - `:message-type: event`, `:event-type: chunk`, payload `{"bytes":"<base64>", ...}` (extra
//!   fields such as Bedrock's padding `"p"` are ignored): the decoded bytes are one Anthropic
//!   stream event JSON, emitted as `(its "type", the JSON)`. The JSON is passed through
//!   **unchanged**, including the `"amazon-bedrock-invocationMetrics"` object Bedrock adds to
//!   `message_stop` (Anthropic clients ignore unknown fields).
//! - `:message-type: exception` (`:exception-type`, payload `{"message":"..."}`) and
//!   `:message-type: error` (`:error-code`, `:error-message`): one Anthropic `error` event,
//!   see [`error_kind`]; its message is `"<exception type or code>: <message>"`.
//! - A framing violation (CRC, lengths, headers) or a chunk that is not base64 of a JSON object
//!   with a `type`: one `error` event `api_error` "malformed Bedrock event stream: <what>".
//! - Other event types and message types: ignored.
//!
//! After the first `error` event (whatever its source, including an Anthropic `error` event
//! inside a chunk) nothing more is emitted and the rest of the body is ignored:
//! [`BedrockStream::failed`] turns true.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::eventstream::{self, Decoder, Message};

/// Longest exception message kept in the `error` event (bytes, cut at a UTF-8 boundary).
pub const MAX_ERROR_MESSAGE: usize = 512;
/// Longest exception type / error code kept in the `error` event message.
const MAX_EXCEPTION_TYPE: usize = 128;
/// Base64 output capacity kept across events; larger buffers are released afterwards.
const KEEP_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct BedrockStream {
    decoder: Decoder,
    failed: bool,
    /// Decoded chunk bytes, reused across events.
    scratch: Vec<u8>,
    events: u64,
}

impl BedrockStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds raw event-stream bytes; calls `on_event(event_name, data_json)` for each Anthropic
    /// event, and `("error", {...})` for an exception or a malformed frame.
    pub fn feed(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&[u8], &[u8])) {
        if self.failed {
            return;
        }
        let Self { decoder, failed, scratch, events } = self;
        let result = decoder.feed(chunk, &mut |msg| {
            if *failed {
                return;
            }
            if let Flow::Stop = handle(msg, scratch, events, on_event) {
                *failed = true;
            }
        });
        if let Err(e) = result {
            if !*failed {
                *failed = true;
                *events += 1;
                on_event(b"error", &error_json("api_error", &format!("malformed Bedrock event stream: {e}")));
            }
        }
        if scratch.capacity() > KEEP_CAPACITY {
            *scratch = Vec::new();
        }
    }

    /// Like [`feed`](Self::feed), appending the events to `out` as Anthropic SSE
    /// (`event: <name>\ndata: <json>\n\n`, see [`write_sse`]).
    pub fn feed_sse(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.feed(chunk, &mut |name, data| write_sse(out, name, data));
    }

    /// True once an `error` event was emitted (exception, error message, malformed frame, or an
    /// Anthropic `error` event in a chunk); everything after it is ignored.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// True while part of a frame is buffered: if the body ends now, the stream was cut
    /// mid-frame (no event was emitted for that partial frame).
    pub fn is_mid_frame(&self) -> bool {
        !self.failed && self.decoder.is_mid_frame()
    }

    /// Number of events emitted so far (including a final `error`).
    pub fn events(&self) -> u64 {
        self.events
    }
}

enum Flow {
    Continue,
    Stop,
}

fn handle(msg: Message<'_>, scratch: &mut Vec<u8>, events: &mut u64, on_event: &mut dyn FnMut(&[u8], &[u8])) -> Flow {
    match msg.header_str(":message-type") {
        Some("event") => {
            if msg.header_str(":event-type") != Some("chunk") {
                return Flow::Continue;
            }
            *events += 1;
            let decoded = decode_chunk(msg.payload(), scratch).and_then(|()| event_type(scratch));
            match decoded {
                Ok(name) => {
                    on_event(name.as_bytes(), scratch);
                    if name == "error" {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
                Err(what) => {
                    on_event(b"error", &error_json("api_error", &format!("malformed Bedrock event stream: {what}")));
                    Flow::Stop
                }
            }
        }
        Some("exception") => {
            let exception = msg.header_str(":exception-type").unwrap_or("unknownException");
            let text = exception_message(msg.payload());
            *events += 1;
            on_event(b"error", &exception_error_json(exception, &text));
            Flow::Stop
        }
        Some("error") => {
            let code = msg.header_str(":error-code").unwrap_or("InternalError");
            let text = msg.header_str(":error-message").unwrap_or_default();
            *events += 1;
            on_event(b"error", &error_json("api_error", &join_message(code, text)));
            Flow::Stop
        }
        _ => Flow::Continue,
    }
}

#[derive(Deserialize)]
struct ChunkPayload<'a> {
    #[serde(borrow)]
    bytes: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventType<'a> {
    #[serde(borrow, rename = "type")]
    ty: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ExceptionPayload<'a> {
    #[serde(borrow, alias = "Message")]
    message: Option<Cow<'a, str>>,
}

/// Decodes a chunk payload into `scratch` (the Anthropic event JSON).
fn decode_chunk(payload: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    let chunk: ChunkPayload<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("chunk payload is not JSON ({e})"))?;
    let b64 = chunk.bytes.ok_or("chunk payload without \"bytes\"")?;
    scratch.clear();
    base64_decode(b64.as_bytes(), scratch).map_err(|_| "chunk \"bytes\" is not valid base64".to_string())
}

/// The `type` of a decoded Anthropic event (which must be a JSON object).
fn event_type(scratch: &[u8]) -> Result<Cow<'_, str>, String> {
    if scratch.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("decoded chunk is not a JSON object".into());
    }
    let event: EventType<'_> =
        serde_json::from_slice(scratch).map_err(|e| format!("decoded chunk is not JSON ({e})"))?;
    let name = event.ty.ok_or("decoded chunk has no \"type\"")?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !valid {
        return Err("decoded chunk has an invalid \"type\"".into());
    }
    Ok(name)
}

/// The `message` of an exception payload; the raw payload when it is not such JSON.
fn exception_message(payload: &[u8]) -> Cow<'_, str> {
    match serde_json::from_slice::<ExceptionPayload<'_>>(payload) {
        Ok(p) => p.message.unwrap_or_default(),
        Err(_) => {
            let head = payload.get(..payload.len().min(MAX_ERROR_MESSAGE + 4)).unwrap_or_default();
            match String::from_utf8_lossy(head) {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
            }
        }
    }
}

/// Anthropic error type for a Bedrock exception type (`:exception-type`, compared ignoring ASCII
/// case): throttling and unavailability are `overloaded_error` (retry elsewhere, like a 529),
/// `validationException` is the client's `invalid_request_error`, everything else
/// (`internalServerException`, `modelStreamErrorException`, `modelTimeoutException`, unknown) is
/// `api_error`.
pub fn error_kind(exception_type: &str) -> &'static str {
    let is = |s: &str| exception_type.eq_ignore_ascii_case(s);
    if is("throttlingException") || is("serviceUnavailableException") {
        "overloaded_error"
    } else if is("validationException") {
        "invalid_request_error"
    } else {
        "api_error"
    }
}

fn join_message(kind: &str, text: &str) -> String {
    let kind = eventstream::truncate_str(kind, MAX_EXCEPTION_TYPE);
    let text = eventstream::truncate_str(text, MAX_ERROR_MESSAGE);
    if text.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {text}")
    }
}

fn exception_error_json(exception_type: &str, text: &str) -> Vec<u8> {
    error_json(error_kind(exception_type), &join_message(exception_type, text))
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    message: &'a str,
}

/// `{"type":"error","error":{"type":<kind>,"message":<message>}}`, Anthropic's error event.
pub fn error_json(kind: &str, message: &str) -> Vec<u8> {
    let event = ErrorEvent { ty: "error", error: ErrorBody { ty: kind, message } };
    serde_json::to_vec(&event)
        .unwrap_or_else(|_| br#"{"type":"error","error":{"type":"api_error","message":"error"}}"#.to_vec())
}

/// Appends one SSE event. `data` lines are split on CR/LF into several `data:` fields (which SSE
/// joins back with `\n`), so even pretty-printed JSON stays one event with the same value.
pub fn write_sse(out: &mut Vec<u8>, event: &[u8], data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event);
    out.push(b'\n');
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                let (line, tail) = rest.split_at(i);
                out.extend_from_slice(line);
                out.push(b'\n');
                rest = match tail {
                    [b'\r', b'\n', more @ ..] => more,
                    [_, more @ ..] => more,
                    [] => &[],
                };
            }
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\n\n");
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Base64 (standard alphabet, RFC 4648 section 4)

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Each byte's 6-bit value in the standard alphabet; 0xFF for any other byte.
const B64_VALUES: [u8; 256] = b64_values();

// `i < 64` is the loop bound; no `get_mut` in a const fn on the crate's minimum Rust.
#[allow(clippy::indexing_slicing)]
const fn b64_values() -> [u8; 256] {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 64 {
        t[B64[i] as usize] = i as u8;
        i += 1;
    }
    t
}

fn b64_value(c: u8) -> Option<u32> {
    match B64_VALUES.get(usize::from(c)) {
        Some(&v) if v != 0xFF => Some(u32::from(v)),
        _ => None,
    }
}

/// Invalid base64 (bad character, misplaced padding or impossible length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base64Error;

/// Decodes standard base64, appending to `out`. Padding `=` is accepted (and may be omitted);
/// any other character, misplaced padding or an impossible length is an error.
pub fn base64_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), Base64Error> {
    let mut data = input;
    if data.len() % 4 == 0 {
        for _ in 0..2 {
            if let Some(d) = data.strip_suffix(b"=") {
                data = d;
            }
        }
    }
    if data.len() % 4 == 1 {
        return Err(Base64Error);
    }
    out.reserve(data.len() / 4 * 3 + 2);
    let mut groups = data.chunks_exact(4);
    // Whole groups are written in place: one table lookup per character, one check per group.
    let start = out.len();
    out.resize(start + groups.len() * 3, 0);
    let dst = out.get_mut(start..).unwrap_or_default();
    for (g, d) in (&mut groups).zip(dst.chunks_exact_mut(3)) {
        let (Ok(g), Ok(d)) = (<&[u8; 4]>::try_from(g), <&mut [u8; 3]>::try_from(d)) else { break };
        let v = |c: u8| B64_VALUES.get(usize::from(c)).copied().unwrap_or(0xFF);
        let (a, b, c, e) = (v(g[0]), v(g[1]), v(g[2]), v(g[3]));
        if (a | b | c | e) & 0x80 != 0 {
            out.truncate(start);
            return Err(Base64Error);
        }
        let n = (u32::from(a) << 18) | (u32::from(b) << 12) | (u32::from(c) << 6) | u32::from(e);
        *d = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    }
    let tail = groups.remainder();
    if !tail.is_empty() {
        let mut n = 0u32;
        for &c in tail {
            n = (n << 6) | b64_value(c).ok_or(Base64Error)?;
        }
        n <<= 6 * (4 - tail.len() as u32);
        out.push((n >> 16) as u8);
        if tail.len() == 3 {
            out.push((n >> 8) as u8);
        }
    }
    Ok(())
}

/// Encodes standard base64 with padding.
pub fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for g in input.chunks(3) {
        let b = |i: usize| u32::from(g.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= g.len() {
                let sextet = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(B64.get(sextet).copied().unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Encoders (tests, the bench, mocks)

/// The frame Bedrock sends for one Anthropic stream event: headers `:event-type: chunk`,
/// `:content-type: application/json`, `:message-type: event`; payload
/// `{"bytes":"<base64>","p":"abcdefghij"}`.
pub fn encode_chunk_event(anthropic_event_json: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(anthropic_event_json.len() * 4 / 3 + 32);
    payload.extend_from_slice(b"{\"bytes\":\"");
    payload.extend_from_slice(base64_encode(anthropic_event_json).as_bytes());
    payload.extend_from_slice(b"\",\"p\":\"abcdefghij\"}");
    eventstream::encode(
        &[(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
        &payload,
    )
}

/// A Bedrock exception frame: headers `:exception-type`, `:content-type: application/json`,
/// `:message-type: exception`; payload `{"message":"..."}`.
pub fn encode_exception(exception_type: &str, message: &str) -> Vec<u8> {
    let payload = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    eventstream::encode(
        &[(":exception-type", exception_type), (":content-type", "application/json"), (":message-type", "exception")],
        &payload,
    )
}

/// An event-stream `error` message (`:message-type: error`, `:error-code`, `:error-message`).
pub fn encode_error(code: &str, message: &str) -> Vec<u8> {
    eventstream::encode(&[(":message-type", "error"), (":error-code", code), (":error-message", message)], b"")
}

#[cfg(test)]
mod tests {
    //! References:
    //! - AWS, "Event stream encoding", <https://docs.aws.amazon.com/transcribe/latest/dg/event-stream.html>.
    //! - Amazon Bedrock API, InvokeModelWithResponseStream and ResponseStream (chunk/PayloadPart,
    //!   internalServerException, modelStreamErrorException, modelTimeoutException,
    //!   serviceUnavailableException, throttlingException, validationException),
    //!   <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModelWithResponseStream.html>.
    //! - Anthropic, "Claude on Amazon Bedrock", <https://docs.anthropic.com/en/api/claude-on-amazon-bedrock>,
    //!   and "Streaming Messages" for the event shapes.
    //! - Golden data: tests/golden/bedrock/*.bin and *.sse, produced by
    //!   tests/golden/bedrock/generate.py with Python's zlib/struct/base64/json only.
    use super::*;
    use crate::classify::StreamVerdict;
    use crate::providers::anthropic::StreamMonitor;

    const CLAUDE_BIN: &[u8] = include_bytes!("../../tests/golden/bedrock/claude_stream.bin");
    const CLAUDE_SSE: &[u8] = include_bytes!("../../tests/golden/bedrock/claude_stream.sse");
    const THROTTLED_BIN: &[u8] = include_bytes!("../../tests/golden/bedrock/throttled_midstream.bin");
    const THROTTLED_SSE: &[u8] = include_bytes!("../../tests/golden/bedrock/throttled_midstream.sse");

    fn collect(chunks: &[&[u8]]) -> (Vec<(String, String)>, BedrockStream) {
        let mut s = BedrockStream::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |name, data| {
                out.push((String::from_utf8(name.to_vec()).unwrap(), String::from_utf8(data.to_vec()).unwrap()))
            });
        }
        (out, s)
    }

    fn sse_of(events: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, d) in events {
            write_sse(&mut out, n.as_bytes(), d.as_bytes());
        }
        out
    }

    fn error_of(events: &[(String, String)]) -> serde_json::Value {
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, "error");
        serde_json::from_str(&events[0].1).unwrap()
    }

    #[test]
    fn golden_claude_stream_becomes_exact_anthropic_sse() {
        let (events, s) = collect(&[CLAUDE_BIN]);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(sse_of(&events), CLAUDE_SSE);
        assert!(events[7].1.contains("\"amazon-bedrock-invocationMetrics\":{\"inputTokenCount\":25"));
        assert!(!s.failed() && !s.is_mid_frame());
        assert_eq!(s.events(), 8);
        // The stream monitor sees a complete Anthropic stream with its usage.
        let mut sse = Vec::new();
        BedrockStream::new().feed_sse(CLAUDE_BIN, &mut sse);
        assert_eq!(sse, CLAUDE_SSE);
        let mut m = StreamMonitor::new();
        m.feed(&sse);
        assert_eq!(m.verdict(), StreamVerdict::Complete);
        assert_eq!(m.usage(), (Some(25), Some(15)));
    }

    #[test]
    fn encoders_reproduce_the_python_golden_bytes() {
        let mut bin = Vec::new();
        for block in CLAUDE_SSE.split(|&b| b == b'\n').filter(|l| l.starts_with(b"data: ")) {
            bin.extend(encode_chunk_event(&block[6..]));
        }
        assert_eq!(bin, CLAUDE_BIN);
        let msg = "Too many requests, please wait before trying again.";
        assert!(THROTTLED_BIN.ends_with(&encode_exception("throttlingException", msg)));
    }

    #[test]
    fn split_at_every_byte_and_all_at_once_agree() {
        let (whole, _) = collect(&[CLAUDE_BIN]);
        for i in 0..=CLAUDE_BIN.len() {
            let (a, b) = CLAUDE_BIN.split_at(i);
            let (got, s) = collect(&[a, b]);
            assert_eq!(got, whole, "split at {i}");
            assert!(!s.failed());
        }
        let bytes: Vec<&[u8]> = CLAUDE_BIN.chunks(1).collect();
        assert_eq!(collect(&bytes).0, whole);
        let (got, _) = collect(&[THROTTLED_BIN]);
        let mut sse = Vec::new();
        let mut s = BedrockStream::new();
        for c in THROTTLED_BIN.chunks(3) {
            s.feed_sse(c, &mut sse);
        }
        assert_eq!(sse, THROTTLED_SSE);
        assert_eq!(sse_of(&got), THROTTLED_SSE);
    }

    #[test]
    fn golden_throttled_stream_is_an_overloaded_error_for_the_monitor() {
        let mut s = BedrockStream::new();
        let mut sse = Vec::new();
        s.feed_sse(THROTTLED_BIN, &mut sse);
        assert!(s.failed());
        s.feed_sse(&encode_chunk_event(br#"{"type":"message_stop"}"#), &mut sse);
        assert_eq!(sse, THROTTLED_SSE, "nothing after the error");
        let mut m = StreamMonitor::new();
        m.feed(&sse);
        assert_eq!(m.verdict(), StreamVerdict::Error { overloaded: true });
    }

    #[test]
    fn each_exception_type_maps_as_specified() {
        for (exception, kind) in [
            ("throttlingException", "overloaded_error"),
            ("serviceUnavailableException", "overloaded_error"),
            ("internalServerException", "api_error"),
            ("modelStreamErrorException", "api_error"),
            ("modelTimeoutException", "api_error"),
            ("validationException", "invalid_request_error"),
            ("somethingNewException", "api_error"),
        ] {
            let (events, s) = collect(&[&encode_exception(exception, "it \"broke\"\n")]);
            let v = error_of(&events);
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], kind, "{exception}");
            assert_eq!(v["error"]["message"], format!("{exception}: it \"broke\"\n"));
            assert!(s.failed());
        }
        // Exact bytes, key order as Anthropic sends it.
        let (events, _) = collect(&[&encode_exception("modelStreamErrorException", "Model stream failed")]);
        assert_eq!(
            events[0].1,
            r#"{"type":"error","error":{"type":"api_error","message":"modelStreamErrorException: Model stream failed"}}"#
        );
    }

    #[test]
    fn error_message_type_is_api_error() {
        let (events, s) = collect(&[&encode_error("InternalFailure", "boom")]);
        let v = error_of(&events);
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["message"], "InternalFailure: boom");
        assert!(s.failed());
    }

    #[test]
    fn long_exception_message_is_truncated_to_valid_utf8_json() {
        let long = "é".repeat(1000); // 2000 bytes
        let (events, _) = collect(&[&encode_exception("throttlingException", &long)]);
        let v = error_of(&events);
        let m = v["error"]["message"].as_str().unwrap();
        let text = m.strip_prefix("throttlingException: ").unwrap();
        assert_eq!(text.len(), 512);
        assert!(text.chars().all(|c| c == 'é'));
        // Not-JSON exception payload: the raw text is used.
        let f = eventstream::encode(
            &[(":message-type", "exception"), (":exception-type", "validationException")],
            b"bad input",
        );
        let v = error_of(&collect(&[&f]).0);
        assert_eq!(v["error"]["message"], "validationException: bad input");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    fn assert_malformed(stream: &[u8], what: &str) {
        let mut expected = None;
        for split in [stream.len(), 1, stream.len() / 2] {
            let (a, b) = stream.split_at(split);
            let (mut events, s) = collect(&[a, b]);
            // Only events before the bad frame, then exactly one error.
            let last = events.pop().unwrap();
            assert!(events.iter().all(|(n, _)| n != "error"));
            assert_eq!(last.0, "error");
            let v: serde_json::Value = serde_json::from_str(&last.1).unwrap();
            assert_eq!(v["error"]["type"], "api_error");
            let m = v["error"]["message"].as_str().unwrap().to_string();
            assert!(m.starts_with("malformed Bedrock event stream: "), "{m}");
            assert!(m.contains(what), "{m} does not mention {what}");
            assert!(s.failed());
            if let Some(e) = &expected {
                assert_eq!(&events, e);
            }
            expected = Some(events);
        }
        // Data after the error is ignored.
        let mut s = BedrockStream::new();
        let mut n = 0;
        s.feed(stream, &mut |_, _| n += 1);
        s.feed(&encode_chunk_event(br#"{"type":"message_stop"}"#), &mut |_, _| n += 1000);
        assert!(n < 1000);
    }

    fn ok_then(bad: &[u8]) -> Vec<u8> {
        let mut v = encode_chunk_event(br#"{"type":"ping"}"#);
        v.extend_from_slice(bad);
        v.extend(encode_chunk_event(br#"{"type":"message_stop"}"#));
        v
    }

    #[test]
    fn bad_prelude_crc() {
        let mut f = encode_chunk_event(br#"{"type":"ping"}"#);
        f[10] ^= 0xff;
        assert_malformed(&ok_then(&f), "prelude CRC");
    }

    #[test]
    fn bad_message_crc() {
        let mut f = encode_chunk_event(br#"{"type":"ping"}"#);
        let n = f.len();
        f[n - 8] ^= 0x01;
        assert_malformed(&ok_then(&f), "message CRC");
    }

    #[test]
    fn absurd_length() {
        let mut p = Vec::new();
        p.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        let c = eventstream::crc32(&p);
        p.extend_from_slice(&c.to_be_bytes());
        assert_malformed(&ok_then(&p), "message length");
    }

    #[test]
    fn bad_base64() {
        let f = eventstream::encode(
            &[(":message-type", "event"), (":event-type", "chunk")],
            br#"{"bytes":"eyJ0eXBlIjoicGluZyJ9!!","p":"x"}"#,
        );
        assert_malformed(&ok_then(&f), "base64");
    }

    #[test]
    fn non_json_payload_and_non_json_decoded_event() {
        let f = eventstream::encode(&[(":message-type", "event"), (":event-type", "chunk")], b"not json");
        assert_malformed(&ok_then(&f), "not JSON");
        let f = eventstream::encode(
            &[(":message-type", "event"), (":event-type", "chunk")],
            format!(r#"{{"bytes":"{}"}}"#, base64_encode(b"{\"type\":\"ping\"")).as_bytes(),
        );
        assert_malformed(&ok_then(&f), "not JSON");
        let f = encode_chunk_event(b"[\"message_stop\"]");
        assert_malformed(&ok_then(&f), "not a JSON object");
        let f = encode_chunk_event(br#"{"type":"bad\nname"}"#);
        assert_malformed(&ok_then(&f), "invalid");
        let f = encode_chunk_event(br#"{"index":0}"#);
        assert_malformed(&ok_then(&f), "no \"type\"");
    }

    #[test]
    fn truncated_frame_emits_nothing_and_is_mid_frame() {
        let (events, s) = collect(&[&CLAUDE_BIN[..CLAUDE_BIN.len() - 3]]);
        assert_eq!(events.len(), 7);
        assert!(s.is_mid_frame());
        assert!(!s.failed());
        let (events, s) = collect(&[&CLAUDE_BIN[..5]]);
        assert!(events.is_empty());
        assert!(s.is_mid_frame());
    }

    #[test]
    fn other_events_and_message_types_are_ignored_and_padding_json_escapes_work() {
        let mut v = eventstream::encode(&[(":message-type", "event"), (":event-type", "metadata")], b"{}");
        v.extend(eventstream::encode(&[(":message-type", "pong")], b""));
        v.extend(eventstream::encode(&[], b"no headers"));
        // `\/` escape inside the base64 string and an extra field before `bytes`.
        let b64 = base64_encode(br#"{"type":"content_block_delta","delta":{"text":"???>>>"}}"#).replace('/', "\\/");
        assert!(b64.contains("\\/"));
        v.extend(eventstream::encode(
            &[(":message-type", "event"), (":event-type", "chunk")],
            format!(r#"{{"p":"xyz","bytes":"{b64}"}}"#).as_bytes(),
        ));
        let (events, s) = collect(&[&v]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "content_block_delta");
        assert_eq!(events[0].1, r#"{"type":"content_block_delta","delta":{"text":"???>>>"}}"#);
        assert!(!s.failed());
    }

    #[test]
    fn anthropic_error_inside_a_chunk_is_forwarded_and_stops() {
        let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let mut v = encode_chunk_event(err);
        v.extend(encode_chunk_event(br#"{"type":"message_stop"}"#));
        let (events, s) = collect(&[&v]);
        assert_eq!(events, [("error".to_string(), String::from_utf8(err.to_vec()).unwrap())]);
        assert!(s.failed());
    }

    #[test]
    fn base64_round_trip_and_rejects() {
        for (plain, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "+/+/"),
        ] {
            assert_eq!(base64_encode(plain), enc);
            let mut out = Vec::new();
            base64_decode(enc.as_bytes(), &mut out).unwrap();
            assert_eq!(out, plain);
            let mut out = Vec::new();
            base64_decode(enc.trim_end_matches('=').as_bytes(), &mut out).unwrap();
            assert_eq!(out, plain);
        }
        for bad in ["Z", "Zg=", "Z===", "Zg==Zg==", "Zm9v\n", "Zm-v", "=Zm9", "Zm9v===="] {
            assert!(base64_decode(bad.as_bytes(), &mut Vec::new()).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_sse_splits_multiline_data() {
        let mut out = Vec::new();
        write_sse(&mut out, b"x", b"{\n \"a\": 1\r\n}");
        assert_eq!(out, b"event: x\ndata: {\ndata:  \"a\": 1\ndata: }\n\n");
        let mut m = StreamMonitor::new();
        let mut sse = Vec::new();
        write_sse(&mut sse, b"message_start", b"{\"type\":\"message_start\",\n\"message\":{}}");
        write_sse(&mut sse, b"message_stop", b"{\"type\":\"message_stop\"}");
        m.feed(&sse);
        assert_eq!(m.verdict(), StreamVerdict::Complete);
    }

    #[test]
    fn fuzz_random_and_mutated_streams_never_panic() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        for round in 0..3000 {
            let input: Vec<u8> = if round % 3 == 0 {
                (0..(next() % 400)).map(|_| next() as u8).collect()
            } else {
                let mut v = CLAUDE_BIN.to_vec();
                for _ in 0..(1 + next() % 3) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                if round % 3 == 2 {
                    // Valid frames carrying random or mutated payloads, so the chunk path runs.
                    let mut payload =
                        format!(r#"{{"bytes":"{}"}}"#, base64_encode(&v[..(next() as usize % 200)])).into_bytes();
                    if !payload.is_empty() {
                        let i = next() as usize % payload.len();
                        payload[i] = next() as u8;
                    }
                    v = eventstream::encode(&[(":message-type", "event"), (":event-type", "chunk")], &payload);
                }
                v
            };
            let mut s = BedrockStream::new();
            let mut errors = 0;
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % 97).min(rest.len() - 1);
                let (a, b) = rest.split_at(n);
                s.feed(a, &mut |name, data| {
                    if name == b"error" {
                        errors += 1;
                    }
                    assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
                });
                rest = b;
            }
            assert!(errors <= 1);
        }
    }
}

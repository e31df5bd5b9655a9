//! What an answer must become for the client: the host's stream or JSON turned into the
//! client's format, and watched on the way.
//!
//! [`StreamPipeline`] takes the host's stream chunk by chunk (SSE, or Bedrock's binary
//! event-stream), hands every event to the host format's monitor (is the stream complete, did it
//! fail, how many tokens) and, when the client speaks another format, to a translator whose output
//! replaces the chunk. Nothing is held back beyond an unfinished event, so the client sees each
//! event as soon as the host sends it.
//!
//! [`translate_json`] rewrites a whole non-streaming body (an answer, or an error the client gets)
//! when the formats differ, and turns Bedrock's and Vertex's own error shapes into Anthropic ones.

use crate::classify::StreamVerdict;
use crate::config::{Api, ClientApi};
use crate::providers::bedrock;
use crate::providers::bedrock_stream::{self, BedrockStream};
use crate::providers::StreamMonitor;
use crate::sse::SseParser;
use crate::translate::response;
use crate::translate::stream::{AnthropicToOpenAi, OpenAiToAnthropic};
use serde_json::Value;

/// Does the answer of a host of `api` to a client of `client` need rewriting at all?
pub fn rewrites(api: Api, client: ClientApi) -> bool {
    api == Api::Bedrock || api == Api::Vertex || api.format() != client
}

#[derive(Debug)]
enum Translator {
    /// The client reads the host's bytes as they are.
    None,
    /// Anthropic events written back as Anthropic SSE (Bedrock's decoded event-stream).
    AnthropicSse,
    AnthropicToOpenAi(AnthropicToOpenAi),
    OpenAiToAnthropic(OpenAiToAnthropic),
}

/// A streamed answer on its way from a host to the client.
#[derive(Debug)]
pub struct StreamPipeline {
    parser: SseParser,
    bedrock: Option<BedrockStream>,
    monitor: StreamMonitor,
    translator: Translator,
    client: ClientApi,
    out: Vec<u8>,
    ended: bool,
    /// Kept for a continuation (see [`StreamPipeline::keep_for_continuation`]).
    kept: Option<Kept>,
}

/// What a pipeline kept for a continuation: the client-format bytes the client got.
#[derive(Debug, Default)]
struct Kept {
    sent: Vec<u8>,
    limit: usize,
    /// More than `limit` bytes went by: the answer is not kept any more.
    over: bool,
    /// The previous chunk ended on an event boundary (a raw chunk can then pass as it is).
    aligned: bool,
    /// The stream broke after its first content: what the client would have got at the break
    /// (an error event in its format), held back for the continuation to decide.
    cut: Option<Vec<u8>>,
}

impl StreamPipeline {
    /// `event_stream`: the host answered `application/vnd.amazon.eventstream` (Bedrock).
    /// `created_s` and `id_suffix` seed the ids of translated chunks.
    pub fn new(
        api: Api,
        event_stream: bool,
        client: ClientApi,
        include_usage: bool,
        created_s: u64,
        id_suffix: u64,
    ) -> Self {
        let host = api.format();
        let bedrock = event_stream.then(BedrockStream::new);
        let translator = match (host, client) {
            (ClientApi::Anthropic, ClientApi::OpenAi) => {
                Translator::AnthropicToOpenAi(AnthropicToOpenAi::new(created_s, include_usage))
            }
            (ClientApi::OpenAi, ClientApi::Anthropic) => {
                Translator::OpenAiToAnthropic(OpenAiToAnthropic::new(id_suffix))
            }
            _ if event_stream => Translator::AnthropicSse,
            _ => Translator::None,
        };
        StreamPipeline {
            parser: SseParser::new(),
            bedrock,
            monitor: StreamMonitor::new(host),
            translator,
            client,
            out: Vec::new(),
            ended: false,
            kept: None,
        }
    }

    /// Keeps what the client gets (up to `limit` bytes) so that a stream that breaks after its
    /// first content can be continued by another provider: from now on the client gets
    /// complete events only (an unfinished one waits for its end), and at a break (an error
    /// event or frame, or an end before the terminal event) nothing more is sent: the error
    /// the client would have got is held ([`StreamPipeline::cut`]).
    pub fn keep_for_continuation(&mut self, limit: usize) {
        self.kept = Some(Kept { limit, aligned: true, ..Kept::default() });
    }

    /// The stream broke after its first content and was kept: the client-format bytes the
    /// client got (None when more than the limit went by) and the error event held back.
    pub fn cut(&self) -> Option<(Option<&[u8]>, &[u8])> {
        let k = self.kept.as_ref()?;
        let tail = k.cut.as_deref()?;
        Some(((!k.over).then_some(k.sent.as_slice()), tail))
    }

    /// True when the client gets other bytes than the host sent.
    pub fn rewrites(&self) -> bool {
        !matches!(self.translator, Translator::None)
    }

    /// Feeds one chunk of the host's body (`end`: the last one). Returns the bytes to send
    /// instead of it when the pipeline rewrites (possibly empty while an event is unfinished),
    /// or when a stream that ends before its terminal event needs an error event at its end:
    /// every stream, rewritten or not, ends for the client either complete or with a
    /// well-formed error event in its format, so its SDK raises instead of returning a silently
    /// partial answer as if it were complete.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Option<&[u8]> {
        if self.kept.is_some() {
            return self.feed_kept(chunk, end);
        }
        self.out.clear();
        self.feed_events(chunk);
        let mut appended = false;
        if end && !self.ended {
            self.ended = true;
            let truncated = self.verdict() == StreamVerdict::Truncated;
            let StreamPipeline { translator, out, client, .. } = self;
            match translator {
                Translator::None => {
                    if truncated {
                        out.extend_from_slice(chunk);
                        write_truncation_error(*client, out);
                        appended = true;
                    }
                }
                Translator::AnthropicSse => {
                    if truncated {
                        write_truncation_error(ClientApi::Anthropic, out);
                    }
                }
                Translator::AnthropicToOpenAi(t) => t.finish(out),
                Translator::OpenAiToAnthropic(t) => t.finish(out),
            }
        }
        (self.rewrites() || appended).then_some(self.out.as_slice())
    }

    /// [`StreamPipeline::feed`] of a kept stream: every event written out whole (as it came, or
    /// translated), what follows a break held back.
    fn feed_kept(&mut self, chunk: &[u8], end: bool) -> Option<&[u8]> {
        self.out.clear();
        if self.kept.as_ref().is_some_and(|k| k.cut.is_some()) {
            return Some(&self.out);
        }
        let StreamPipeline { parser, bedrock, monitor, translator, out, kept, client, .. } = self;
        let Some(kept) = kept.as_mut() else { return Some(&self.out) };
        let passthrough = matches!(translator, Translator::None);
        let mut on_event = |event: &[u8], data: &[u8]| {
            if kept.cut.is_some() {
                return;
            }
            let had_content = monitor.content_started();
            let mark = out.len();
            monitor.on_event(event, data);
            match translator {
                Translator::None => {
                    if event == b"message" {
                        write_data_lines(out, data);
                    } else {
                        bedrock_stream::write_sse(out, event, data);
                    }
                }
                Translator::AnthropicSse => bedrock_stream::write_sse(out, event, data),
                Translator::AnthropicToOpenAi(t) => t.on_event(event, data, out),
                Translator::OpenAiToAnthropic(t) => t.on_data(data, out),
            }
            if had_content && matches!(monitor.verdict(false), StreamVerdict::Error { .. }) {
                kept.cut = Some(out.split_off(mark));
            }
        };
        match bedrock {
            Some(b) => b.feed(chunk, &mut on_event),
            None => parser.feed(chunk, &mut on_event),
        }
        if end && !self.ended && kept.cut.is_none() {
            self.ended = true;
            let truncated = match self.monitor.verdict(true) {
                StreamVerdict::Complete => self.parser.overflowed(),
                v => v == StreamVerdict::Truncated,
            };
            let mark = self.out.len();
            match &mut self.translator {
                Translator::None | Translator::AnthropicSse => {
                    if truncated {
                        write_truncation_error(*client, &mut self.out);
                    }
                }
                Translator::AnthropicToOpenAi(t) => t.finish(&mut self.out),
                Translator::OpenAiToAnthropic(t) => t.finish(&mut self.out),
            }
            if truncated && self.monitor.content_started() {
                kept.cut = Some(self.out.split_off(mark));
            }
        }
        if kept.cut.is_none()
            && self.bedrock.as_ref().is_some_and(BedrockStream::failed)
            && self.monitor.content_started()
        {
            let mut tail = Vec::new();
            write_truncation_error(*client, &mut tail);
            kept.cut = Some(tail);
        }
        if !kept.over {
            if kept.sent.len() + self.out.len() > kept.limit {
                kept.over = true;
                kept.sent = Vec::new();
            } else {
                kept.sent.extend_from_slice(&self.out);
            }
        }
        // A raw chunk made of whole events, with nothing held back, passes as it came.
        let aligned_now = self.parser.at_boundary();
        let raw = passthrough && kept.aligned && aligned_now && kept.cut.is_none() && self.bedrock.is_none();
        kept.aligned = aligned_now;
        if raw {
            return None;
        }
        Some(&self.out)
    }

    /// Has the answer's content begun (a text or tool delta, or the answer's end)?
    pub fn content_started(&self) -> bool {
        self.monitor.content_started()
    }

    /// Has the host's terminal event arrived? From then on the answer is complete for the
    /// client, whatever happens to the rest of the body.
    pub fn terminal_seen(&self) -> bool {
        self.monitor.terminal_seen() && !self.parser.overflowed()
    }

    /// Did the host's stream fail (an error event, or bytes that are not its stream)?
    pub fn failed(&self) -> bool {
        matches!(self.verdict(), StreamVerdict::Error { .. })
            || self.bedrock.as_ref().is_some_and(BedrockStream::failed)
    }

    fn feed_events(&mut self, chunk: &[u8]) {
        let StreamPipeline { parser, bedrock, monitor, translator, out, .. } = self;
        let mut on_event = |event: &[u8], data: &[u8]| {
            monitor.on_event(event, data);
            match translator {
                Translator::None => {}
                Translator::AnthropicSse => bedrock_stream::write_sse(out, event, data),
                Translator::AnthropicToOpenAi(t) => t.on_event(event, data, out),
                Translator::OpenAiToAnthropic(t) => t.on_data(data, out),
            }
        };
        match bedrock {
            Some(b) => b.feed(chunk, &mut on_event),
            None => parser.feed(chunk, &mut on_event),
        }
    }

    /// How the stream ended (final once the body has ended).
    pub fn verdict(&self) -> StreamVerdict {
        match self.monitor.verdict(self.ended) {
            StreamVerdict::Complete if self.parser.overflowed() => StreamVerdict::Truncated,
            v => v,
        }
    }

    /// (input tokens, output tokens) the host reported.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        self.monitor.usage()
    }
}

/// One SSE event without a name, its data on as many `data:` lines as it has lines.
fn write_data_lines(out: &mut Vec<u8>, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The error event that ends a stream cut before its terminal event, in the client's format.
pub fn write_truncation_error(client: ClientApi, out: &mut Vec<u8>) {
    const MESSAGE: &str = "llm-failover: the provider's stream ended before the answer was complete";
    match client {
        ClientApi::Anthropic => {
            bedrock_stream::write_sse(out, b"error", &response::anthropic_error_body("api_error", MESSAGE))
        }
        ClientApi::OpenAi => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&response::openai_error_body("api_error", 502, MESSAGE));
            out.extend_from_slice(b"\n\n");
        }
    }
}

/// Rewrites a whole JSON body from a host of `api` (HTTP `status`) for a client of `client`.
/// None when the body goes through unchanged.
pub fn translate_json(api: Api, client: ClientApi, status: u16, body: &[u8], created_s: u64) -> Option<Vec<u8>> {
    let success = (200..300).contains(&status);
    // First, errors in the host's own dialect become errors of its format.
    let normalized = match api {
        _ if success => None,
        Api::Bedrock => Some(bedrock::error_to_anthropic(status, body)),
        Api::Vertex if !is_anthropic_error(body) => Some(google_error_to_anthropic(status, body)),
        _ => None,
    };
    let body = normalized.as_deref().unwrap_or(body);
    let translated = match (api.format(), client, success) {
        (ClientApi::Anthropic, ClientApi::OpenAi, true) => response::anthropic_to_openai(body, created_s),
        (ClientApi::OpenAi, ClientApi::Anthropic, true) => response::openai_to_anthropic(body),
        (ClientApi::Anthropic, ClientApi::OpenAi, false) => Some(response::anthropic_error_to_openai(status, body)),
        (ClientApi::OpenAi, ClientApi::Anthropic, false) => Some(response::openai_error_to_anthropic(status, body)),
        _ => None,
    };
    translated.or(normalized)
}

fn is_anthropic_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("type").and_then(Value::as_str) == Some("error"))
}

/// A Google API error (`{"error":{"code","message","status"}}`, sometimes inside an array) as
/// an Anthropic error.
fn google_error_to_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error").or_else(|| v.get(0).and_then(|x| x.get("error")));
    let message = e
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("Vertex AI answered HTTP {status}"), str::to_string);
    response::anthropic_error_body(response::anthropic_type_for_status(status), &message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream;
    use serde_json::json;

    const ANTHROPIC_EVENTS: [&str; 6] = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-6","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":5}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":5}}"#,
    ];

    fn bedrock_stream_bytes() -> Vec<u8> {
        let mut bytes = Vec::new();
        for e in ANTHROPIC_EVENTS {
            bytes.extend(crate::providers::bedrock_stream::encode_chunk_event(e.as_bytes()));
        }
        bytes
    }

    fn run(p: &mut StreamPipeline, bytes: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let n = bytes.chunks(piece).count();
        for (i, c) in bytes.chunks(piece).enumerate() {
            if let Some(o) = p.feed(c, i + 1 == n) {
                out.extend_from_slice(o);
            }
        }
        out
    }

    #[test]
    fn bedrock_event_stream_becomes_anthropic_sse_at_any_split() {
        let bytes = bedrock_stream_bytes();
        let whole =
            run(&mut StreamPipeline::new(Api::Bedrock, true, ClientApi::Anthropic, false, 0, 0), &bytes, bytes.len());
        for piece in [1, 3, 7, 64] {
            let mut p = StreamPipeline::new(Api::Bedrock, true, ClientApi::Anthropic, false, 0, 0);
            assert_eq!(run(&mut p, &bytes, piece), whole, "piece {piece}");
            assert_eq!(p.verdict(), StreamVerdict::Complete);
            assert_eq!(p.usage(), (Some(12), Some(5)));
        }
        let text = String::from_utf8(whole).unwrap();
        assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
        assert_eq!(text.matches("\n\n").count(), 6);
        // The client's own monitor agrees the stream is complete.
        let mut m = crate::providers::anthropic::StreamMonitor::new();
        m.feed(text.as_bytes());
        assert_eq!(m.verdict(), StreamVerdict::Complete);
    }

    #[test]
    fn bedrock_cut_mid_frame_is_truncated_and_exceptions_are_errors() {
        let bytes = bedrock_stream_bytes();
        let mut p = StreamPipeline::new(Api::Bedrock, true, ClientApi::Anthropic, false, 0, 0);
        let out = String::from_utf8(run(&mut p, &bytes[..bytes.len() - 10], 5)).unwrap();
        assert_eq!(p.verdict(), StreamVerdict::Truncated);
        // The client sees the cut as an error event, never as a complete stream.
        assert!(out.ends_with("\n\n") && out.contains("event: error\n"), "{out}");
        assert!(!out.contains("event: message_stop"));
        let mut bytes = crate::providers::bedrock_stream::encode_chunk_event(ANTHROPIC_EVENTS[0].as_bytes());
        bytes.extend(crate::providers::bedrock_stream::encode_exception("throttlingException", "slow down"));
        let mut p = StreamPipeline::new(Api::Bedrock, true, ClientApi::Anthropic, false, 0, 0);
        let out = String::from_utf8(run(&mut p, &bytes, 9)).unwrap();
        assert!(matches!(p.verdict(), StreamVerdict::Error { .. }), "{out}");
        assert!(out.contains("event: error\n"), "{out}");
        let _ = eventstream::encode(&[], b"");
    }

    #[test]
    fn same_format_streams_pass_through_and_are_watched() {
        let sse: String = ANTHROPIC_EVENTS
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                format!("event: {}\ndata: {e}\n\n", v["type"].as_str().unwrap())
            })
            .collect();
        let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::Anthropic, false, 0, 0);
        assert!(p.feed(sse.as_bytes(), true).is_none());
        assert_eq!(p.verdict(), StreamVerdict::Complete);
        // Vertex streams are Anthropic SSE: watched, not rewritten.
        let mut p = StreamPipeline::new(Api::Vertex, false, ClientApi::Anthropic, false, 0, 0);
        assert!(p.feed(sse.as_bytes(), true).is_none());
        assert_eq!(p.verdict(), StreamVerdict::Complete);
    }

    fn sse_of(events: &[&str]) -> String {
        events
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                format!("event: {}\ndata: {e}\n\n", v["type"].as_str().unwrap())
            })
            .collect()
    }

    const ERROR: &str = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;

    #[test]
    fn a_kept_stream_passes_whole_events_and_holds_back_its_break() {
        let good = sse_of(&ANTHROPIC_EVENTS[..3]);
        let bytes = format!("{good}{}", sse_of(&[ERROR]));
        for piece in [1, 5, 17, bytes.len()] {
            let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::Anthropic, false, 0, 0);
            p.keep_for_continuation(1 << 20);
            let out = String::from_utf8(run(&mut p, bytes.as_bytes(), piece)).unwrap();
            assert_eq!(out, good, "piece {piece}: whole events only, the error held back");
            let (sent, tail) = p.cut().expect("a break after content");
            assert_eq!(sent.unwrap(), good.as_bytes());
            assert!(String::from_utf8_lossy(tail).starts_with("event: error\n"));
        }
        // Aligned chunks pass as they came (no rewrite).
        let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::Anthropic, false, 0, 0);
        p.keep_for_continuation(1 << 20);
        assert_eq!(p.feed(good.as_bytes(), false), None);
        assert!(p.cut().is_none());
        // An end before the terminal event is a break too; a complete stream is not.
        let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::Anthropic, false, 0, 0);
        p.keep_for_continuation(1 << 20);
        p.feed(good.as_bytes(), false);
        assert_eq!(p.feed(b"", true).unwrap(), b"");
        assert!(p.cut().is_some());
        let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::Anthropic, false, 0, 0);
        p.keep_for_continuation(1 << 20);
        let all = sse_of(&ANTHROPIC_EVENTS);
        assert_eq!(p.feed(all.as_bytes(), true), None);
        assert!(p.cut().is_none());
        // Past the limit the stream is not kept (the break still holds back the error).
        let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::Anthropic, false, 0, 0);
        p.keep_for_continuation(10);
        p.feed(bytes.as_bytes(), true);
        assert_eq!(p.cut().map(|(s, _)| s.is_none()), Some(true));
    }

    #[test]
    fn a_kept_translated_stream_breaks_in_the_clients_format() {
        let bytes = format!("{}{}", sse_of(&ANTHROPIC_EVENTS[..3]), sse_of(&[ERROR]));
        let mut p = StreamPipeline::new(Api::Anthropic, false, ClientApi::OpenAi, false, 0, 0);
        p.keep_for_continuation(1 << 20);
        let out = String::from_utf8(run(&mut p, bytes.as_bytes(), 7)).unwrap();
        assert!(out.contains("\"content\":\"Hello\""), "{out}");
        assert!(!out.contains("error"), "{out}");
        let (_, tail) = p.cut().unwrap();
        assert!(String::from_utf8_lossy(tail).contains("\"error\""));
        // A Bedrock exception frame after content.
        let mut b = Vec::new();
        for e in &ANTHROPIC_EVENTS[..3] {
            b.extend(crate::providers::bedrock_stream::encode_chunk_event(e.as_bytes()));
        }
        b.extend(crate::providers::bedrock_stream::encode_exception("throttlingException", "slow down"));
        let mut p = StreamPipeline::new(Api::Bedrock, true, ClientApi::Anthropic, false, 0, 0);
        p.keep_for_continuation(1 << 20);
        let out = String::from_utf8(run(&mut p, &b, 11)).unwrap();
        assert!(out.contains("Hello") && !out.contains("event: error"), "{out}");
        assert!(p.cut().is_some());
    }

    #[test]
    fn host_errors_become_anthropic_errors() {
        let b = translate_json(Api::Bedrock, ClientApi::Anthropic, 400, br#"{"message":"bad"}"#, 0).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let g = br#"{"error":{"code":404,"message":"Publisher Model not found","status":"NOT_FOUND"}}"#;
        let v: Value =
            serde_json::from_slice(&translate_json(Api::Vertex, ClientApi::Anthropic, 404, g, 0).unwrap()).unwrap();
        assert_eq!(v["error"], json!({"type": "not_found_error", "message": "Publisher Model not found"}));
        // Anthropic-shaped errors from Vertex, and successes from Anthropic-format hosts, pass.
        let a = br#"{"type":"error","error":{"type":"invalid_request_error","message":"x"}}"#;
        assert_eq!(translate_json(Api::Vertex, ClientApi::Anthropic, 400, a, 0), None);
        assert_eq!(translate_json(Api::Bedrock, ClientApi::Anthropic, 200, b"{}", 0), None);
        assert_eq!(translate_json(Api::Anthropic, ClientApi::Anthropic, 400, a, 0), None);
    }
}

#[cfg(test)]
mod kept_properties {
    //! Whatever the chunking, a kept stream that breaks gives the client whole events only, and
    //! what it got plus the held-back error is exactly the stream up to and including the break.
    use super::*;
    use crate::continuation::Transcript;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn anthropic(deltas: usize, error: bool) -> (String, String) {
        let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"x\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        let mut text = String::new();
        for i in 0..deltas {
            let t = format!(" w{i}");
            text.push_str(&t);
            s.push_str(&format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{t}\"}}}}\n\n"
            ));
        }
        if error {
            s.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        }
        (s, text)
    }

    #[test]
    fn any_chunking_gives_whole_events_and_the_text_so_far() {
        let mut seed = 7u64;
        for case in 0..300 {
            let deltas = 1 + (case % 9);
            let error = case % 2 == 0;
            let (stream, text) = anthropic(deltas, error);
            let bytes = stream.as_bytes();
            for client in [ClientApi::Anthropic, ClientApi::OpenAi] {
                let mut p = StreamPipeline::new(Api::Anthropic, false, client, false, 0, 0);
                p.keep_for_continuation(1 << 20);
                let mut out = Vec::new();
                let mut i = 0;
                while i < bytes.len() {
                    let n = 1 + (lcg(&mut seed) as usize % 40);
                    let end = (i + n).min(bytes.len());
                    let chunk = &bytes[i..end];
                    let last = end == bytes.len();
                    match p.feed(chunk, last) {
                        Some(o) => out.extend_from_slice(o),
                        None => out.extend_from_slice(chunk),
                    }
                    // Whole events only, at every step.
                    assert!(
                        out.is_empty() || out.ends_with(b"\n\n"),
                        "case {case}: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                    i = end;
                }
                let (sent, tail) = p.cut().unwrap_or_else(|| panic!("case {case}: a break"));
                assert_eq!(sent.unwrap(), out.as_slice(), "case {case}: what was kept is what was sent");
                assert!(tail.ends_with(b"\n\n") && !tail.is_empty());
                let t = Transcript::read(client, &out);
                assert_eq!(t.text, text, "case {case} {client:?}");
                assert!(t.continuable().is_ok());
                assert_eq!(t.deltas, deltas as u64);
                let raw = String::from_utf8_lossy(&out);
                assert!(!raw.contains("error"), "case {case}: the error is held back: {raw}");
            }
        }
    }
}

//! OpenAI Chat Completions (`POST /v1/chat/completions`; Azure OpenAI speaks the same format):
//! the stream monitor that tells a complete stream (`finish_reason`, then `data: [DONE]`) from
//! one that failed (an error chunk) or was cut short, and reads the usage chunk.
//!
//! Reference: OpenAI API reference, "Chat Completions" / "The chat completion chunk object"
//! (https://platform.openai.com/docs/api-reference/chat/streaming): every `data:` line is a
//! `chat.completion.chunk`; a choice ends with a non-null `finish_reason`; with
//! `stream_options.include_usage` one more chunk with `choices: []` and `usage` comes before
//! the final `data: [DONE]`. A failure inside a 200 stream arrives as `data: {"error": {...}}`.
//!
//! Verdicts: Complete = a non-null `finish_reason` was seen and `[DONE]` arrived, or the body
//! ended cleanly after it (some compatible servers never send `[DONE]`); Error = a
//! chunk with a non-null top-level `error` (overloaded when its type, code or message says
//! "overloaded", e.g. `server_is_overloaded`, `overloaded_error`); otherwise Truncated.
//! Data that is not JSON is skipped; data after `[DONE]` is ignored.

use crate::classify::StreamVerdict;
use crate::translate::response::says_overloaded;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default)]
pub struct StreamMonitor {
    finished: bool,
    /// A content or tool-call delta, or a finish, arrived.
    content: bool,
    done: bool,
    /// The first error's kind: overloaded or not.
    error: Option<bool>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// The parts of a chunk the monitor reads; everything else is skipped unparsed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Chunk<'a> {
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a>>>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice<'a> {
    finish_reason: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    tool_calls: Option<serde::de::IgnoredAny>,
    refusal: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl StreamMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// One SSE `data:` payload of the stream.
    pub fn on_data(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else { return };
        if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
            self.error.get_or_insert_with(|| error_says_overloaded(&err));
        }
        for c in chunk.choices.iter().flatten() {
            if c.finish_reason.is_some() {
                self.finished = true;
                self.content = true;
            }
            if let Some(d) = &c.delta {
                if d.content.as_ref().is_some_and(|t| !t.is_empty()) || d.tool_calls.is_some() || d.refusal.is_some() {
                    self.content = true;
                }
            }
        }
        if let Some(u) = chunk.usage {
            self.prompt_tokens = u.prompt_tokens.or(self.prompt_tokens);
            self.completion_tokens = u.completion_tokens.or(self.completion_tokens);
        }
    }

    /// (prompt tokens, completion tokens) the stream reported.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        (self.prompt_tokens, self.completion_tokens)
    }

    /// Has the answer's content begun (or the answer finished)?
    pub fn content_started(&self) -> bool {
        self.content
    }

    /// Has a choice finished (`finish_reason`)? The answer is complete from then on.
    pub fn terminal_seen(&self) -> bool {
        self.finished
    }

    /// The verdict so far; `ended`: the body has ended cleanly (a finish chunk followed by a
    /// clean end is a complete answer even without `[DONE]`).
    pub fn verdict(&self, ended: bool) -> StreamVerdict {
        if let Some(overloaded) = self.error {
            return StreamVerdict::Error { overloaded };
        }
        if self.finished && (self.done || ended) {
            return StreamVerdict::Complete;
        }
        StreamVerdict::Truncated
    }
}

fn error_says_overloaded(err: &Value) -> bool {
    match err {
        Value::String(s) => says_overloaded(s),
        Value::Object(o) => {
            ["type", "code", "message"].iter().any(|k| o.get(*k).and_then(Value::as_str).is_some_and(says_overloaded))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    //! Chunk shapes from https://platform.openai.com/docs/api-reference/chat/streaming and
    //! https://platform.openai.com/docs/api-reference/chat/create (stream_options.include_usage).
    use super::*;
    use crate::sse::SseParser;

    const OK: &str = include_str!("../../tests/golden/translate/stream_openai_text.sse");
    const TOOL: &str = include_str!("../../tests/golden/translate/stream_openai_tool.sse");
    const ERR: &str = include_str!("../../tests/golden/translate/stream_openai_error.sse");

    fn monitor(chunks: &[&[u8]]) -> StreamMonitor {
        let mut m = StreamMonitor::new();
        let mut p = SseParser::new();
        for c in chunks {
            p.feed(c, &mut |_, d| m.on_data(d));
        }
        m
    }

    #[test]
    fn complete_streams_and_usage() {
        let m = monitor(&[OK.as_bytes()]);
        assert_eq!(m.verdict(false), StreamVerdict::Complete);
        assert_eq!(m.usage(), (Some(9), Some(12)));
        let m = monitor(&[TOOL.as_bytes()]);
        assert_eq!(m.verdict(false), StreamVerdict::Complete);
        assert_eq!(m.usage(), (Some(120), Some(40)));
        // Split anywhere.
        let b = OK.as_bytes();
        for i in 0..b.len() {
            assert_eq!(monitor(&[&b[..i], &b[i..]]).verdict(false), StreamVerdict::Complete, "split at {i}");
        }
        // Without the usage chunk.
        let no_usage: String =
            OK.split("\n\n").filter(|e| !e.contains("\"choices\":[]")).collect::<Vec<_>>().join("\n\n");
        let m = monitor(&[no_usage.as_bytes()]);
        assert_eq!(m.verdict(false), StreamVerdict::Complete);
        assert_eq!(m.usage(), (None, None));
    }

    #[test]
    fn error_chunks() {
        assert_eq!(monitor(&[ERR.as_bytes()]).verdict(false), StreamVerdict::Error { overloaded: true });
        let e = b"data: {\"error\":{\"message\":\"The model produced invalid content.\",\"type\":\"model_error\",\"param\":null,\"code\":null}}\n\n";
        assert_eq!(monitor(&[e]).verdict(false), StreamVerdict::Error { overloaded: false });
        let e = b"data: {\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert_eq!(monitor(&[e]).verdict(false), StreamVerdict::Error { overloaded: true });
        let e = b"data: {\"error\":\"Server Overloaded\"}\n\n";
        assert_eq!(monitor(&[e]).verdict(false), StreamVerdict::Error { overloaded: true });
        // The first error's kind is kept; a later [DONE] does not make it complete.
        let both = [&e[..], b"data: {\"error\":{\"type\":\"x\"}}\n\n", OK.as_bytes()].concat();
        assert_eq!(monitor(&[&both]).verdict(false), StreamVerdict::Error { overloaded: true });
        // "error": null is not an error.
        let ok_null = OK.replace("\"usage\":null}", "\"usage\":null,\"error\":null}");
        assert_eq!(monitor(&[ok_null.as_bytes()]).verdict(false), StreamVerdict::Complete);
    }

    #[test]
    fn truncated_streams() {
        let done = OK.find("data: [DONE]").unwrap();
        for cut in 0..done {
            assert_eq!(monitor(&[&OK.as_bytes()[..cut]]).verdict(false), StreamVerdict::Truncated, "cut at {cut}");
        }
        // [DONE] without any finish_reason.
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n";
        assert_eq!(monitor(&[s.as_bytes()]).verdict(false), StreamVerdict::Truncated);
        // finish_reason without [DONE]: truncated while the body may still come, complete once it
        // has ended cleanly.
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(monitor(&[s.as_bytes()]).verdict(false), StreamVerdict::Truncated);
        assert_eq!(monitor(&[s.as_bytes()]).verdict(true), StreamVerdict::Complete);
        // A clean end without any finish is still truncated.
        let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n";
        assert_eq!(monitor(&[s.as_bytes()]).verdict(true), StreamVerdict::Truncated);
        assert_eq!(monitor(&[b"garbage\x00\x01\n\ndata: {{{\n\n"]).verdict(false), StreamVerdict::Truncated);
        assert_eq!(monitor(&[]).verdict(false), StreamVerdict::Truncated);
    }

    #[test]
    fn content_starts_with_the_first_delta_not_the_role_chunk() {
        let role = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
        let m = monitor(&[role.as_bytes()]);
        assert!(!m.content_started());
        let text = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \\\"there\\\"\"},\"finish_reason\":null}]}\n\n";
        assert!(monitor(&[role.as_bytes(), text.as_bytes()]).content_started());
        let tool = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n";
        assert!(monitor(&[tool.as_bytes()]).content_started());
        let m = monitor(&[TOOL.as_bytes()]);
        assert!(m.content_started() && m.terminal_seen());
    }

    #[test]
    fn finish_reason_content_does_not_matter_and_garbage_is_skipped() {
        let s = "data: not json\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"finish_reason\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\ndata: {\"error\":{\"type\":\"late\"}}\n\n";
        assert_eq!(monitor(&[s.as_bytes()]).verdict(false), StreamVerdict::Complete);
    }
}

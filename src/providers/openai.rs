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
//! Verdicts: Complete = a non-null `finish_reason` was seen and `[DONE]` arrived; Error = a
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
    done: bool,
    /// The first error's kind: overloaded or not.
    error: Option<bool>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// The parts of a chunk the monitor reads; everything else is skipped unparsed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Chunk {
    choices: Option<Vec<Choice>>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    finish_reason: Option<serde::de::IgnoredAny>,
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
        if chunk.choices.iter().flatten().any(|c| c.finish_reason.is_some()) {
            self.finished = true;
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

    pub fn verdict(&self) -> StreamVerdict {
        if let Some(overloaded) = self.error {
            return StreamVerdict::Error { overloaded };
        }
        if self.finished && self.done {
            return StreamVerdict::Complete;
        }
        StreamVerdict::Truncated
    }
}

fn error_says_overloaded(err: &Value) -> bool {
    match err {
        Value::String(s) => says_overloaded(s),
        Value::Object(o) => ["type", "code", "message"]
            .iter()
            .any(|k| o.get(*k).and_then(Value::as_str).is_some_and(says_overloaded)),
        _ => false,
    }
}

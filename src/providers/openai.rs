//! OpenAI Chat Completions (`POST /v1/chat/completions`; Azure OpenAI speaks the same format):
//! the stream monitor that tells a complete stream (`finish_reason`, then `data: [DONE]`) from
//! one that failed (an error chunk) or was cut short, and reads the usage chunk.

use crate::classify::StreamVerdict;

#[derive(Debug, Default)]
pub struct StreamMonitor {}

impl StreamMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// One SSE `data:` payload of the stream.
    pub fn on_data(&mut self, data: &[u8]) {
        let _ = data;
    }

    /// (prompt tokens, completion tokens) the stream reported.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        (None, None)
    }

    pub fn verdict(&self) -> StreamVerdict {
        StreamVerdict::Truncated
    }
}

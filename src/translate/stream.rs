//! SSE streams translated event by event: Anthropic events -> OpenAI chunks, and OpenAI chunks
//! -> Anthropic events. The caller parses SSE (crate::sse) and hands each event over; output is
//! appended as ready-to-send SSE bytes.

/// Anthropic stream events -> OpenAI `chat.completion.chunk` SSE.
#[derive(Debug, Default)]
pub struct AnthropicToOpenAi {}

impl AnthropicToOpenAi {
    pub fn new(created_s: u64, include_usage: bool) -> Self {
        let _ = (created_s, include_usage);
        Self {}
    }

    /// One Anthropic event (`event:` name, `data:` JSON) -> zero or more `data: {...}\n\n`
    /// chunks (and `data: [DONE]\n\n` after `message_stop`).
    pub fn on_event(&mut self, event: &[u8], data: &[u8], out: &mut Vec<u8>) {
        let _ = (event, data, out);
    }
}

/// OpenAI `chat.completion.chunk` SSE -> Anthropic stream events.
#[derive(Debug, Default)]
pub struct OpenAiToAnthropic {}

impl OpenAiToAnthropic {
    pub fn new(id_suffix: u64) -> Self {
        let _ = id_suffix;
        Self {}
    }

    /// One OpenAI `data:` payload (a chunk JSON, an error JSON, or `[DONE]`) -> zero or more
    /// `event: X\ndata: {...}\n\n` Anthropic events.
    pub fn on_data(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let _ = (data, out);
    }
}

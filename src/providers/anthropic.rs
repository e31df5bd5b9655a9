//! Anthropic Messages API (`POST /v1/messages`): the stream monitor that tells a complete
//! stream (`message_stop`) from one that failed (`event: error`, e.g. `overloaded_error`) or was
//! cut short, and the shapes of its answers used for degraded responses.
//!
//! Reference: Anthropic API docs, "Streaming Messages" (event types message_start,
//! content_block_start/delta/stop, message_delta, message_stop, ping, error).

use crate::classify::StreamVerdict;
use crate::sse::SseParser;
use crate::usage::UsageScanner;

#[derive(Debug, Default)]
pub struct StreamMonitor {
    parser: SseParser,
    started: bool,
    stopped: bool,
    /// The answer's content began (a content delta), or it ended without any (message_delta).
    content: bool,
    error: Option<bool>,
    /// Input tokens come in `message_start`, the running output count in `message_delta`.
    usage: UsageScanner,
}

impl StreamMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds raw SSE bytes (parsing them itself).
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut parser = std::mem::take(&mut self.parser);
        parser.feed(chunk, &mut |event, data| self.on_event(event, data));
        self.parser = parser;
    }

    /// One parsed event.
    pub fn on_event(&mut self, event: &[u8], data: &[u8]) {
        match event {
            b"message_start" => {
                self.started = true;
                self.usage.feed(data);
            }
            b"content_block_delta" => self.content = true,
            b"message_delta" => {
                self.content = true;
                self.usage.feed(data);
            }
            b"message_stop" => {
                self.content = true;
                self.stopped = true;
            }
            b"error" => {
                let overloaded = contains(data, b"overloaded_error");
                // Keep the first error's kind.
                self.error.get_or_insert(overloaded);
            }
            _ => {}
        }
    }

    /// Has the answer's content begun (or the answer ended without any)?
    pub fn content_started(&self) -> bool {
        self.content
    }

    /// Has the terminal event (`message_stop`) arrived?
    pub fn terminal_seen(&self) -> bool {
        self.stopped
    }

    /// (input tokens, output tokens) reported by the stream so far.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        (self.usage.input_tokens(), self.usage.output_tokens())
    }

    pub fn verdict(&self) -> StreamVerdict {
        if let Some(overloaded) = self.error {
            return StreamVerdict::Error { overloaded };
        }
        if self.started && self.stopped && !self.parser.overflowed() {
            return StreamVerdict::Complete;
        }
        StreamVerdict::Truncated
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn verdict(chunks: &[&str]) -> StreamVerdict {
        let mut m = StreamMonitor::new();
        for c in chunks {
            m.feed(c.as_bytes());
        }
        m.verdict()
    }

    #[test]
    fn usage_from_message_start_and_message_delta() {
        let s = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"delta\":{\"text\":\"\\\"output_tokens\\\": 7\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":180}}\n\n";
        let mut m = StreamMonitor::new();
        for c in s.as_bytes().chunks(5) {
            m.feed(c);
        }
        assert_eq!(m.usage(), (Some(42), Some(180)));
    }

    #[test]
    fn complete_stream() {
        assert_eq!(verdict(&[OK]), StreamVerdict::Complete);
        let (a, b) = OK.split_at(OK.len() - 5);
        assert_eq!(verdict(&[a, b]), StreamVerdict::Complete);
    }

    #[test]
    fn error_event_inside_a_200_stream() {
        let s = "event: message_start\ndata: {}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert_eq!(verdict(&[s]), StreamVerdict::Error { overloaded: true });
        let s = "event: message_start\ndata: {}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}\n\n";
        assert_eq!(verdict(&[s]), StreamVerdict::Error { overloaded: false });
    }

    #[test]
    fn stream_without_message_stop_is_truncated() {
        let cut = &OK[..OK.find("event: message_stop").unwrap()];
        assert_eq!(verdict(&[cut]), StreamVerdict::Truncated);
        // Half an event line is not an event.
        assert_eq!(verdict(&[&OK[..OK.len() - 2]]), StreamVerdict::Truncated);
        assert_eq!(verdict(&["garbage\x00\x01"]), StreamVerdict::Truncated);
    }
}

//! Per-API knowledge: where each host's requests go, what its bodies look like, how its streams
//! end and fail. One module per API: [`anthropic`], [`vertex`], [`bedrock`] (+
//! [`bedrock_stream`]), [`openai`], [`azure`].

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod bedrock_stream;
pub mod openai;
pub mod vertex;

use crate::classify::StreamVerdict;
use crate::config::ClientApi;

/// Watches a streamed response, event by event, in the format the host sent it (Bedrock's
/// event-stream is decoded to Anthropic events first) and says how it ended.
#[derive(Debug)]
pub enum StreamMonitor {
    Anthropic(anthropic::StreamMonitor),
    OpenAi(openai::StreamMonitor),
}

impl StreamMonitor {
    pub fn new(format: ClientApi) -> Self {
        match format {
            ClientApi::Anthropic => StreamMonitor::Anthropic(anthropic::StreamMonitor::new()),
            ClientApi::OpenAi => StreamMonitor::OpenAi(openai::StreamMonitor::new()),
        }
    }

    /// One SSE event of the host's stream.
    pub fn on_event(&mut self, event: &[u8], data: &[u8]) {
        match self {
            StreamMonitor::Anthropic(m) => m.on_event(event, data),
            StreamMonitor::OpenAi(m) => m.on_data(data),
        }
    }

    /// (input tokens, output tokens) the stream reported.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        match self {
            StreamMonitor::Anthropic(m) => m.usage(),
            StreamMonitor::OpenAi(m) => m.usage(),
        }
    }

    /// The verdict so far (final once the body has ended); `ended`: the body ended cleanly.
    pub fn verdict(&self, ended: bool) -> StreamVerdict {
        match self {
            StreamMonitor::Anthropic(m) => m.verdict(),
            StreamMonitor::OpenAi(m) => m.verdict(ended),
        }
    }

    /// Has the answer's content begun (a text or tool delta, or the answer's end)?
    pub fn content_started(&self) -> bool {
        match self {
            StreamMonitor::Anthropic(m) => m.content_started(),
            StreamMonitor::OpenAi(m) => m.content_started(),
        }
    }

    /// Has the answer's terminal event arrived (what follows cannot change the answer)?
    pub fn terminal_seen(&self) -> bool {
        match self {
            StreamMonitor::Anthropic(m) => m.terminal_seen(),
            StreamMonitor::OpenAi(m) => m.terminal_seen(),
        }
    }
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters and `@`,
/// which Vertex model versions use).
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

//! Per-API knowledge: how each provider's wire format looks, how its streams end and fail.
//! One module per API; the next adapters (Bedrock, Vertex, OpenAI) join here.

pub mod anthropic;
pub mod bedrock_stream;
pub mod openai;

use crate::classify::StreamVerdict;
use crate::config::Api;

/// Watches a streamed response of one API and says how it ended.
#[derive(Debug)]
pub enum StreamMonitor {
    Anthropic(anthropic::StreamMonitor),
}

impl StreamMonitor {
    pub fn new(api: Api) -> Self {
        match api {
            Api::Anthropic => StreamMonitor::Anthropic(anthropic::StreamMonitor::new()),
        }
    }

    /// Feeds a body chunk as it passes to the client.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            StreamMonitor::Anthropic(m) => m.feed(chunk),
        }
    }

    /// (input tokens, output tokens) the stream reported.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        match self {
            StreamMonitor::Anthropic(m) => m.usage(),
        }
    }

    /// The verdict so far (final once the body has ended).
    pub fn verdict(&self) -> StreamVerdict {
        match self {
            StreamMonitor::Anthropic(m) => m.verdict(),
        }
    }
}

//! Context-overflow failover: a 400 that says the prompt is too long for the model
//! (`context_length_exceeded`, Anthropic's `prompt is too long`, Bedrock's `Input is too long`)
//! is no failure of the provider, but a later provider of the chain configured with a larger
//! `context_window`, serving another model, may take the request. The downstream filter holds
//! such a 400, and the filter calls that provider itself (`dispatch_http_call`: the router has
//! no retry for a 400, and the attempts' aggregate cluster is ordered for outages). Its answer
//! arrives whole, also for a stream (then replayed to the client at once, translated as usual);
//! when no provider can take it, the client gets the original 400.

use super::resume::{admit, call_outcome, CallSpec};
use super::Exchange;
use crate::attempt::AttemptSummary;
use crate::config::{Api, Config};
use crate::header_map::HeaderMap;
use crate::health::{Budget, Health};
use crate::plan::HeaderEdits;
use crate::response_rewrite::{translate_json, StreamPipeline};

/// Longest 400 body read for the overflow check.
pub const MAX_OVERFLOW_BODY: usize = 64 * 1024;

/// Does this error body say the prompt is too long for the model?
pub fn is_context_overflow(body: &[u8]) -> bool {
    let text =
        String::from_utf8_lossy(body.get(..MAX_OVERFLOW_BODY.min(body.len())).unwrap_or_default()).to_lowercase();
    [
        "context_length_exceeded",
        "prompt is too long",
        "maximum context length",
        "input is too long",
        "context window",
        "too many input tokens",
        "exceeds the context",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// What the host does with a held 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverflowStep {
    /// Ask this provider (keep the answer paused) and hand its answer to
    /// [`Exchange::overflow_answer`].
    Call(CallSpec),
    /// Answer the client with this instead of the 400: these header edits, this body.
    Replace { headers: HeaderEdits, body: Vec<u8> },
    /// Let the 400 go to the client.
    Pass,
}

/// The call in flight.
#[derive(Debug, Clone)]
pub struct OverflowCall {
    provider: usize,
    position: usize,
    probe: bool,
    start_ms: u64,
    model: String,
    stream: bool,
    include_usage: bool,
}

impl Exchange {
    /// The provider and chain position of the attempt that answered last.
    fn answering(&self) -> Option<(usize, usize)> {
        self.last_started
    }

    /// Providers that may take a request too long for the provider that answered: later in the
    /// chain, a configured context window larger than that provider's, another model.
    fn overflow_candidates(&self, cfg: &Config) -> Vec<(usize, usize)> {
        let (Some(chain), Some((from, from_pos))) = (cfg.chains.get(self.chain), self.answering()) else {
            return Vec::new();
        };
        let window = |p: usize| cfg.providers.get(p).and_then(|q| q.context_window);
        let from_window = window(from).unwrap_or(0);
        let model_at = |p: usize, pos: usize| {
            let api = cfg.providers.get(p).map_or(Api::Anthropic, |q| q.api);
            chain.models.get(pos).and_then(|m| m.model_for(api, self.client, self.model.as_deref().unwrap_or("")))
        };
        let from_model = model_at(from, from_pos).map(str::to_string);
        let same = |pos: usize| chain.same_model.get(pos).copied().unwrap_or(false);
        chain
            .providers
            .iter()
            .enumerate()
            .skip(from_pos.saturating_add(1))
            .filter(|&(pos, &p)| {
                window(p).is_some_and(|w| w > from_window)
                    && !(same(pos) && same(from_pos))
                    && model_at(p, pos).is_some_and(|m| Some(m) != from_model.as_deref())
                    && (!self.same_model_only || same(pos))
            })
            .map(|(pos, &p)| (p, pos))
            .collect()
    }

    /// Should the downstream filter hold this final response to look for a context overflow?
    /// Only with in-request failover: holding response headers needs the Wasm filter's
    /// `allow_on_headers_stop_iteration`, which the installs without the upstream filter (an
    /// Istio `WasmPlugin`) cannot set, and there a held answer would hang.
    pub fn holds_for_overflow(&mut self, cfg: &Config, status: u16) -> bool {
        if status != 400 || self.replied || self.overflow_checked || self.mode != super::Mode::Attempts {
            return false;
        }
        self.overflow_checked = true;
        self.body_available() && !self.overflow_candidates(cfg).is_empty()
    }

    /// The held 400's body: an overflow goes to the first candidate that admits it.
    pub fn overflow_start(
        &mut self,
        cfg: &Config,
        body: &[u8],
        current: &HeaderMap,
        health: &mut dyn Health,
        budget: &mut dyn Budget,
        now_ms: u64,
    ) -> OverflowStep {
        if !is_context_overflow(body) {
            return OverflowStep::Pass;
        }
        log::info!(
            "llm-failover: the prompt is too long for the provider that answered; looking for a larger context window"
        );
        self.context_overflow = true;
        let Ok(req) = self.client_request().cloned() else { return OverflowStep::Pass };
        let timeout_ms = cfg
            .chains
            .get(self.chain)
            .map_or(60_000, |c| c.deadlines.total_ms.unwrap_or(c.continuation.timeout_ms.max(120_000)));
        for (provider, position) in self.overflow_candidates(cfg) {
            let Some(probe) = admit(health, provider, now_ms) else { continue };
            let Some((spec, rw)) = self.call_spec(cfg, provider, position, &req, current, timeout_ms) else {
                if probe {
                    health.abandon_probe(provider);
                }
                continue;
            };
            if !budget.try_replay(now_ms) {
                if probe {
                    health.abandon_probe(provider);
                }
                return OverflowStep::Pass;
            }
            self.overflow_call = Some(OverflowCall {
                provider,
                position,
                probe,
                start_ms: now_ms,
                model: rw.model,
                stream: rw.stream,
                include_usage: rw.include_usage,
            });
            return OverflowStep::Call(spec);
        }
        OverflowStep::Pass
    }

    /// The answer of the overflow call (`status` 0: none came).
    pub fn overflow_answer(
        &mut self,
        cfg: &Config,
        status: u16,
        content_type: &str,
        body: &[u8],
        health: &mut dyn Health,
        now_ms: u64,
    ) -> OverflowStep {
        let Some(call) = self.overflow_call.take() else { return OverflowStep::Pass };
        let Some(p) = cfg.providers.get(call.provider) else { return OverflowStep::Pass };
        let ok = (200..300).contains(&status);
        let event_stream = content_type.starts_with("application/vnd.amazon.eventstream");
        let sse = event_stream || content_type.starts_with("text/event-stream");
        let mut usage = (None, None);
        let out = if !ok {
            None
        } else if sse && call.stream {
            let mut pipe = StreamPipeline::new(
                p.api,
                event_stream,
                self.client,
                call.include_usage,
                self.start_ms / 1000,
                self.id_suffix,
            );
            let bytes = pipe.feed(body, true).map_or_else(|| body.to_vec(), <[u8]>::to_vec);
            usage = pipe.usage();
            (pipe.verdict() == crate::classify::StreamVerdict::Complete).then_some(bytes)
        } else if !sse && !call.stream {
            let translated = translate_json(p.api, self.client, status, body, self.start_ms / 1000);
            let mut u = crate::usage::UsageScanner::new();
            u.feed(body);
            usage = (u.input_tokens(), u.output_tokens());
            Some(translated.unwrap_or_else(|| body.to_vec()))
        } else {
            None
        };
        let outcome = call_outcome(out.is_some(), status);
        health.record(call.provider, outcome, call.probe, now_ms);
        self.summaries.push(AttemptSummary {
            number: self.attempts_started.saturating_add(1),
            provider: call.provider,
            position: call.position,
            probe: call.probe,
            outcome,
            model: Some(call.model.clone()),
            first_content_ms: out.as_ref().map(|_| now_ms),
            start_ms: call.start_ms,
            end_ms: now_ms,
            input_tokens: usage.0,
            output_tokens: usage.1,
            answered: out.is_some(),
            streamed: false,
        });
        let Some(body) = out else { return OverflowStep::Pass };
        let content_type = if call.stream { "text/event-stream; charset=utf-8" } else { "application/json" };
        let headers: HeaderEdits = vec![
            (":status".to_string(), Some("200".to_string())),
            ("content-type".to_string(), Some(content_type.to_string())),
            ("content-length".to_string(), None),
            ("x-llm-provider".to_string(), Some(p.name.clone())),
            ("x-llm-model".to_string(), Some(call.model)),
            ("x-llm-context-overflow".to_string(), Some("true".to_string())),
        ];
        OverflowStep::Replace { headers, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_overflow_messages_are_recognised() {
        assert!(is_context_overflow(
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#
        ));
        assert!(is_context_overflow(br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#));
        assert!(is_context_overflow(br#"{"message":"Input is too long for requested model."}"#));
        assert!(!is_context_overflow(
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#
        ));
    }
}

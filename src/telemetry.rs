//! Names of the filter's Envoy stats and the per-request record behind them and the access-log
//! fields. Tags are name segments at the end of a stat name (`.provider.<p>.model.<m>` ...), in
//! a fixed order, which the `stats_config.stats_tags` rules shipped in `envoy/` turn into
//! Prometheus labels; the OpenTelemetry GenAI metric names are kept
//! (`gen_ai.client.token.usage`, `gen_ai.server.time_to_first_token`, ...).
//!
//! Clients choose model names, so a model name becomes a tag only after [`sanitize_model`] and
//! within a per-VM budget; the host maps the rest to `other` so stats cannot grow without bound.

use crate::classify::Outcome;

/// Distinct model names a VM turns into stats before it reports `other`.
pub const MAX_MODELS: usize = 32;

/// A model name as a stat tag: `[A-Za-z0-9_-]`, other bytes as `_`, at most 64 bytes;
/// `unknown` when absent.
pub fn sanitize_model(model: Option<&str>) -> String {
    match model {
        None | Some("") => "unknown".to_string(),
        Some(m) => m.bytes().take(64).map(|b| tag_byte(b) as char).collect(),
    }
}

fn tag_byte(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
        b
    } else {
        b'_'
    }
}

/// Is `tag` what [`sanitize_model`] makes of `model`? (Without building it.)
pub fn is_model_tag(model: Option<&str>, tag: &str) -> bool {
    match model {
        None | Some("") => tag == "unknown",
        Some(m) => m.bytes().take(64).map(tag_byte).eq(tag.bytes()),
    }
}

fn pm(provider: &str, model: &str) -> String {
    format!("provider.{provider}.model.{model}")
}

pub fn requests(provider: &str, model: &str) -> String {
    format!("llm_failover.requests.{}", pm(provider, model))
}

pub fn outcomes(provider: &str, model: &str, outcome: Outcome) -> String {
    format!("llm_failover.outcomes.class.{}.{}", outcome.as_str(), pm(provider, model))
}

pub fn failovers(from: &str, to: &str) -> String {
    format!("llm_failover.failovers.from.{from}.to.{to}")
}

/// Requests refused with a 400 because the provider that had to serve them cannot express them.
pub fn untranslatable(provider: &str) -> String {
    format!("llm_failover.untranslatable.provider.{provider}")
}

/// Attempts after a request's first, sent to `provider`.
pub fn replays(provider: &str) -> String {
    format!("llm_failover.replays.provider.{provider}")
}

/// Deadlines that fired (`kind`: `first_token` or `stall`).
pub fn deadlines(provider: &str, kind: &str) -> String {
    format!("llm_failover.deadlines.kind.{kind}.provider.{provider}")
}

/// Requests that could not be replayed (`reason`: `body_too_large`).
pub fn replays_skipped(reason: &str) -> String {
    format!("llm_failover.replays_skipped.reason.{reason}")
}

/// Continuations of broken streams: `result` is `attempted` (a provider was asked for the
/// rest), `spliced` (its rest reached the client) or `failed` (the client's stream ended with
/// an error event); `provider` is the one asked (`none` when no provider could be).
pub fn continuations(provider: &str, result: &str) -> String {
    format!("llm_failover.continuations.result.{result}.provider.{provider}")
}

/// Attempts per request (histogram).
pub fn request_attempts() -> String {
    "llm_failover.request_attempts".to_string()
}

pub fn degraded(reason: &str) -> String {
    format!("llm_failover.degraded.reason.{reason}")
}

pub fn breaker_state(provider: &str) -> String {
    format!("llm_failover.breaker_state.provider.{provider}")
}

pub fn breaker_transitions(provider: &str, to_state: &str) -> String {
    format!("llm_failover.breaker_transitions.state.{to_state}.provider.{provider}")
}

/// Exact token totals (the OpenTelemetry histogram's sum is approximate in Envoy).
pub fn tokens(provider: &str, model: &str, token_type: &str) -> String {
    format!("llm_failover.tokens.token_type.{token_type}.{}", pm(provider, model))
}

pub fn token_usage(provider: &str, model: &str, token_type: &str) -> String {
    format!("gen_ai.client.token.usage.token_type.{token_type}.{}", pm(provider, model))
}

pub fn time_to_first_token(provider: &str, model: &str) -> String {
    format!("gen_ai.server.time_to_first_token.{}", pm(provider, model))
}

pub fn request_duration(provider: &str, model: &str) -> String {
    format!("gen_ai.server.request.duration.{}", pm(provider, model))
}

pub fn time_per_output_token(provider: &str, model: &str) -> String {
    format!("gen_ai.server.time_per_output_token.{}", pm(provider, model))
}

/// What one request did, for stats and the access log (written by [`crate::access_log::encode`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRecord {
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Attempts made (the first included).
    pub attempts: u32,
    /// Each attempt's provider and outcome, in order (`primary:overloaded,fallback:success`).
    pub tried: Option<String>,
    pub outcome: Option<&'static str>,
    pub degraded_reason: Option<&'static str>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub ttft_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// A broken stream's continuation: `spliced`, `completed` or `failed:<reason>`.
    pub continuation: Option<String>,
    /// The provider whose continuation finished the answer (`provider` started it).
    pub finished_by: Option<String>,
}

/// Time per output token (µs), OpenTelemetry's definition: the time after the first token
/// divided by the tokens after the first.
pub fn time_per_output_token_us(first_token_us: u64, end_us: u64, output_tokens: u64) -> Option<u64> {
    (output_tokens > 1 && end_us >= first_token_us).then(|| (end_us - first_token_us) / (output_tokens - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_end_with_tags_in_a_fixed_order() {
        assert_eq!(
            requests("primary", "claude-opus-4-6"),
            "llm_failover.requests.provider.primary.model.claude-opus-4-6"
        );
        assert_eq!(
            outcomes("p", "m", Outcome::Overloaded),
            "llm_failover.outcomes.class.overloaded.provider.p.model.m"
        );
        assert_eq!(token_usage("p", "m", "input"), "gen_ai.client.token.usage.token_type.input.provider.p.model.m");
        assert_eq!(failovers("a", "b"), "llm_failover.failovers.from.a.to.b");
        assert_eq!(breaker_transitions("a", "open"), "llm_failover.breaker_transitions.state.open.provider.a");
    }

    #[test]
    fn model_names_are_safe_tags() {
        assert_eq!(sanitize_model(Some("us.anthropic.claude-opus-4-6-v1:0")), "us_anthropic_claude-opus-4-6-v1_0");
        assert_eq!(sanitize_model(Some("claude-opus-4-6@20250514")), "claude-opus-4-6_20250514");
        assert_eq!(sanitize_model(None), "unknown");
        assert_eq!(sanitize_model(Some(&"x".repeat(500))).len(), 64);
        assert_eq!(sanitize_model(Some("a.b\n{}")), "a_b___");
        for m in [None, Some(""), Some("us.anthropic.claude-opus-4-6-v1:0"), Some("gpt-4o"), Some(&*"y".repeat(99))] {
            assert!(is_model_tag(m, &sanitize_model(m)), "{m:?}");
        }
        assert!(!is_model_tag(Some("gpt-4o"), "gpt-4"));
        assert!(!is_model_tag(Some("a.b"), "a.b"));
    }

    #[test]
    fn time_per_output_token() {
        assert_eq!(time_per_output_token_us(1_000, 11_000, 11), Some(1_000));
        assert_eq!(time_per_output_token_us(1_000, 11_000, 1), None);
        assert_eq!(time_per_output_token_us(5_000, 1_000, 10), None);
    }
}

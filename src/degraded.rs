//! Degraded-mode answers: when no provider can serve a request (or the one that tried failed
//! before anything reached the client), the filter answers at once with a well-formed response
//! in the client's own API format, flagged by `x-llm-degraded: true`, instead of a raw 5xx.
//!
//! Two modes ([`DegradedMode`]): a 200 carrying a synthetic assistant message with the notice
//! (JSON, or a complete SSE stream when the request asked for `"stream": true`), or a 503 with
//! the API's structured error and `Retry-After`, which SDKs retry by themselves.
//! The payload holds only the configured notice and the client's own model name; no upstream
//! text, header or credential ever reaches it.

use crate::config::{ClientApi, DegradedMode, DegradedSettings};
use serde_json::json;

/// Why the answer is degraded (also sent as `x-llm-degraded-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DegradedReason {
    /// Every provider in the chain was open, probing or rate-limited.
    NoProviderAvailable,
    /// The chosen provider failed before the answer started (and no attempt followed).
    UpstreamFailure,
    /// An attempt failed and the retry budget allowed no replay.
    RetryBudgetExhausted,
    /// An attempt failed and the request's overall deadline or its attempts were spent.
    DeadlineExceeded,
    /// The Envoy config does not let the filter know which provider an attempt reached (its
    /// endpoints lack `llm_failover.provider` metadata): nothing was sent.
    Misconfigured,
}

impl DegradedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DegradedReason::NoProviderAvailable => "no_provider_available",
            DegradedReason::UpstreamFailure => "upstream_failure",
            DegradedReason::RetryBudgetExhausted => "retry_budget_exhausted",
            DegradedReason::DeadlineExceeded => "deadline_exceeded",
            DegradedReason::Misconfigured => "misconfigured",
        }
    }
}

/// A complete local response for the host to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Builds the degraded answer for a request of `api` that asked for `model` and `stream`.
/// `id_suffix` makes the message id unique (any random number).
pub fn degraded_response(
    settings: &DegradedSettings,
    api: ClientApi,
    model: Option<&str>,
    stream: bool,
    reason: DegradedReason,
    id_suffix: u64,
) -> LocalResponse {
    let model = model.filter(|m| !m.is_empty()).unwrap_or("unknown");
    let id = format!("msg_degraded_{id_suffix:016x}");
    let mut headers = vec![
        ("x-llm-degraded", "true".to_string()),
        ("x-llm-degraded-reason", reason.as_str().to_string()),
        ("cache-control", "no-store".to_string()),
    ];
    match (settings.mode, api) {
        (DegradedMode::Error, api) => {
            headers.push(("content-type", "application/json".to_string()));
            headers.push(("retry-after", settings.retry_after_s.to_string()));
            let body = match api {
                ClientApi::Anthropic => anthropic_error(&settings.notice),
                ClientApi::OpenAi => openai_error(&settings.notice),
            };
            LocalResponse { status: 503, headers, body }
        }
        (DegradedMode::Message, api) if stream => {
            headers.push(("content-type", "text/event-stream; charset=utf-8".to_string()));
            let body = match api {
                ClientApi::Anthropic => anthropic_sse(&settings.notice, model, &id),
                ClientApi::OpenAi => openai_sse(&settings.notice, model, &openai_id(id_suffix)),
            };
            LocalResponse { status: 200, headers, body }
        }
        (DegradedMode::Message, api) => {
            headers.push(("content-type", "application/json".to_string()));
            let body = match api {
                ClientApi::Anthropic => anthropic_message(&settings.notice, model, &id),
                ClientApi::OpenAi => openai_completion(&settings.notice, model, &openai_id(id_suffix)),
            };
            LocalResponse { status: 200, headers, body }
        }
    }
}

fn openai_id(id_suffix: u64) -> String {
    format!("chatcmpl-degraded{id_suffix:016x}")
}

/// A Chat Completions answer (non-streaming).
pub fn openai_completion(notice: &str, model: &str, id: &str) -> Vec<u8> {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": notice, "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })
    .to_string()
    .into_bytes()
}

/// A complete Chat Completions chunk stream ending in `data: [DONE]`.
pub fn openai_sse(notice: &str, model: &str, id: &str) -> Vec<u8> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut out = String::new();
    for c in [
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": notice}), None),
        chunk(json!({}), Some("stop")),
    ] {
        out.push_str("data: ");
        out.push_str(&c.to_string());
        out.push_str("\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// A Chat Completions error body (type `server_error`, code `server_is_overloaded`).
pub fn openai_error(notice: &str) -> Vec<u8> {
    crate::translate::response::openai_error_body("overloaded_error", 503, notice)
}

fn anthropic_usage() -> serde_json::Value {
    json!({"input_tokens": 0, "output_tokens": 0})
}

/// A Messages API response (non-streaming).
pub fn anthropic_message(notice: &str, model: &str, id: &str) -> Vec<u8> {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": notice}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": anthropic_usage(),
    })
    .to_string()
    .into_bytes()
}

/// A complete Messages API event stream: message_start … message_stop.
pub fn anthropic_sse(notice: &str, model: &str, id: &str) -> Vec<u8> {
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage()}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": notice}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": 0}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let mut out = String::new();
    for (name, data) in events {
        out.push_str("event: ");
        out.push_str(name);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }
    out.into_bytes()
}

/// A Messages API error body (`overloaded_error`, which SDKs treat as retryable).
pub fn anthropic_error(notice: &str) -> Vec<u8> {
    crate::translate::response::anthropic_error_body("overloaded_error", notice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::StreamVerdict;
    use crate::providers::anthropic::StreamMonitor;

    fn settings(mode: DegradedMode) -> DegradedSettings {
        DegradedSettings { mode, notice: "Be right back \"soon\"".into(), retry_after_s: 17, on_upstream_failure: true }
    }

    fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn message_mode_json() {
        let r = degraded_response(
            &settings(DegradedMode::Message),
            ClientApi::Anthropic,
            Some("claude-x"),
            false,
            DegradedReason::NoProviderAvailable,
            7,
        );
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "x-llm-degraded"), Some("true"));
        assert_eq!(header(&r, "x-llm-degraded-reason"), Some("no_provider_available"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["model"], "claude-x");
        assert_eq!(v["content"][0]["text"], "Be right back \"soon\"");
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["id"], "msg_degraded_0000000000000007");
    }

    #[test]
    fn message_mode_stream_is_a_complete_valid_stream() {
        let r = degraded_response(
            &settings(DegradedMode::Message),
            ClientApi::Anthropic,
            Some("m"),
            true,
            DegradedReason::UpstreamFailure,
            1,
        );
        assert_eq!(header(&r, "content-type"), Some("text/event-stream; charset=utf-8"));
        let mut m = StreamMonitor::new();
        m.feed(&r.body);
        assert_eq!(m.verdict(), StreamVerdict::Complete);
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.starts_with("event: message_start\n"));
        assert!(text.contains("Be right back \\\"soon\\\""));
    }

    #[test]
    fn error_mode_has_retry_after_and_an_api_error() {
        let r = degraded_response(
            &settings(DegradedMode::Error),
            ClientApi::Anthropic,
            None,
            true,
            DegradedReason::NoProviderAvailable,
            1,
        );
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("17"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
    }

    #[test]
    fn openai_forms_parse_and_stream_ends_with_done() {
        let st = settings(DegradedMode::Message);
        let r = degraded_response(&st, ClientApi::OpenAi, Some("gpt-x"), false, DegradedReason::UpstreamFailure, 3);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Be right back \"soon\"");
        let r = degraded_response(&st, ClientApi::OpenAi, Some("gpt-x"), true, DegradedReason::UpstreamFailure, 3);
        let mut m = crate::providers::openai::StreamMonitor::new();
        let mut p = crate::sse::SseParser::new();
        p.feed(&r.body, &mut |_, d| m.on_data(d));
        assert_eq!(m.verdict(false), StreamVerdict::Complete);
        let r = degraded_response(
            &settings(DegradedMode::Error),
            ClientApi::OpenAi,
            None,
            true,
            DegradedReason::UpstreamFailure,
            3,
        );
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[test]
    fn hostile_model_names_stay_inside_the_json_string() {
        let r = degraded_response(
            &settings(DegradedMode::Message),
            ClientApi::Anthropic,
            Some("\"}\n\nevent: x"),
            true,
            DegradedReason::NoProviderAvailable,
            1,
        );
        let text = String::from_utf8(r.body).unwrap();
        assert_eq!(text.matches("\n\n").count(), 6);
    }
}

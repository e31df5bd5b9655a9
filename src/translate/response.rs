//! Non-streaming answers and error bodies: Anthropic Messages <-> OpenAI Chat Completions.
//!
//! **Anthropic `message` -> OpenAI `chat.completion`** ([`anthropic_to_openai`]): `id` ->
//! `"chatcmpl-" + id`; `model`; `created` from the caller; text blocks concatenated ->
//! `choices[0].message.content` (null when there is no text); `tool_use` blocks ->
//! `message.tool_calls` (arguments = JSON text of `input`); `stop_reason` end_turn,
//! stop_sequence, pause_turn -> `stop`, max_tokens, model_context_window_exceeded -> `length`,
//! tool_use -> `tool_calls`, refusal -> `content_filter`; `usage.prompt_tokens` = input +
//! cache creation + cache read tokens, `completion_tokens` = output tokens, `total_tokens`,
//! `prompt_tokens_details.cached_tokens` = cache read tokens. Other block types (thinking,
//! server tool blocks: the request translation refuses what produces them) are left out.
//!
//! **OpenAI `chat.completion` -> Anthropic `message`** ([`openai_to_anthropic`]): `id` ->
//! `"msg_" + id` (without `chatcmpl-`); `model`; `choices[0]` only; `content` and `refusal` ->
//! text blocks; `tool_calls` -> `tool_use` blocks with `input` parsed from `arguments` (empty
//! -> `{}`; not a JSON object -> the answer is untranslatable, None); `finish_reason` stop ->
//! end_turn, length -> max_tokens, tool_calls/function_call -> tool_use, content_filter ->
//! refusal; `stop_sequence` null (OpenAI does not say which one matched); `usage`
//! input_tokens = prompt - cached, cache_read_input_tokens = cached, output_tokens =
//! completion tokens.
//!
//! **Errors** keep the message text and map the type (OpenAI type/code <-> Anthropic type):
//! invalid_request_error <-> invalid_request_error/null; authentication_error <->
//! invalid_request_error/invalid_api_key; permission_error <->
//! invalid_request_error/permission_denied; not_found_error <-> invalid_request_error/not_found
//! (also model_not_found); request_too_large <-> invalid_request_error/request_too_large;
//! rate_limit_error <-> requests/rate_limit_exceeded (also tokens); billing_error <->
//! insufficient_quota; api_error <-> server_error/null; overloaded_error <->
//! server_error/server_is_overloaded (also any type/code/message saying "overloaded");
//! timeout_error <-> server_error/timeout. An unknown type falls back on the HTTP status; a
//! body that is not the expected JSON keeps its first 512 bytes of text as the message.

use serde_json::{json, Map, Value};

/// Longest message kept from an error body that is not JSON.
const MAX_RAW_MESSAGE: usize = 512;

/// An Anthropic `message` JSON as an OpenAI `chat.completion` JSON. None if it does not parse.
pub fn anthropic_to_openai(body: &[u8], created_s: u64) -> Option<Vec<u8>> {
    let msg: Value = serde_json::from_slice(body).ok()?;
    let blocks = msg.get("content")?.as_array()?;
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.get_or_insert_with(String::new).push_str(b.get("text")?.as_str()?),
            Some("tool_use") => {
                let input = b.get("input").unwrap_or(&Value::Null);
                let arguments = if input.is_null() { "{}".to_owned() } else { input.to_string() };
                calls.push(json!({
                    "id": b.get("id")?.as_str()?,
                    "type": "function",
                    "function": {"name": b.get("name")?.as_str()?, "arguments": arguments},
                }));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert("content".into(), text.map_or(Value::Null, Value::from));
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let finish = msg.get("stop_reason").and_then(Value::as_str).map(finish_reason);
    let id = msg.get("id").and_then(Value::as_str).unwrap_or_default();
    let model = msg.get("model").and_then(Value::as_str).unwrap_or_default();
    let mut out = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
    });
    if let (Some(usage), Some(o)) = (msg.get("usage").filter(|u| u.is_object()), out.as_object_mut()) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (input, output) = (n("input_tokens"), n("output_tokens"));
        let (created, read) = (n("cache_creation_input_tokens"), n("cache_read_input_tokens"));
        let prompt = input.saturating_add(created).saturating_add(read);
        o.insert(
            "usage".into(),
            json!({
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt.saturating_add(output),
                "prompt_tokens_details": {"cached_tokens": read},
            }),
        );
    }
    serde_json::to_vec(&out).ok()
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// An OpenAI `chat.completion` JSON as an Anthropic `message` JSON. None if it does not parse.
pub fn openai_to_anthropic(body: &[u8]) -> Option<Vec<u8>> {
    let completion: Value = serde_json::from_slice(body).ok()?;
    let choice = completion.get("choices")?.as_array()?.first()?;
    let message = choice.get("message")?;
    let mut content = Vec::new();
    for key in ["content", "refusal"] {
        if let Some(t) = message.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": t}));
        }
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            let f = c.get("function")?;
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or_default();
            let input: Value = if args.trim().is_empty() { json!({}) } else { serde_json::from_str(args).ok()? };
            if !input.is_object() {
                return None;
            }
            content.push(json!({
                "type": "tool_use",
                "id": c.get("id")?.as_str()?,
                "name": f.get("name")?.as_str()?,
                "input": input,
            }));
        }
    }
    let id = completion.get("id").and_then(Value::as_str).unwrap_or_default();
    let id = id.strip_prefix("chatcmpl-").unwrap_or(id);
    let usage = completion.get("usage");
    let n = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    let cached = usage
        .and_then(|u| u.get("prompt_tokens_details"))
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let prompt = n("prompt_tokens");
    let out = json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").and_then(Value::as_str).unwrap_or_default(),
        "content": content,
        "stop_reason": choice.get("finish_reason").and_then(Value::as_str).map(stop_reason),
        "stop_sequence": null,
        "usage": {
            "input_tokens": prompt.saturating_sub(cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": n("completion_tokens"),
        },
    });
    serde_json::to_vec(&out).ok()
}

/// Anthropic error type -> OpenAI (type, code). `status` decides when the type is unknown.
pub fn openai_error_kind(anthropic_type: &str, status: u16) -> (&'static str, Option<&'static str>) {
    match anthropic_type {
        "invalid_request_error" => ("invalid_request_error", None),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("invalid_request_error", Some("permission_denied")),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("requests", Some("rate_limit_exceeded")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        "api_error" => ("server_error", None),
        "overloaded_error" => ("server_error", Some("server_is_overloaded")),
        "timeout_error" => ("server_error", Some("timeout")),
        _ => match anthropic_type_for_status(status) {
            "api_error" => ("server_error", None),
            known => openai_error_kind(known, 0),
        },
    }
}

/// Anthropic error type for an HTTP status alone (`api_error` when it says nothing).
pub fn anthropic_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// OpenAI error (type, code, message) -> Anthropic error type. `status` 0 means unknown (an
/// error inside a stream).
pub fn anthropic_error_kind(openai_type: &str, code: &str, message: &str, status: u16) -> &'static str {
    if says_overloaded(openai_type) || says_overloaded(code) || says_overloaded(message) {
        return "overloaded_error";
    }
    match code {
        "invalid_api_key" => return "authentication_error",
        "permission_denied" => return "permission_error",
        "not_found" | "model_not_found" => return "not_found_error",
        "request_too_large" => return "request_too_large",
        "rate_limit_exceeded" => return "rate_limit_error",
        "insufficient_quota" => return "billing_error",
        "timeout" => return "timeout_error",
        _ => {}
    }
    match openai_type {
        "requests" | "tokens" | "rate_limit_error" => return "rate_limit_error",
        "insufficient_quota" => return "billing_error",
        "authentication_error" => return "authentication_error",
        "permission_error" => return "permission_error",
        "not_found_error" => return "not_found_error",
        _ => {}
    }
    if status != 0 {
        return anthropic_type_for_status(status);
    }
    match openai_type {
        "invalid_request_error" => "invalid_request_error",
        _ => "api_error",
    }
}

/// Does an error field say the server is overloaded?
pub fn says_overloaded(s: &str) -> bool {
    s.as_bytes().windows(10).any(|w| w.eq_ignore_ascii_case(b"overloaded"))
}

/// The message to keep from an error body that is not the expected JSON.
fn raw_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body.get(..MAX_RAW_MESSAGE).unwrap_or(body));
    let text = text.trim();
    if text.is_empty() {
        format!("upstream answered HTTP {status}")
    } else {
        text.to_owned()
    }
}

fn as_str(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or_default()
}

/// An Anthropic error answer (`{"type":"error","error":{...}}`) as an OpenAI error body.
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error")).filter(|e| e.is_object());
    let (kind, message) = match err {
        Some(e) => (as_str(e.get("type")), as_str(e.get("message")).to_owned()),
        None => ("", raw_message(status, body)),
    };
    openai_error_body(kind, status, &message)
}

/// `{"error":{"message","type","param":null,"code"}}` for an Anthropic error type.
pub fn openai_error_body(anthropic_type: &str, status: u16, message: &str) -> Vec<u8> {
    let (kind, code) = openai_error_kind(anthropic_type, status);
    let out = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    serde_json::to_vec(&out).unwrap_or_default()
}

/// An OpenAI error answer (`{"error":{...}}`) as an Anthropic error body.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let (kind, message) = openai_error_fields(err, status, body);
    anthropic_error_body(kind, &message)
}

/// Anthropic type and message for an OpenAI `error` value (an object, or a bare string as some
/// compatible servers send), with the raw body as the message when there is none.
pub fn openai_error_fields(err: Option<&Value>, status: u16, body: &[u8]) -> (&'static str, String) {
    match err {
        Some(e @ Value::Object(_)) => {
            let code = match e.get("code") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            let message = as_str(e.get("message"));
            let kind = anthropic_error_kind(as_str(e.get("type")), &code, message, status);
            let message = if message.is_empty() { raw_message(status, body) } else { message.to_owned() };
            (kind, message)
        }
        Some(Value::String(s)) => (anthropic_error_kind("", "", s, status), s.clone()),
        _ => {
            let message = raw_message(status, body);
            (anthropic_error_kind("", "", &message, status), message)
        }
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_error_body(anthropic_type: &str, message: &str) -> Vec<u8> {
    let out = json!({"type": "error", "error": {"type": anthropic_type, "message": message}});
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! Golden answers and errors written from the public API references:
    //! - Anthropic Messages (response, errors): https://docs.anthropic.com/en/api/messages,
    //!   https://docs.anthropic.com/en/api/errors
    //! - OpenAI chat completion object, errors: https://platform.openai.com/docs/api-reference/chat/object,
    //!   https://platform.openai.com/docs/guides/error-codes
    use super::*;

    const A2O: &str = include_str!("../../tests/golden/translate/response_anthropic_to_openai.json");
    const O2A: &str = include_str!("../../tests/golden/translate/response_openai_to_anthropic.json");
    const ERRORS: &str = include_str!("../../tests/golden/translate/errors.json");

    fn cases(s: &str) -> Vec<Value> {
        serde_json::from_str::<Value>(s).unwrap().as_array().unwrap().clone()
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn anthropic_answers_as_chat_completions() {
        let cases = cases(A2O);
        let mut reasons: Vec<String> = Vec::new();
        for c in &cases {
            let body = serde_json::to_vec(&c["anthropic"]).unwrap();
            let got = parse(&anthropic_to_openai(&body, 1_700_000_000).unwrap());
            assert_eq!(got, c["openai"], "{}", c["name"]);
            reasons.push(got["choices"][0]["finish_reason"].as_str().unwrap().into());
        }
        for r in ["stop", "length", "tool_calls", "content_filter"] {
            assert!(reasons.iter().any(|x| x == r), "{r} not covered");
        }
    }

    #[test]
    fn chat_completions_as_anthropic_answers() {
        for c in cases(O2A) {
            let body = serde_json::to_vec(&c["openai"]).unwrap();
            let got = parse(&openai_to_anthropic(&body).unwrap());
            assert_eq!(got, c["anthropic"], "{}", c["name"]);
        }
    }

    #[test]
    fn answer_round_trip() {
        for c in cases(A2O) {
            let body = serde_json::to_vec(&c["anthropic"]).unwrap();
            let back = parse(&openai_to_anthropic(&anthropic_to_openai(&body, 1).unwrap()).unwrap());
            assert_eq!(
                back["content"].as_array().unwrap().iter().filter(|b| b["type"] == "tool_use").count(),
                c["anthropic"]["content"].as_array().unwrap().iter().filter(|b| b["type"] == "tool_use").count()
            );
            let want_stop = match c["anthropic"]["stop_reason"].as_str().unwrap() {
                "stop_sequence" => "end_turn",
                s => s,
            };
            assert_eq!(back["stop_reason"], want_stop, "{}", c["name"]);
            assert_eq!(back["usage"]["output_tokens"], c["anthropic"]["usage"]["output_tokens"]);
        }
    }

    #[test]
    fn unparseable_answers_are_none() {
        assert!(anthropic_to_openai(b"not json", 0).is_none());
        assert!(anthropic_to_openai(b"{\"type\":\"error\",\"error\":{}}", 0).is_none());
        assert!(openai_to_anthropic(b"{}").is_none());
        assert!(openai_to_anthropic(b"{\"choices\":[]}").is_none());
        let bad_args = br#"{"id":"x","model":"m","choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":"length"}]}"#;
        assert!(openai_to_anthropic(bad_args).is_none());
    }

    #[test]
    fn errors_both_ways() {
        let all: Value = serde_json::from_str(ERRORS).unwrap();
        for c in all["anthropic_to_openai"].as_array().unwrap() {
            let status = c["status"].as_u64().unwrap() as u16;
            let got = parse(&anthropic_error_to_openai(status, &serde_json::to_vec(&c["in"]).unwrap()));
            assert_eq!(got, c["out"], "{status}");
            // And back: the type and message survive.
            let back = parse(&openai_error_to_anthropic(status, &serde_json::to_vec(&got).unwrap()));
            assert_eq!(back["error"], c["in"]["error"], "{status} round trip");
        }
        for c in all["openai_to_anthropic"].as_array().unwrap() {
            let status = c["status"].as_u64().unwrap() as u16;
            let got = parse(&openai_error_to_anthropic(status, &serde_json::to_vec(&c["in"]).unwrap()));
            assert_eq!(got, c["out"], "{status}");
        }
    }

    #[test]
    fn error_bodies_that_are_not_json_keep_their_text() {
        let got = parse(&anthropic_error_to_openai(502, b"<html>Bad Gateway</html>"));
        assert_eq!(got["error"]["message"], "<html>Bad Gateway</html>");
        assert_eq!(got["error"]["type"], "server_error");
        let got = parse(&openai_error_to_anthropic(529, b""));
        assert_eq!(
            got,
            serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "upstream answered HTTP 529"}})
        );
        let got = parse(&openai_error_to_anthropic(429, b"{\"error\":\"slow down\"}"));
        assert_eq!(got["error"]["type"], "rate_limit_error");
        assert_eq!(got["error"]["message"], "slow down");
        let long = vec![b'x'; 5000];
        let got = parse(&openai_error_to_anthropic(500, &long));
        assert_eq!(got["error"]["message"].as_str().unwrap().len(), MAX_RAW_MESSAGE);
        let got = parse(&anthropic_error_to_openai(404, b"{\"error\":{\"type\":\"new_kind\",\"message\":\"m\"}}"));
        assert_eq!(got["error"]["code"], "not_found");
    }
}

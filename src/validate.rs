//! What a client sends, checked before any of it becomes a header, a URL path or a stat: the
//! request body must be a JSON object the filter can read, and a model name must be short and of
//! a small alphabet. A request that fails is answered 400 `invalid_request_error` in the client's
//! own format, as the provider itself would answer, and counts as a client error: no breaker is
//! touched and no provider is tried.

use crate::config::ClientApi;
use crate::degraded::LocalResponse;
use crate::translate::response;

/// Longest model name accepted (the longest real ones, Bedrock inference-profile ARNs, are
/// about 100 bytes).
pub const MAX_MODEL_LEN: usize = 256;

/// Is `model` a name the filter may put into a header, a path segment or a stat tag? Letters,
/// digits and `. _ - : @ / +` (Bedrock ids and ARNs, Vertex versions, fine-tune names), 1 to
/// [`MAX_MODEL_LEN`] bytes: no control character, no space, nothing that splits a header.
pub fn valid_model(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= MAX_MODEL_LEN
        && model.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:@/+".contains(&b))
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    /// Not UTF-8, not JSON, nested too deep, or not a JSON object.
    NotJson(String),
    /// `model` is missing where a host needs it, or is not a valid model name.
    Model(String),
}

impl BadRequest {
    pub fn message(&self) -> String {
        match self {
            BadRequest::NotJson(why) => format!("The request body is not valid JSON: {why}"),
            BadRequest::Model(why) => format!("model: {why}"),
        }
    }
}

/// Parses a request body: a JSON object, or why not.
pub fn parse_body(body: &[u8]) -> Result<serde_json::Value, BadRequest> {
    let text = std::str::from_utf8(body).map_err(|_| BadRequest::NotJson("it is not UTF-8".to_string()))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadRequest::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(BadRequest::NotJson("the top level must be an object".to_string()));
    }
    Ok(value)
}

/// The two top-level fields the filter needs from a body, read without building its tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peeked {
    /// The valid model name, if the body has one.
    pub model: Option<String>,
    pub stream: bool,
}

#[derive(serde::Deserialize)]
struct Top {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// Checks that a body is a JSON object (UTF-8, well-formed) and reads its `model` (checked with
/// [`check_model`]) and `stream`, skipping everything else without allocating it.
pub fn peek_body(body: &[u8]) -> Result<Peeked, BadRequest> {
    let text = std::str::from_utf8(body).map_err(|_| BadRequest::NotJson("it is not UTF-8".to_string()))?;
    if !text.trim_start().starts_with('{') {
        return Err(BadRequest::NotJson("the top level must be an object".to_string()));
    }
    let top: Top = serde_json::from_str(text).map_err(|e| BadRequest::NotJson(e.to_string()))?;
    let model = match top.model {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let obj = serde_json::json!({ "model": v });
            check_model(&obj)?.map(str::to_string)
        }
    };
    Ok(Peeked { model, stream: top.stream.and_then(|v| v.as_bool()).unwrap_or(false) })
}

/// Checks the body's `model`, if it has one (a missing model is the host's to refuse, unless the
/// filter must map it).
pub fn check_model(body: &serde_json::Value) -> Result<Option<&str>, BadRequest> {
    match body.get("model") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(m)) if valid_model(m) => Ok(Some(m.as_str())),
        Some(serde_json::Value::String(m)) if m.len() > MAX_MODEL_LEN => {
            Err(BadRequest::Model(format!("must be at most {MAX_MODEL_LEN} characters")))
        }
        Some(serde_json::Value::String(_)) => Err(BadRequest::Model(
            "must be letters, digits and . _ - : @ / + only (no spaces or control characters)".to_string(),
        )),
        Some(_) => Err(BadRequest::Model("must be a string".to_string())),
    }
}

/// The 400 a client gets for a request it got wrong, in its own format.
pub fn bad_request(api: ClientApi, why: &BadRequest) -> LocalResponse {
    let message = why.message();
    let body = match api {
        ClientApi::Anthropic => response::anthropic_error_body("invalid_request_error", &message),
        ClientApi::OpenAi => response::openai_error_body("invalid_request_error", 400, &message),
    };
    LocalResponse { status: 400, headers: vec![("content-type", "application/json".to_string())], body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_real_hosts_use_are_valid() {
        for m in [
            "claude-opus-4-6",
            "claude-3-5-sonnet@20240620",
            "us.anthropic.claude-opus-4-6-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-6-v1:0",
            "gpt-4o-2024-11-20",
            "ft:gpt-4o-mini:my-org:custom:abc123",
            "accounts/fireworks/models/llama-v3p1-8b-instruct",
        ] {
            assert!(valid_model(m), "{m}");
        }
    }

    #[test]
    fn header_splitting_and_huge_names_are_refused() {
        for m in ["", "claude\r\nx-injected: 1", "a b", "claude\u{0}", "cl\u{e9}ude", "a\"b", "a%0d%0a", "a?b"] {
            assert!(!valid_model(m), "{m:?}");
        }
        assert!(!valid_model(&"a".repeat(MAX_MODEL_LEN + 1)));
        assert!(valid_model(&"a".repeat(MAX_MODEL_LEN)));
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused_with_a_reason() {
        assert!(matches!(parse_body(b"{not json"), Err(BadRequest::NotJson(_))));
        assert!(matches!(parse_body(b"\xff\xfe{}"), Err(BadRequest::NotJson(m)) if m.contains("UTF-8")));
        assert!(matches!(parse_body(b"[1,2]"), Err(BadRequest::NotJson(_))));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(1000), "]".repeat(1000));
        assert!(matches!(parse_body(deep.as_bytes()), Err(BadRequest::NotJson(m)) if m.contains("recursion")));
        assert!(parse_body(br#"{"model":"m"}"#).is_ok());
    }

    #[test]
    fn the_peek_reads_model_and_stream_and_refuses_what_parse_refuses() {
        let p = peek_body(br#"{"messages":[{"role":"user","content":"model"}],"model":"m-1","stream":true}"#).unwrap();
        assert_eq!(p, Peeked { model: Some("m-1".into()), stream: true });
        assert_eq!(peek_body(b" {}").unwrap(), Peeked::default());
        for bad in [&b"{not json"[..], b"[1]", b"\xff{}", br#"{"model":"a\r\nb"}"#, br#"{"model":7}"#, b"{} x"] {
            assert!(peek_body(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_refusal_speaks_the_clients_format() {
        let r = bad_request(ClientApi::Anthropic, &BadRequest::Model("must be a string".into()));
        assert_eq!(r.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let r = bad_request(ClientApi::OpenAi, &BadRequest::NotJson("x".into()));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let injected = serde_json::json!({"model": "claude\r\nx-injected: 1"});
        assert!(check_model(&injected).is_err());
        assert_eq!(check_model(&serde_json::json!({})), Ok(None));
        assert!(check_model(&serde_json::json!({"model": 5})).is_err());
    }
}

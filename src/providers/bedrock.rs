//! Claude on AWS Bedrock: where a request goes, what its body must look like, and how Bedrock's
//! error bodies read as Anthropic errors. (The streamed answer's event-stream decoding lives in
//! [`super::bedrock_stream`].)
//!
//! `POST /model/{modelId}/invoke` (`/invoke-with-response-stream` for streams), an Anthropic
//! Messages body without `model` and `stream`, with `"anthropic_version": "bedrock-2023-05-31"`,
//! `Authorization: Bearer <Bedrock API key>`. Errors are `{"message": "..."}` with the type in
//! the `x-amzn-errortype` header (ThrottlingException 429, ServiceUnavailableException 503, ...).
//!
//! Reference: https://docs.anthropic.com/en/api/claude-on-amazon-bedrock and
//! https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html

use crate::translate::response::{anthropic_error_body, anthropic_type_for_status};
use serde_json::{Map, Value};

pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

pub fn path(model_id: &str, stream: bool) -> String {
    let action = if stream { "invoke-with-response-stream" } else { "invoke" };
    format!("/model/{}/{action}", super::percent_encode(model_id))
}

/// Turns an Anthropic Messages body into Bedrock's: the model moves to the URL, the stream
/// choice to the action.
pub fn envelope(body: &mut Map<String, Value>) {
    body.remove("model");
    body.remove("stream");
    body.insert("anthropic_version".into(), Value::from(ANTHROPIC_VERSION));
}

/// A Bedrock error body (`{"message": ...}`) as an Anthropic error body.
pub fn error_to_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| format!("Bedrock answered HTTP {status}"));
    anthropic_error_body(anthropic_type_for_status(status), &message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Shapes from https://docs.anthropic.com/en/api/claude-on-amazon-bedrock and the
    // InvokeModel API reference (model ids such as `us.anthropic.claude-opus-4-6-v1:0`).
    #[test]
    fn path_encodes_the_model_id_and_picks_the_action() {
        assert_eq!(
            path("us.anthropic.claude-opus-4-6-v1:0", false),
            "/model/us.anthropic.claude-opus-4-6-v1%3A0/invoke"
        );
        assert_eq!(
            path("anthropic.claude-3-haiku-20240307-v1:0", true),
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream"
        );
        // An inference-profile ARN keeps its slashes inside one path segment.
        assert_eq!(path("arn:aws:bedrock:x/y", false), "/model/arn%3Aaws%3Abedrock%3Ax%2Fy/invoke");
    }

    #[test]
    fn body_loses_model_and_stream_and_gains_the_version() {
        let mut b =
            json!({"model": "m", "stream": true, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        envelope(b.as_object_mut().unwrap());
        assert_eq!(
            b,
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn errors_read_as_anthropic_errors() {
        let v: Value =
            serde_json::from_slice(&error_to_anthropic(400, br#"{"message":"Malformed input request"}"#)).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Malformed input request"}})
        );
        let v: Value = serde_json::from_slice(&error_to_anthropic(403, b"<html>")).unwrap();
        assert_eq!(v["error"]["type"], "permission_error");
    }
}

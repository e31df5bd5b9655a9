//! Claude on Google Vertex AI: where a request goes and what its body must look like.
//!
//! `POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`
//! (`:streamRawPredict` for `"stream": true`), an Anthropic Messages body without `model` and with
//! `"anthropic_version": "vertex-2023-10-16"`, `Authorization: Bearer <access token>`. Answers and
//! SSE streams are Anthropic-shaped; errors may be Google-shaped (`{"error":{"code","message",
//! "status"}}`), which [`crate::response_rewrite`] turns into Anthropic errors.
//!
//! Reference: https://docs.anthropic.com/en/api/claude-on-vertex-ai and
//! https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude

use crate::config::VertexSettings;
use serde_json::{Map, Value};

pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

pub fn path(v: &VertexSettings, model: &str, stream: bool) -> String {
    let verb = if stream { "streamRawPredict" } else { "rawPredict" };
    format!(
        "/v1/projects/{}/locations/{}/publishers/anthropic/models/{}:{verb}",
        v.project,
        v.region,
        super::percent_encode(model)
    )
}

/// Turns an Anthropic Messages body into Vertex's: the model moves to the URL.
pub fn envelope(body: &mut Map<String, Value>) {
    body.remove("model");
    body.insert("anthropic_version".into(), Value::from(ANTHROPIC_VERSION));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Shapes from https://docs.anthropic.com/en/api/claude-on-vertex-ai ("Making requests").
    #[test]
    fn path_and_body_match_the_vertex_reference() {
        let v = VertexSettings { project: "my-project".into(), region: "us-east5".into() };
        assert_eq!(
            path(&v, "claude-opus-4-6@20260201", false),
            "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-opus-4-6@20260201:rawPredict"
        );
        assert!(path(&v, "claude-opus-4-6", true).ends_with("/models/claude-opus-4-6:streamRawPredict"));
        let mut b = json!({"model": "claude-opus-4-6", "max_tokens": 10, "stream": true, "messages": []});
        envelope(b.as_object_mut().unwrap());
        assert_eq!(
            b,
            json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 10, "stream": true, "messages": []})
        );
    }
}

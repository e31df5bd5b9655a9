//! Request bodies: Anthropic Messages <-> OpenAI Chat Completions.

use super::Untranslatable;
use serde_json::Value;

/// What the target request needs besides the client's body.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions<'a> {
    /// The model name the target provider expects (after model mapping).
    pub model: &'a str,
    /// `max_tokens` for an Anthropic request when the OpenAI client gave none.
    pub default_max_tokens: u32,
}

/// An Anthropic Messages request as an OpenAI Chat Completions request.
pub fn anthropic_to_openai(body: &Value, opts: &RequestOptions<'_>) -> Result<Value, Untranslatable> {
    let _ = (body, opts);
    Err(Untranslatable { field: "(root)".into(), reason: "not implemented".into() })
}

/// An OpenAI Chat Completions request as an Anthropic Messages request.
pub fn openai_to_anthropic(body: &Value, opts: &RequestOptions<'_>) -> Result<Value, Untranslatable> {
    let _ = (body, opts);
    Err(Untranslatable { field: "(root)".into(), reason: "not implemented".into() })
}

//! Cross-API translation between the Anthropic Messages API and OpenAI Chat Completions, both
//! directions: requests ([`request`]), JSON answers and error bodies ([`response`]), and SSE
//! streams translated event by event ([`stream`]). Pure functions and state machines; nothing
//! here knows the host.
//!
//! The rule for requests: a field is translated when the target API can say the same thing,
//! refused ([`Untranslatable`], naming the field) when it would change the answer and cannot
//! be said, and ignored only when it cannot change the answer (each module lists which).

pub mod request;
pub mod response;
pub mod stream;

/// A request feature the target API cannot express: the client gets a 400 in its own format
/// naming `field`, or the provider is skipped, as the chain says. Never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    /// JSON path in the client's request, e.g. `messages[2].content[0].source`.
    pub field: String,
    pub reason: String,
}

impl Untranslatable {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl std::fmt::Display for Untranslatable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

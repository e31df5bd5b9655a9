//! Non-streaming answers and error bodies: Anthropic Messages <-> OpenAI Chat Completions.

/// An Anthropic `message` JSON as an OpenAI `chat.completion` JSON. None if it does not parse.
pub fn anthropic_to_openai(body: &[u8], created_s: u64) -> Option<Vec<u8>> {
    let _ = (body, created_s);
    None
}

/// An OpenAI `chat.completion` JSON as an Anthropic `message` JSON. None if it does not parse.
pub fn openai_to_anthropic(body: &[u8]) -> Option<Vec<u8>> {
    let _ = body;
    None
}

/// An Anthropic error answer (`{"type":"error","error":{...}}`) as an OpenAI error body.
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let _ = (status, body);
    Vec::new()
}

/// An OpenAI error answer (`{"error":{...}}`) as an Anthropic error body.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let _ = (status, body);
    Vec::new()
}

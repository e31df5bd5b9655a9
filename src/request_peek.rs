//! A streaming look into a JSON request body for the two top-level fields the filter needs
//! without parsing the body: `model` (a string) and `stream` (a boolean). Fed chunk by chunk as
//! the body passes; no allocation beyond a small bounded buffer for the model name; nested
//! objects, strings and escapes are skipped correctly, so a `"model"` inside `messages` is never
//! mistaken for the top-level one.

/// Longest model name kept.
pub const MAX_MODEL: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before the opening `{`.
    Start,
    /// Inside the top-level object, expecting a key (or `}`).
    ExpectKey,
    /// Inside a top-level key string.
    Key,
    /// After a key, expecting `:`.
    ExpectColon,
    /// After `:`, expecting a value.
    ExpectValue,
    /// Inside a top-level string value.
    StrValue,
    /// Inside a top-level literal (number, true, false, null).
    Literal,
    /// Inside a nested object or array at `depth` (> 0).
    Nested,
    /// After a value, expecting `,` or `}`.
    AfterValue,
    /// Past the end, or the body is not a JSON object.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Other,
    Model,
    Stream,
}

#[derive(Debug, Clone)]
pub struct RequestPeek {
    st: St,
    escape: bool,
    in_nested_string: bool,
    depth: u32,
    key: [u8; 8],
    key_len: usize,
    key_overflow: bool,
    field: Field,
    literal: [u8; 5],
    literal_len: usize,
    model: Vec<u8>,
    model_found: bool,
    stream: Option<bool>,
}

impl Default for RequestPeek {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestPeek {
    pub fn new() -> Self {
        RequestPeek {
            st: St::Start,
            escape: false,
            in_nested_string: false,
            depth: 0,
            key: [0; 8],
            key_len: 0,
            key_overflow: false,
            field: Field::Other,
            literal: [0; 5],
            literal_len: 0,
            model: Vec::new(),
            model_found: false,
            stream: None,
        }
    }

    /// The top-level `model`, once seen (lossy UTF-8, at most [`MAX_MODEL`] bytes).
    pub fn model(&self) -> Option<String> {
        self.model_found.then(|| String::from_utf8_lossy(&self.model).into_owned())
    }

    /// The top-level `stream` flag (`false` when absent or not a boolean).
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Is there nothing more to learn from the rest of the body?
    pub fn done(&self) -> bool {
        self.st == St::Done
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.st == St::Done {
                return;
            }
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        match self.st {
            St::Start => match b {
                b'{' => self.st = St::ExpectKey,
                b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF => {}
                _ => self.st = St::Done,
            },
            St::ExpectKey => match b {
                b'"' => {
                    self.st = St::Key;
                    self.key_len = 0;
                    self.key_overflow = false;
                    self.escape = false;
                }
                b'}' => self.st = St::Done,
                _ => {}
            },
            St::Key => {
                if self.escape {
                    self.escape = false;
                    self.key_overflow = true; // no field we look for has escapes
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    let key = self.key.get(..self.key_len).unwrap_or_default();
                    self.field = match (self.key_overflow, key) {
                        (false, b"model") => Field::Model,
                        (false, b"stream") => Field::Stream,
                        _ => Field::Other,
                    };
                    self.st = St::ExpectColon;
                } else if let Some(slot) = self.key.get_mut(self.key_len) {
                    *slot = b;
                    self.key_len += 1;
                } else {
                    self.key_overflow = true;
                }
            }
            St::ExpectColon => {
                if b == b':' {
                    self.st = St::ExpectValue;
                }
            }
            St::ExpectValue => match b {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'"' => {
                    self.st = St::StrValue;
                    self.escape = false;
                    if self.field == Field::Model {
                        self.model.clear();
                    }
                }
                b'{' | b'[' => {
                    self.st = St::Nested;
                    self.depth = 1;
                    self.in_nested_string = false;
                    self.escape = false;
                }
                _ => {
                    self.st = St::Literal;
                    self.literal_len = 0;
                    self.push_literal(b);
                }
            },
            St::StrValue => {
                if self.escape {
                    self.escape = false;
                    self.push_model(b);
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    if self.field == Field::Model {
                        self.model_found = true;
                    }
                    self.st = St::AfterValue;
                } else {
                    self.push_model(b);
                }
            }
            St::Literal => match b {
                b',' => {
                    self.end_literal();
                    self.st = St::ExpectKey;
                }
                b'}' => {
                    self.end_literal();
                    self.st = St::Done;
                }
                b' ' | b'\t' | b'\r' | b'\n' => {
                    self.end_literal();
                    self.st = St::AfterValue;
                }
                _ => self.push_literal(b),
            },
            St::Nested => {
                if self.in_nested_string {
                    if self.escape {
                        self.escape = false;
                    } else if b == b'\\' {
                        self.escape = true;
                    } else if b == b'"' {
                        self.in_nested_string = false;
                    }
                } else {
                    match b {
                        b'"' => self.in_nested_string = true,
                        b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                        b'}' | b']' => {
                            self.depth = self.depth.saturating_sub(1);
                            if self.depth == 0 {
                                self.st = St::AfterValue;
                            }
                        }
                        _ => {}
                    }
                }
            }
            St::AfterValue => match b {
                b',' => self.st = St::ExpectKey,
                b'}' => self.st = St::Done,
                _ => {}
            },
            St::Done => {}
        }
    }

    fn push_model(&mut self, b: u8) {
        if self.field == Field::Model && self.model.len() < MAX_MODEL {
            self.model.push(b);
        }
    }

    fn push_literal(&mut self, b: u8) {
        if let Some(slot) = self.literal.get_mut(self.literal_len) {
            *slot = b;
            self.literal_len += 1;
        } else {
            self.literal_len = self.literal.len() + 1; // too long to be true/false
        }
    }

    fn end_literal(&mut self) {
        if self.field == Field::Stream {
            self.stream = match self.literal.get(..self.literal_len) {
                Some(b"true") => Some(true),
                Some(b"false") => Some(false),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peek(body: &str) -> (Option<String>, bool) {
        let mut p = RequestPeek::new();
        p.feed(body.as_bytes());
        (p.model(), p.stream())
    }

    #[test]
    fn finds_top_level_model_and_stream() {
        let body = r#"{"max_tokens":64,"messages":[{"role":"user","content":"say \"model\": x, {\"stream\":true}"}],"model":"claude-opus-4-6","stream":true}"#;
        assert_eq!(peek(body), (Some("claude-opus-4-6".into()), true));
        assert_eq!(peek(r#"{"model":"m","stream":false}"#), (Some("m".into()), false));
        assert_eq!(peek(r#"{ "stream" : true , "model" : "m" }"#), (Some("m".into()), true));
        assert_eq!(peek(r#"{"model":"m"}"#), (Some("m".into()), false));
    }

    #[test]
    fn nested_fields_are_not_top_level() {
        let body = r#"{"metadata":{"model":"nested","stream":true},"tools":[{"stream":true}],"model":"top"}"#;
        assert_eq!(peek(body), (Some("top".into()), false));
    }

    #[test]
    fn every_split_point_gives_the_same_answer() {
        let body = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a\\\"b}"}]}],"model":"claude-x","stream":true}"#;
        let whole = peek(body);
        assert_eq!(whole, (Some("claude-x".into()), true));
        let b = body.as_bytes();
        for i in 0..b.len() {
            let mut p = RequestPeek::new();
            p.feed(&b[..i]);
            p.feed(&b[i..]);
            assert_eq!((p.model(), p.stream()), whole, "split at {i}");
        }
    }

    #[test]
    fn non_json_and_garbage_are_harmless() {
        assert_eq!(peek("not json"), (None, false));
        assert_eq!(peek(""), (None, false));
        assert_eq!(peek(r#"{"stream":"yes","model":123}"#), (None, false));
        let mut p = RequestPeek::new();
        let junk: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        p.feed(b"{");
        p.feed(&junk);
        let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(1000));
        assert_eq!(peek(&long).0.unwrap().len(), MAX_MODEL);
    }
}

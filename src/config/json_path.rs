//! The path of the JSON value at a byte offset of a document (`providers[1].credential.env`),
//! so that a config error from serde (which knows the line and column) names its field, without
//! wrapping every deserializer (`serde_path_to_error` cost ~67 KB of the module).

enum Frame {
    /// An object and the key of the member being read (None before its first key).
    Object(Option<String>),
    /// An array and the index of the element being read.
    Array(usize),
}

/// The byte offset of serde_json's `line` (1-based) and `column` (1-based, 0 when the error is
/// at the start of the line) in `json`.
pub fn offset(json: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    let mut seen = 1;
    for (i, b) in json.iter().enumerate() {
        if seen == line {
            break;
        }
        if *b == b'\n' {
            seen += 1;
            start = i + 1;
        }
    }
    start.saturating_add(column).min(json.len())
}

/// The path of the value being read at `offset` (empty at the top level).
pub fn path_at(json: &[u8], offset: usize) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    let end = offset.min(json.len());
    let mut awaiting_key = false;
    while i < end {
        let Some(&b) = json.get(i) else { break };
        match b {
            b'{' => {
                stack.push(Frame::Object(None));
                awaiting_key = true;
            }
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
                awaiting_key = false;
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(_)) => awaiting_key = true,
                None => {}
            },
            b':' => awaiting_key = false,
            b'"' => {
                let mut j = i + 1;
                let mut s = Vec::new();
                while j < json.len() {
                    match json.get(j) {
                        Some(b'\\') => {
                            if let Some(&c) = json.get(j + 1) {
                                s.push(c);
                            }
                            j += 2;
                        }
                        Some(b'"') => break,
                        Some(&c) => {
                            s.push(c);
                            j += 1;
                        }
                        None => break,
                    }
                }
                if awaiting_key {
                    if let Some(Frame::Object(key)) = stack.last_mut() {
                        *key = Some(String::from_utf8_lossy(&s).into_owned());
                    }
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = String::new();
    for f in &stack {
        match f {
            Frame::Object(Some(k)) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Frame::Object(None) => {}
            Frame::Array(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_at_offsets() {
        let j = br#"{"providers":[{"name":"a"},{"name":"b","credential":{"env":"X"}}],"breaker":{"n":1}}"#;
        let at = |needle: &str| {
            let pos = j.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() + needle.len();
            path_at(j, pos)
        };
        assert_eq!(at(r#""env""#), "providers[1].credential.env");
        assert_eq!(at(r#""X""#), "providers[1].credential.env");
        assert_eq!(at(r#""name":"a""#), "providers[0].name");
        assert_eq!(at(r#""n":1"#), "breaker.n");
        assert_eq!(path_at(j, j.len()), "");
        assert_eq!(offset(b"ab\ncd", 2, 1), 4);
        assert_eq!(offset(b"ab\ncd", 1, 2), 2);
    }
}

//! Token usage from a response body as it streams by: the last `"input_tokens":N` and
//! `"output_tokens":N` seen, in a JSON answer or in the events of an SSE stream (Anthropic puts
//! the input count in `message_start` and the running output count in `message_delta`, so the
//! last value of each is the total). Matches only real JSON keys: inside a JSON string a quote
//! is escaped (`\"`), and `"cache_read_input_tokens"` does not end in `"input_tokens"` after a
//! quote. Works across chunk boundaries with a few bytes of state and no allocation.

/// Anthropic's keys and OpenAI's (`prompt_tokens`, `completion_tokens`): even index = input.
const KEYS: [&[u8]; 4] =
    [b"\"input_tokens\":", b"\"output_tokens\":", b"\"prompt_tokens\":", b"\"completion_tokens\":"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageScanner {
    /// Bytes of each key matched so far.
    matched: [usize; 4],
    /// Which key's number is being read (after its colon), and the digits so far.
    reading: Option<usize>,
    value: u64,
    digits: u8,
    input: Option<u64>,
    output: Option<u64>,
}

impl UsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn input_tokens(&self) -> Option<u64> {
        self.input
    }

    pub fn output_tokens(&self) -> Option<u64> {
        self.output
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            // Outside a key or a number only a quote can start a match: jump to the next one.
            if self.reading.is_none() && self.matched == [0; 4] {
                match chunk.iter().position(|&b| b == b'"') {
                    Some(p) => chunk = chunk.get(p..).unwrap_or_default(),
                    None => return,
                }
            }
            let Some((&b, rest)) = chunk.split_first() else { return };
            self.step(b);
            chunk = rest;
        }
    }

    fn step(&mut self, b: u8) {
        if let Some(k) = self.reading {
            match b {
                b'0'..=b'9' if self.digits < 19 => {
                    self.value = self.value * 10 + u64::from(b - b'0');
                    self.digits += 1;
                    return;
                }
                b' ' | b'\t' | b'\r' | b'\n' if self.digits == 0 => return,
                _ => {
                    if self.digits > 0 {
                        let slot = if k % 2 == 0 { &mut self.input } else { &mut self.output };
                        *slot = Some(self.value);
                    }
                    self.reading = None;
                }
            }
        }
        for (k, (key, m)) in KEYS.iter().zip(self.matched.iter_mut()).enumerate() {
            if key.get(*m) == Some(&b) {
                *m += 1;
            } else if b == b'"' {
                *m = 1;
            } else if *m == key.len() - 1 && (b == b' ' || b == b'\t') {
                // whitespace between the key and its colon: keep waiting for the colon
            } else {
                *m = 0;
            }
            if *m == key.len() {
                *m = 0;
                self.reading = Some(k);
                self.value = 0;
                self.digits = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Option<u64>, Option<u64>) {
        let mut s = UsageScanner::new();
        for c in chunks {
            s.feed(c);
        }
        (s.input_tokens(), s.output_tokens())
    }

    #[test]
    fn json_answer() {
        let body = br#"{"id":"msg_1","content":[{"type":"text","text":"the \"input_tokens\":99 trick"}],"usage":{"input_tokens":12,"cache_read_input_tokens":7,"output_tokens":5}}"#;
        assert_eq!(scan(&[body]), (Some(12), Some(5)));
    }

    #[test]
    fn anthropic_stream_takes_the_last_values() {
        let s = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\": 180}}\n\n";
        assert_eq!(scan(&[s]), (Some(42), Some(180)));
        for i in 0..s.len() {
            assert_eq!(scan(&[&s[..i], &s[i..]]), (Some(42), Some(180)), "split at {i}");
        }
    }

    #[test]
    fn openai_usage_keys() {
        let body = br#"{"object":"chat.completion","usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(scan(&[body]), (Some(12), Some(5)));
    }

    #[test]
    fn nothing_or_garbage() {
        assert_eq!(scan(&[b"no usage here"]), (None, None));
        assert_eq!(scan(&[b"\"input_tokens\":\"x\""]), (None, None));
        assert_eq!(scan(&[b"\"output_tokens\":99999999999999999999999"]).1, Some(9_999_999_999_999_999_999));
    }
}

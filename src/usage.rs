//! Token usage from a response body as it streams by: the last `"input_tokens":N` and
//! `"output_tokens":N` seen, in a JSON answer or in the events of an SSE stream (Anthropic puts
//! the input count in `message_start` and the running output count in `message_delta`, so the
//! last value of each is the total). Matches only real JSON keys: inside a JSON string a quote
//! is escaped (`\"`), and `"cache_read_input_tokens"` does not end in `"input_tokens"` after a
//! quote. Works across chunk boundaries with a few bytes of state and no allocation; it jumps
//! from colon to colon (`memchr`) and looks behind each, so most bytes are never stepped through.

/// Anthropic's keys and OpenAI's (`prompt_tokens`, `completion_tokens`): even index = input.
const KEYS: [&[u8]; 4] = [b"\"input_tokens\"", b"\"output_tokens\"", b"\"prompt_tokens\"", b"\"completion_tokens\""];

/// Bytes kept from the previous chunks to look behind a colon: the longest key, and room for
/// whitespace before its colon.
const LOOKBACK: usize = 24;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageScanner {
    /// The last bytes fed (at most [`LOOKBACK`]), for a key split across chunks.
    tail: [u8; LOOKBACK],
    tail_len: usize,
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

    /// The next bytes fed do not follow the last ones (the host skipped some): nothing
    /// half-read carries over the gap.
    pub fn gap(&mut self) {
        self.tail_len = 0;
        self.reading = None;
    }

    /// Jumps from colon to colon (a key ends at each) and looks behind each for one of the
    /// keys; only after one does it read bytes one by one (the number).
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = if self.reading.is_some() { self.read_number(chunk, 0) } else { 0 };
        while self.reading.is_none() {
            let Some(off) = chunk.get(i..).and_then(|rest| memchr::memchr(b':', rest)) else { break };
            let colon = i + off;
            if let Some(k) = self.key_before(chunk, colon) {
                self.reading = Some(k);
                self.value = 0;
                self.digits = 0;
                i = self.read_number(chunk, colon + 1);
            } else {
                i = colon + 1;
            }
        }
        self.remember(chunk);
    }

    /// The key whose closing quote ends right before `colon` (spaces or tabs between them
    /// allowed), looking into the previous chunks' tail when needed.
    fn key_before(&self, chunk: &[u8], colon: usize) -> Option<usize> {
        let mut buf = [0u8; 2 * LOOKBACK];
        let before: &[u8] = if colon >= LOOKBACK {
            chunk.get(colon - LOOKBACK..colon)?
        } else {
            let tail = self.tail.get(..self.tail_len)?;
            let head = chunk.get(..colon)?;
            let n = tail.len() + head.len();
            buf.get_mut(..tail.len())?.copy_from_slice(tail);
            buf.get_mut(tail.len()..n)?.copy_from_slice(head);
            buf.get(..n)?
        };
        let end = before.iter().rposition(|&b| b != b' ' && b != b'\t')? + 1;
        let before = before.get(..end)?;
        KEYS.iter().position(|k| before.ends_with(k))
    }

    /// Reads the number of the key being read from `chunk[from..]`; returns where it stopped.
    fn read_number(&mut self, chunk: &[u8], from: usize) -> usize {
        let Some(k) = self.reading else { return from };
        let rest = chunk.get(from..).unwrap_or_default();
        for (j, &b) in rest.iter().enumerate() {
            match b {
                b'0'..=b'9' if self.digits < 19 => {
                    self.value = self.value * 10 + u64::from(b - b'0');
                    self.digits += 1;
                }
                b' ' | b'\t' | b'\r' | b'\n' if self.digits == 0 => {}
                _ => {
                    if self.digits > 0 {
                        let slot = if k % 2 == 0 { &mut self.input } else { &mut self.output };
                        *slot = Some(self.value);
                    }
                    self.reading = None;
                    return from + j;
                }
            }
        }
        chunk.len()
    }

    fn remember(&mut self, chunk: &[u8]) {
        if chunk.len() >= LOOKBACK {
            if let Some(last) = chunk.get(chunk.len() - LOOKBACK..) {
                self.tail.copy_from_slice(last);
                self.tail_len = LOOKBACK;
            }
            return;
        }
        let keep = (LOOKBACK - chunk.len()).min(self.tail_len);
        self.tail.copy_within(self.tail_len - keep..self.tail_len, 0);
        if let Some(dst) = self.tail.get_mut(keep..keep + chunk.len()) {
            dst.copy_from_slice(chunk);
        }
        self.tail_len = keep + chunk.len();
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
    fn keys_split_anywhere_and_in_tiny_chunks() {
        let body = br#"{"content":[{"type":"text","text":"a: \"input_tokens\": 3"}],"usage":{"input_tokens" : 12,"cache_read_input_tokens":7,"output_tokens":5}}"#;
        for i in 0..body.len() {
            assert_eq!(scan(&[&body[..i], &body[i..]]), (Some(12), Some(5)), "split at {i}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&bytes), (Some(12), Some(5)));
        let threes: Vec<&[u8]> = body.chunks(3).collect();
        assert_eq!(scan(&threes), (Some(12), Some(5)));
    }

    #[test]
    fn a_gap_drops_what_was_half_read() {
        let mut s = UsageScanner::new();
        s.feed(br#"{"usage":{"input_tok"#);
        s.gap();
        s.feed(br#"ens":12,"output_tokens":5}}"#);
        assert_eq!((s.input_tokens(), s.output_tokens()), (None, Some(5)));
    }

    #[test]
    fn nothing_or_garbage() {
        assert_eq!(scan(&[b"no usage here"]), (None, None));
        assert_eq!(scan(&[b"\"input_tokens\":\"x\""]), (None, None));
        assert_eq!(scan(&[b"\"output_tokens\":99999999999999999999999"]).1, Some(9_999_999_999_999_999_999));
    }
}

//! Incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules), fed with body
//! chunks as they arrive. Events and lines may straddle chunk boundaries anywhere, including
//! between `\r` and `\n`. Memory is bounded: a line longer than [`MAX_LINE`] is dropped and the
//! stream is marked [`SseParser::overflowed`] instead of growing without limit.
//!
//! The parser reuses its buffers and hands each event to a callback as borrowed slices, so the
//! steady state allocates nothing.

/// Longest line kept (bytes). Anthropic events are a few hundred bytes; tool inputs can be large.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    skip_line: bool,
    last_was_cr: bool,
    overflowed: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once a line longer than [`MAX_LINE`] was seen (and dropped).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// True when everything fed so far formed complete events (nothing is pending).
    pub fn at_boundary(&self) -> bool {
        self.line.is_empty() && !self.has_data && self.event.is_empty() && !self.skip_line && !self.last_was_cr
    }

    /// Feeds a chunk; calls `on_event(event_name, data)` for every complete event. The event
    /// name is `message` when the event had no `event:` field.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(&[u8], &[u8])) {
        if self.last_was_cr {
            self.last_was_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push_partial(chunk);
                    return;
                }
                Some(pos) => {
                    let (head, rest) = chunk.split_at(pos);
                    self.push_partial(head);
                    let is_cr = rest.first() == Some(&b'\r');
                    let mut rest = rest.get(1..).unwrap_or_default();
                    if is_cr {
                        match rest.first() {
                            Some(b'\n') => rest = rest.get(1..).unwrap_or_default(),
                            None => self.last_was_cr = true,
                            _ => {}
                        }
                    }
                    self.end_line(on_event);
                    chunk = rest;
                }
            }
        }
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.skip_line {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            self.line.clear();
            self.skip_line = true;
            self.overflowed = true;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(&[u8], &[u8])) {
        if self.skip_line {
            self.skip_line = false;
            self.line.clear();
            return;
        }
        if self.line.is_empty() {
            if self.has_data {
                let name: &[u8] = if self.event.is_empty() { b"message" } else { &self.event };
                on_event(name, &self.data);
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        let line = std::mem::take(&mut self.line);
        let empty: &[u8] = &[];
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => (empty, empty), // comment
            Some(i) => {
                let (f, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or_default();
                (f, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line.as_slice(), empty),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + value.len() <= MAX_LINE {
                    self.data.extend_from_slice(value);
                } else {
                    self.overflowed = true;
                }
                self.has_data = true;
            }
            _ => {} // id, retry, comments and unknown fields
        }
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e, d| {
                out.push((String::from_utf8_lossy(e).into_owned(), String::from_utf8_lossy(d).into_owned()))
            });
        }
        out
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n: comment\nevent: ping\ndata: {}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn parses_whole_stream() {
        let ev = collect(&[STREAM.as_bytes()]);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0], ("message_start".into(), "{\"type\":\"message_start\"}".into()));
        assert_eq!(ev[2].0, "message_stop");
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        let whole = collect(&[STREAM.as_bytes()]);
        let b = STREAM.as_bytes();
        for i in 0..b.len() {
            for j in i..b.len() {
                assert_eq!(collect(&[&b[..i], &b[i..j], &b[j..]]), whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn crlf_and_cr_line_endings_split_anywhere() {
        let s = STREAM.replace('\n', "\r\n");
        let whole = collect(&[s.as_bytes()]);
        assert_eq!(whole, collect(&[STREAM.as_bytes()]));
        let b = s.as_bytes();
        for i in 0..b.len() {
            assert_eq!(collect(&[&b[..i], &b[i..]]), whole, "split at {i}");
        }
        let cr = STREAM.replace('\n', "\r");
        assert_eq!(collect(&[cr.as_bytes()]), whole);
    }

    #[test]
    fn multiline_data_and_default_event_name() {
        let ev = collect(&[b"data: a\ndata: b\n\ndata:c\n\n"]);
        assert_eq!(ev, vec![("message".into(), "a\nb".into()), ("message".into(), "c".into())]);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert!(collect(&[b"event: x\n\n"]).is_empty());
    }

    #[test]
    fn overlong_line_is_dropped_and_flagged() {
        let mut p = SseParser::new();
        let mut n = 0;
        let big = vec![b'x'; MAX_LINE + 10];
        p.feed(b"data: ", &mut |_, _| n += 1);
        p.feed(&big, &mut |_, _| n += 1);
        p.feed(b"\n\nevent: message_stop\ndata: {}\n\n", &mut |_, _| n += 1);
        assert!(p.overflowed());
        assert_eq!(n, 1);
    }

    #[test]
    fn binary_garbage_does_not_panic() {
        let mut p = SseParser::new();
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for c in garbage.chunks(7) {
            p.feed(c, &mut |_, _| {});
        }
    }
}

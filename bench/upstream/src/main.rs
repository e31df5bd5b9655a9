//! A fast mock LLM upstream for `make bench`, so that the upstream is never the bottleneck: std
//! only, a thread per connection, HTTP/1.1 keep-alive, every answer precomputed.
//!
//! `bench-upstream --port P [--status S] [--api anthropic|openai|bedrock]`:
//! - `anthropic` (default): answers every `POST`, whatever its path (so also Vertex's
//!   `:rawPredict` / `:streamRawPredict`), with a realistic ~1 KB Messages JSON, or, when the
//!   request body has `"stream":true`, a 50-event SSE stream written one event per chunk
//!   (`transfer-encoding: chunked`).
//! - `openai`: answers `POST /v1/chat/completions` with a `chat.completion` of the same text, or
//!   for `"stream":true` a 50-write `chat.completion.chunk` SSE stream (role chunk, 46 content
//!   chunks, finish chunk, usage chunk, `data: [DONE]`); other paths get a 404.
//! - `bedrock`: answers `POST /model/{id}/invoke` with the Anthropic JSON and
//!   `/model/{id}/invoke-with-response-stream` with the same 50 Anthropic events as AWS
//!   event-stream frames (`application/vnd.amazon.eventstream`, one frame per chunk); other
//!   paths get a 404.
//!
//! With `--status 529` every answer is an overloaded error instead (a failing provider). A request
//! with an `x-bench-echo` header gets the path and body it arrived with back in the response
//! headers `x-bench-path` and `x-bench-body` (hex), so the bench can check what the proxy sent.

mod answers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq)]
enum ApiMode {
    Anthropic,
    OpenAi,
    Bedrock,
}

/// One precomputed answer: the status line and headers (ending with the empty line), then the
/// body writes (already chunk-framed for streams). A whole answer is one write, head and body.
struct Answer {
    head: Vec<u8>,
    writes: Vec<Vec<u8>>,
    body_bytes: usize,
    whole: Option<Vec<u8>>,
}

impl Answer {
    fn whole(status: &str, content_type: &str, extra: &str, body: Vec<u8>) -> Answer {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        let whole = [head.as_slice(), body.as_slice()].concat();
        Answer { head, body_bytes: body.len(), writes: vec![body], whole: Some(whole) }
    }

    fn chunked(content_type: &str, extra: &str, events: Vec<Vec<u8>>) -> Answer {
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{extra}transfer-encoding: chunked\r\n\r\n");
        let body_bytes = events.iter().map(Vec::len).sum();
        let mut writes: Vec<Vec<u8>> = events
            .into_iter()
            .map(|e| {
                let mut chunk = format!("{:x}\r\n", e.len()).into_bytes();
                chunk.extend_from_slice(&e);
                chunk.extend_from_slice(b"\r\n");
                chunk
            })
            .collect();
        writes.push(b"0\r\n\r\n".to_vec());
        Answer { head: head.into_bytes(), writes, body_bytes, whole: None }
    }
}

struct Answers {
    api: ApiMode,
    json: Answer,
    stream: Answer,
    error: Option<Answer>,
    not_found: Answer,
}

impl Answers {
    fn new(api: ApiMode, status: u16) -> Answers {
        let (json, stream) = match api {
            ApiMode::Anthropic => (
                Answer::whole("200 OK", "application/json", "request-id: req_bench\r\n", answers::anthropic_json()),
                Answer::chunked("text/event-stream", "cache-control: no-cache\r\n", answers::anthropic_sse()),
            ),
            ApiMode::OpenAi => (
                Answer::whole("200 OK", "application/json", "x-request-id: req_bench\r\n", answers::openai_json()),
                Answer::chunked(
                    "text/event-stream; charset=utf-8",
                    "x-request-id: req_bench\r\n",
                    answers::openai_sse(),
                ),
            ),
            ApiMode::Bedrock => (
                Answer::whole(
                    "200 OK",
                    "application/json",
                    "x-amzn-requestid: req-bench\r\n",
                    answers::anthropic_json(),
                ),
                Answer::chunked(
                    "application/vnd.amazon.eventstream",
                    "x-amzn-requestid: req-bench\r\nx-amzn-bedrock-content-type: application/json\r\n",
                    answers::bedrock_frames(),
                ),
            ),
        };
        let error = (status != 200).then(|| {
            let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_vec();
            Answer::whole(&format!("{status} Overloaded"), "application/json", "", err)
        });
        let not_found =
            Answer::whole("404 Not Found", "application/json", "", br#"{"message":"no such path"}"#.to_vec());
        Answers { api, json, stream, error, not_found }
    }

    /// The answer to a `path` with a body that asks for a stream or not.
    fn pick(&self, path: &str, stream_body: bool) -> &Answer {
        if let Some(e) = &self.error {
            return e;
        }
        let path = path.split('?').next().unwrap_or_default();
        match self.api {
            ApiMode::Anthropic => {
                if stream_body {
                    &self.stream
                } else {
                    &self.json
                }
            }
            ApiMode::OpenAi if path == "/v1/chat/completions" => {
                if stream_body {
                    &self.stream
                } else {
                    &self.json
                }
            }
            ApiMode::Bedrock if path.starts_with("/model/") => {
                let (model, action) = path.trim_start_matches("/model/").rsplit_once('/').unwrap_or_default();
                match action {
                    _ if model.is_empty() || model.contains('/') => &self.not_found,
                    "invoke" => &self.json,
                    "invoke-with-response-stream" => &self.stream,
                    _ => &self.not_found,
                }
            }
            _ => &self.not_found,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(stream: TcpStream, answers: &Answers) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    let mut path = String::new();
    loop {
        // Request line and headers.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        path.clear();
        path.push_str(line.split_whitespace().nth(1).unwrap_or("/"));
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut echo = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                } else if k.eq_ignore_ascii_case("x-bench-echo") {
                    echo = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk)?;
                chunk.truncate(size);
                body.extend_from_slice(&chunk);
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(content_length, 0);
            reader.read_exact(&mut body)?;
        }
        let stream_req = body.windows(13).any(|w| w == b"\"stream\":true" || w == b"\"stream\": tru");
        let answer = answers.pick(&path, stream_req);
        match (&answer.whole, echo) {
            (Some(whole), false) => out.write_all(whole)?,
            _ => {
                if echo {
                    let mut head = answer.head.clone();
                    head.truncate(head.len() - 2);
                    head.extend_from_slice(
                        format!("x-bench-path: {path}\r\nx-bench-body: {}\r\n\r\n", hex(&body)).as_bytes(),
                    );
                    out.write_all(&head)?;
                } else {
                    out.write_all(&answer.head)?;
                }
                for w in &answer.writes {
                    out.write_all(w)?;
                }
            }
        }
        out.flush()?;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let port = arg("--port").unwrap_or_else(|| "18201".into());
    let status: u16 = arg("--status").and_then(|s| s.parse().ok()).unwrap_or(200);
    let api_name = arg("--api").unwrap_or_else(|| "anthropic".into());
    let api = match api_name.as_str() {
        "anthropic" => ApiMode::Anthropic,
        "openai" => ApiMode::OpenAi,
        "bedrock" => ApiMode::Bedrock,
        other => {
            eprintln!("bench-upstream: --api {other:?}: expected anthropic, openai or bedrock");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-upstream: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let answers: &'static Answers = Box::leak(Box::new(Answers::new(api, status)));
    println!(
        "bench-upstream on 127.0.0.1:{port} api {api_name} status {status}: json {} bytes, stream {} writes / {} bytes",
        answers.json.body_bytes,
        answers.stream.writes.len() - 1,
        answers.stream.body_bytes
    );
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(conn, answers);
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::answers::*;

    #[test]
    fn crc32_and_base64_match_their_references() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn answers_have_the_documented_shapes() {
        assert_eq!(anthropic_sse().len(), 50);
        assert_eq!(bedrock_frames().len(), 50);
        assert_eq!(openai_sse().len(), 50);
        let text: String = stream_deltas().concat();
        let mut joined = String::new();
        for c in openai_sse().iter().skip(1).take(46) {
            let s = String::from_utf8(c.clone()).unwrap();
            let start = s.find(r#""content":""#).unwrap() + 11;
            let end = s[start..].find('"').unwrap() + start;
            joined.push_str(&s[start..end]);
        }
        assert_eq!(joined, text);
        let f = bedrock_chunk_frame(b"{}");
        let total = u32::from_be_bytes(f[0..4].try_into().unwrap()) as usize;
        assert_eq!(total, f.len());
        assert_eq!(u32::from_be_bytes(f[8..12].try_into().unwrap()), crc32(&f[..8]));
        assert_eq!(u32::from_be_bytes(f[total - 4..].try_into().unwrap()), crc32(&f[..total - 4]));
    }
}

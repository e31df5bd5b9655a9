//! A fast mock Anthropic Messages upstream for `make bench`, so that the upstream is never the
//! bottleneck: std only, a thread per connection, HTTP/1.1 keep-alive.
//!
//! `bench-upstream --port P [--status S]`: answers every `POST` with a realistic ~1 KB Messages
//! JSON, or, when the request body has `"stream":true`, a 50-event SSE stream written one event
//! per chunk (`transfer-encoding: chunked`). With `--status 529` every answer is an overloaded
//! error instead (a failing provider).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn json_answer() -> Vec<u8> {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(18);
    format!(
        concat!(
            r#"{{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","#,
            r#""model":"claude-opus-4-6","content":[{{"type":"text","text":"{}"}}],"#,
            r#""stop_reason":"end_turn","stop_sequence":null,"#,
            r#""usage":{{"input_tokens":42,"output_tokens":180,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}}"#
        ),
        text.trim_end()
    )
    .into_bytes()
}

fn sse_events() -> Vec<Vec<u8>> {
    let mut ev = vec![
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-opus-4-6","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":1}}}

"#
        .to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_string(),
    ];
    for i in 0..44 {
        ev.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} of the streamed answer \"}}}}\n\n"
        ));
    }
    ev.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_string());
    ev.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":180}}\n\n".to_string());
    ev.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    ev.into_iter().map(|e| e.into_bytes()).collect()
}

struct Answers {
    json: Vec<u8>,
    sse: Vec<Vec<u8>>,
    status: u16,
}

fn serve(stream: TcpStream, answers: &Answers) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    loop {
        // Request line and headers.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        let mut chunked = false;
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
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    content_length = v.trim().parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
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
        if answers.status != 200 {
            let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
            write!(
                out,
                "HTTP/1.1 {} Overloaded\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answers.status,
                err.len()
            )?;
            out.write_all(err)?;
        } else if stream_req {
            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")?;
            for e in &answers.sse {
                let mut chunk = format!("{:x}\r\n", e.len()).into_bytes();
                chunk.extend_from_slice(e);
                chunk.extend_from_slice(b"\r\n");
                out.write_all(&chunk)?;
            }
            out.write_all(b"0\r\n\r\n")?;
        } else {
            write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\ncontent-length: {}\r\n\r\n",
                answers.json.len()
            )?;
            out.write_all(&answers.json)?;
        }
        out.flush()?;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let port = arg("--port").unwrap_or_else(|| "18201".into());
    let status: u16 = arg("--status").and_then(|s| s.parse().ok()).unwrap_or(200);
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-upstream: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let answers: &'static Answers = Box::leak(Box::new(Answers { json: json_answer(), sse: sse_events(), status }));
    println!(
        "bench-upstream on 127.0.0.1:{port} status {status}: json {} bytes, sse {} events / {} bytes",
        answers.json.len(),
        answers.sse.len(),
        answers.sse.iter().map(|e| e.len()).sum::<usize>()
    );
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(conn, answers);
        });
    }
}

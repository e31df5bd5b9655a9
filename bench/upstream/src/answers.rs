//! The bench upstream's answers, byte for byte, in each API format. Shared with the native
//! micro-benchmarks (`benches/core.rs` includes this file), so both measure the same bytes.
//! Std only.
#![allow(dead_code)]

/// The text of the JSON answers (~800 bytes).
pub fn answer_text() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(18).trim_end().to_string()
}

/// The text deltas of the streamed answers (44 pieces).
pub fn stream_deltas() -> Vec<String> {
    (0..44).map(|i| format!("token {i} of the streamed answer ")).collect()
}

/// A ~1.1 KB Anthropic Messages answer.
pub fn anthropic_json() -> Vec<u8> {
    format!(
        concat!(
            r#"{{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","#,
            r#""model":"claude-opus-4-6","content":[{{"type":"text","text":"{}"}}],"#,
            r#""stop_reason":"end_turn","stop_sequence":null,"#,
            r#""usage":{{"input_tokens":42,"output_tokens":180,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}}"#
        ),
        answer_text()
    )
    .into_bytes()
}

/// The 50 events of a streamed Anthropic answer as (event name, data JSON).
pub fn anthropic_event_data() -> Vec<(String, String)> {
    let mut ev: Vec<(String, String)> = vec![
        (
            "message_start".into(),
            r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-opus-4-6","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":1}}}"#.into(),
        ),
        (
            "content_block_start".into(),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.into(),
        ),
        ("ping".into(), r#"{"type": "ping"}"#.into()),
    ];
    for d in stream_deltas() {
        ev.push((
            "content_block_delta".into(),
            format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{d}"}}}}"#),
        ));
    }
    ev.push(("content_block_stop".into(), r#"{"type":"content_block_stop","index":0}"#.into()));
    ev.push((
        "message_delta".into(),
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":180}}"#.into(),
    ));
    ev.push(("message_stop".into(), r#"{"type":"message_stop"}"#.into()));
    ev
}

/// The 50-event Anthropic SSE stream (7.1 KB), one element per event.
pub fn anthropic_sse() -> Vec<Vec<u8>> {
    anthropic_event_data().into_iter().map(|(e, d)| format!("event: {e}\ndata: {d}\n\n").into_bytes()).collect()
}

const OPENAI_ID: &str = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT";
const OPENAI_HEAD: &str = r#""created":1741569952,"model":"gpt-4o-2024-08-06""#;
const OPENAI_TAIL: &str = r#""service_tier":"default","system_fingerprint":"fp_f5bdcc3276""#;

/// A `chat.completion` with the same text as [`anthropic_json`] (~1.3 KB: OpenAI's envelope is
/// larger).
pub fn openai_json() -> Vec<u8> {
    format!(
        concat!(
            r#"{{"id":"{id}","object":"chat.completion",{head},"#,
            r#""choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"#,
            r#""usage":{{"prompt_tokens":42,"completion_tokens":180,"total_tokens":222,"#,
            r#""prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"#,
            r#""completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"#,
            r#"{tail}}}"#
        ),
        id = OPENAI_ID,
        head = OPENAI_HEAD,
        text = answer_text(),
        tail = OPENAI_TAIL
    )
    .into_bytes()
}

fn openai_chunk(choices: &str, usage: &str) -> Vec<u8> {
    format!(
        r#"data: {{"id":"{OPENAI_ID}","object":"chat.completion.chunk",{OPENAI_HEAD},{OPENAI_TAIL},"choices":[{choices}],"usage":{usage}}}"#
    )
    .into_bytes()
    .into_iter()
    .chain(*b"\n\n")
    .collect()
}

/// The streamed `chat.completion.chunk` answer with usage asked for
/// (`stream_options.include_usage`): 50 writes, the same text as [`anthropic_sse`]: a role
/// chunk, the text in 46 content chunks, a finish chunk, the usage chunk (`choices: []`) and
/// `data: [DONE]`.
pub fn openai_sse() -> Vec<Vec<u8>> {
    let text: String = stream_deltas().concat();
    let pieces = 46;
    let mut out = vec![openai_chunk(
        r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#,
        "null",
    )];
    let bytes = text.as_bytes();
    for i in 0..pieces {
        let (a, b) = (bytes.len() * i / pieces, bytes.len() * (i + 1) / pieces);
        let piece = String::from_utf8_lossy(bytes.get(a..b).unwrap_or_default());
        out.push(openai_chunk(
            &format!(r#"{{"index":0,"delta":{{"content":"{piece}"}},"logprobs":null,"finish_reason":null}}"#),
            "null",
        ));
    }
    out.push(openai_chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#, "null"));
    out.push(openai_chunk(
        "",
        r#"{"prompt_tokens":42,"completion_tokens":180,"total_tokens":222,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
    ));
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

/// The same 50 Anthropic events as Bedrock's `invoke-with-response-stream` sends them: one AWS
/// event-stream frame per event.
pub fn bedrock_frames() -> Vec<Vec<u8>> {
    anthropic_event_data().into_iter().map(|(_, d)| bedrock_chunk_frame(d.as_bytes())).collect()
}

/// One event-stream frame of a `chunk` event: headers `:event-type: chunk`,
/// `:content-type: application/json`, `:message-type: event`; payload
/// `{"bytes":"<base64 of the event JSON>","p":"abcdefghij"}`.
pub fn bedrock_chunk_frame(event_json: &[u8]) -> Vec<u8> {
    let payload = format!(r#"{{"bytes":"{}","p":"abcdefghij"}}"#, base64(event_json));
    let mut headers = Vec::new();
    for (name, value) in [(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7); // string
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut f = Vec::with_capacity(total);
    f.extend_from_slice(&(total as u32).to_be_bytes());
    f.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&f);
    f.extend_from_slice(&prelude_crc.to_be_bytes());
    f.extend_from_slice(&headers);
    f.extend_from_slice(payload.as_bytes());
    let message_crc = crc32(&f);
    f.extend_from_slice(&message_crc.to_be_bytes());
    f
}

/// CRC-32 (IEEE 802.3 / zlib: reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |v: u32| char::from(A.get((v & 63) as usize).copied().unwrap_or(b'='));
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if c.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if c.len() > 2 { sym(n) } else { '=' });
    }
    out
}

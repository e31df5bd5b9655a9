//! Mid-stream continuation: what a client has of a stream that broke after its first content,
//! the request that asks another provider for the rest, and the events that splice the rest
//! into the client's stream so that it reads as one valid answer.
//!
//! - [`Transcript::read`] reads what the client got (the client-format bytes the filter let
//!   through, complete events only): the message id and model, the text so far, the block that
//!   is still open, the tokens so far; and whether the answer can be continued at all (not
//!   inside a tool call or a thinking block).
//! - [`request_body`] turns the client's request into a continuation request, in the client's
//!   format (the usual rewrite then makes it the host's): not streamed, and either with the
//!   partial answer as an assistant **prefill** (hosts that accept one) or, for hosts that
//!   reject prefill (Claude Opus / Sonnet 4.6 and later answer 400), with a trailing **user
//!   turn** carrying the partial answer and an instruction to continue exactly from it.
//! - [`Continued::parse`] reads the host's JSON answer (Anthropic Messages or OpenAI Chat
//!   Completions); [`fresh_text`] drops what the continuation repeats of the partial answer (a
//!   model that starts over, or repeats the last words).
//! - [`splice`] writes the rest as the client's events: Anthropic: the text continues in the
//!   open block (or a new one), further blocks take the next indices, one `message_delta` whose
//!   `output_tokens` adds both parts, one `message_stop`; OpenAI: content chunks with the
//!   stream's id, a `finish_reason` chunk, the usage chunk when asked for, `data: [DONE]`.

use crate::config::ClientApi;
use crate::sse::SseParser;
use crate::translate::response::{finish_reason, stop_reason};
use serde_json::{json, Value};

/// How the partial answer is handed to the provider that continues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The partial answer as a final assistant turn (the model continues it).
    Prefill,
    /// A final user turn carrying the partial answer and an instruction to continue it.
    Instruction,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Prefill => "prefill",
            Form::Instruction => "instruction",
        }
    }
}

/// Shortest repeat dropped when a continuation repeats the end of the partial answer (a shorter
/// partial answer is dropped only when repeated whole).
pub const MIN_OVERLAP: usize = 16;

/// What the client has of a broken stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    pub client: Option<ClientApi>,
    /// Message (Anthropic) or completion (OpenAI) id, model, creation time (OpenAI).
    pub id: String,
    pub model: String,
    pub created: u64,
    pub system_fingerprint: Option<String>,
    /// The answer's text so far (every text block, in order).
    pub text: String,
    /// Anthropic: the text block still open (continued in place), and the next block index.
    pub open_text: Option<u64>,
    pub next_index: u64,
    /// Content deltas the client got (each at least one token).
    pub deltas: u64,
    pub input_tokens: Option<u64>,
    /// The output tokens the host reported so far, if any.
    pub reported_output: Option<u64>,
    /// The answer had already ended (its stop reason was sent): only the terminal is missing.
    pub stop_reason: Option<String>,
    /// Why it cannot be continued.
    pub blocked: Option<&'static str>,
    /// Nothing the stream needs (message start, or an OpenAI chunk) was seen.
    pub started: bool,
}

impl Transcript {
    /// Reads the client-format stream `sent` (complete SSE events).
    pub fn read(client: ClientApi, sent: &[u8]) -> Transcript {
        let mut t = Transcript { client: Some(client), ..Transcript::default() };
        let mut open_other: Option<u64> = None;
        let mut parser = SseParser::new();
        parser.feed(sent, &mut |event, data| {
            if data == b"[DONE]" {
                return;
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
            match client {
                ClientApi::Anthropic => t.anthropic_event(event, &v, &mut open_other),
                ClientApi::OpenAi => t.openai_chunk(&v),
            }
        });
        if parser.overflowed() {
            t.blocked.get_or_insert("an event too large to read back");
        }
        if open_other.is_some() {
            t.blocked.get_or_insert("the stream broke inside a thinking block");
        }
        if !t.started {
            t.blocked.get_or_insert("the stream had not started");
        }
        t
    }

    fn anthropic_event(&mut self, event: &[u8], v: &Value, open_other: &mut Option<u64>) {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(std::str::from_utf8(event).unwrap_or(""));
        let index = v.get("index").and_then(Value::as_u64);
        match kind {
            "message_start" => {
                self.started = true;
                let m = v.get("message");
                let s = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
                self.id = s("id");
                self.model = s("model");
                let usage = m.and_then(|m| m.get("usage"));
                self.input_tokens = usage.and_then(|u| u.get("input_tokens")).and_then(Value::as_u64);
                self.reported_output = usage.and_then(|u| u.get("output_tokens")).and_then(Value::as_u64);
            }
            "content_block_start" => {
                let i = index.unwrap_or(self.next_index);
                self.next_index = self.next_index.max(i.saturating_add(1));
                let block = v.get("content_block");
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(s) = block.and_then(|b| b.get("text")).and_then(Value::as_str) {
                            self.text.push_str(s);
                        }
                        self.open_text = Some(i);
                    }
                    Some("thinking" | "redacted_thinking") => *open_other = Some(i),
                    _ => {
                        self.blocked.get_or_insert("the answer has a tool call");
                    }
                }
            }
            "content_block_delta" => {
                self.deltas += 1;
                let delta = v.get("delta");
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(s) = delta.and_then(|d| d.get("text")).and_then(Value::as_str) {
                            self.text.push_str(s);
                        }
                    }
                    Some("thinking_delta" | "signature_delta") => {}
                    Some("citations_delta") => {}
                    _ => {
                        self.blocked.get_or_insert("the answer has a tool call");
                    }
                }
            }
            "content_block_stop" => {
                if self.open_text == index {
                    self.open_text = None;
                }
                if *open_other == index {
                    *open_other = None;
                }
            }
            "message_delta" => {
                if let Some(n) = v.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64) {
                    self.reported_output = Some(n);
                }
                if let Some(s) = v.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str) {
                    self.stop_reason = Some(s.to_string());
                }
            }
            _ => {}
        }
    }

    fn openai_chunk(&mut self, v: &Value) {
        if !self.started {
            self.started = true;
            self.id = v.get("id").and_then(Value::as_str).unwrap_or("").to_string();
            self.model = v.get("model").and_then(Value::as_str).unwrap_or("").to_string();
            self.created = v.get("created").and_then(Value::as_u64).unwrap_or(0);
            self.system_fingerprint = v.get("system_fingerprint").and_then(Value::as_str).map(str::to_string);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u.get("prompt_tokens").and_then(Value::as_u64).or(self.input_tokens);
            self.reported_output = u.get("completion_tokens").and_then(Value::as_u64).or(self.reported_output);
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else { return };
        let delta = choice.get("delta");
        if let Some(s) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
            if !s.is_empty() {
                self.deltas += 1;
            }
            self.text.push_str(s);
        }
        if delta.and_then(|d| d.get("tool_calls")).is_some_and(|c| !c.is_null()) {
            self.blocked.get_or_insert("the answer has a tool call");
        }
        if delta.and_then(|d| d.get("refusal")).is_some_and(|r| r.as_str().is_some_and(|s| !s.is_empty())) {
            self.blocked.get_or_insert("the answer is a refusal");
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(f).to_string());
        }
    }

    /// The output tokens of the partial answer: as reported, or one per content delta when the
    /// host had not said yet.
    pub fn output_tokens(&self) -> u64 {
        self.reported_output.unwrap_or(0).max(self.deltas)
    }

    /// Can another provider continue this answer?
    pub fn continuable(&self) -> Result<(), &'static str> {
        match self.blocked {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// The instruction of a continuation asked with a user turn.
pub fn instruction(partial: &str) -> String {
    format!(
        "Your previous answer to my last message was cut off by a network failure. This is what you had written so far, between the markers:\n<partial_answer>\n{partial}\n</partial_answer>\nContinue that answer from exactly where it stops. Write only the text that comes next: do not repeat any of it, do not start over, and add no introduction or comment."
    )
}

/// The continuation request in the client's format, from the client's request `original`:
/// not streamed, the partial answer handed over as `form` says, and its `max_tokens` lowered by
/// the tokens already produced.
pub fn request_body(client: ClientApi, original: &Value, partial: &str, form: Form, used_tokens: u64) -> Value {
    let mut body = original.clone();
    let Some(obj) = body.as_object_mut() else { return body };
    obj.insert("stream".into(), Value::Bool(false));
    obj.remove("stream_options");
    let keys: &[&str] = match client {
        ClientApi::Anthropic => &["max_tokens"],
        ClientApi::OpenAi => &["max_completion_tokens", "max_tokens"],
    };
    for k in keys {
        if let Some(n) = obj.get(*k).and_then(Value::as_u64) {
            obj.insert((*k).into(), Value::from(n.saturating_sub(used_tokens).max(1)));
        }
    }
    let Some(messages) = obj.get_mut("messages").and_then(Value::as_array_mut) else { return body };
    match form {
        Form::Prefill => {
            let prefix = partial.trim_end();
            // A client that prefilled the answer itself: the partial answer continues its turn.
            let last_assistant =
                messages.last_mut().filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
            match last_assistant
                .and_then(|m| m.get("content").and_then(Value::as_str).map(str::to_string).map(|c| (m, c)))
            {
                Some((m, own)) => {
                    if let Some(o) = m.as_object_mut() {
                        o.insert("content".into(), Value::from(format!("{own}{partial}").trim_end()));
                    }
                }
                None => messages.push(json!({"role": "assistant", "content": prefix})),
            }
        }
        Form::Instruction => messages.push(json!({"role": "user", "content": instruction(partial)})),
    }
    body
}

/// A tool call of a continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The input as JSON text.
    pub arguments: String,
}

/// The answer of the provider that continued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continued {
    pub text: String,
    pub tools: Vec<ToolCall>,
    /// In Anthropic's terms (`end_turn`, `max_tokens`, `tool_use`, ...).
    pub stop_reason: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl Continued {
    /// Reads a host's JSON answer in format `format`. None if it is not an answer.
    pub fn parse(format: ClientApi, body: &[u8]) -> Option<Continued> {
        let v: Value = serde_json::from_slice(body).ok()?;
        if v.get("error").is_some() || v.get("type").and_then(Value::as_str) == Some("error") {
            return None;
        }
        let mut c = Continued::default();
        match format {
            ClientApi::Anthropic => {
                for b in v.get("content")?.as_array()? {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => c.text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                        Some("tool_use") => c.tools.push(ToolCall {
                            id: b.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                            name: b.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
                            arguments: b.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                        }),
                        _ => {}
                    }
                }
                c.stop_reason = v.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn").to_string();
                let u = v.get("usage");
                c.input_tokens = u.and_then(|u| u.get("input_tokens")).and_then(Value::as_u64);
                c.output_tokens = u.and_then(|u| u.get("output_tokens")).and_then(Value::as_u64);
            }
            ClientApi::OpenAi => {
                let choice = v.get("choices")?.as_array()?.first()?;
                let m = choice.get("message")?;
                c.text = m.get("content").and_then(Value::as_str).unwrap_or("").to_string();
                for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let f = call.get("function");
                    c.tools.push(ToolCall {
                        id: call.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                        name: f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or("").to_string(),
                        arguments: f
                            .and_then(|f| f.get("arguments"))
                            .and_then(Value::as_str)
                            .unwrap_or("{}")
                            .to_string(),
                    });
                }
                c.stop_reason =
                    stop_reason(choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop")).to_string();
                let u = v.get("usage");
                c.input_tokens = u.and_then(|u| u.get("prompt_tokens")).and_then(Value::as_u64);
                c.output_tokens = u.and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64);
            }
        }
        Some(c)
    }
}

/// The part of `continuation` that is new after `partial`: without the whitespace a prefill
/// had to leave out (the host refuses a prefill ending in whitespace, the client has it
/// already), without the partial answer when the model started over, and without a repeat of
/// the partial answer's last words.
pub fn fresh_text<'a>(partial: &str, continuation: &'a str, form: Form) -> &'a str {
    let mut c = continuation;
    if form == Form::Prefill {
        let ws = &partial[partial.trim_end().len()..];
        if !ws.is_empty() {
            c = c.strip_prefix(ws).unwrap_or(c);
        }
    }
    if partial.is_empty() {
        return c;
    }
    if let Some(rest) = c.strip_prefix(partial) {
        return rest;
    }
    let k = overlap(partial.as_bytes(), c.as_bytes());
    if k >= MIN_OVERLAP.min(partial.len()) && k > 0 && c.is_char_boundary(k) {
        return c.get(k..).unwrap_or(c);
    }
    c
}

/// The longest prefix of `c` that is a suffix of `p` (bytes; linear time).
fn overlap(p: &[u8], c: &[u8]) -> usize {
    let m = c.len().min(p.len());
    let pattern = c.get(..m).unwrap_or_default();
    if m == 0 {
        return 0;
    }
    // Prefix function of the pattern.
    let mut fail = vec![0usize; m];
    let mut k = 0;
    for i in 1..m {
        let b = pattern.get(i).copied();
        while k > 0 && pattern.get(k).copied() != b {
            k = fail.get(k - 1).copied().unwrap_or(0);
        }
        if pattern.get(k).copied() == b {
            k += 1;
        }
        if let Some(f) = fail.get_mut(i) {
            *f = k;
        }
    }
    // Run it over the end of `p`.
    let text = p.get(p.len() - m..).unwrap_or_default();
    let mut k = 0;
    for &b in text {
        while k > 0 && (k == m || pattern.get(k).copied() != Some(b)) {
            k = fail.get(k - 1).copied().unwrap_or(0);
        }
        if pattern.get(k).copied() == Some(b) {
            k += 1;
        }
    }
    k
}

fn anthropic_event(out: &mut Vec<u8>, v: &Value) {
    let name = v.get("type").and_then(Value::as_str).unwrap_or("message");
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

fn data_line(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The events that end the client's stream with the rest `c` (its text already
/// [`fresh_text`]). `include_usage`: an OpenAI client asked for the usage chunk. When the
/// transcript shows the answer had ended, only the missing terminal events are written.
pub fn splice(t: &Transcript, c: &Continued, include_usage: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let total_out = t.output_tokens().saturating_add(c.output_tokens.unwrap_or(0));
    match t.client.unwrap_or(ClientApi::Anthropic) {
        ClientApi::Anthropic => {
            let mut next = t.next_index;
            let mut text_open = t.open_text;
            if !c.text.is_empty() {
                let i = match text_open {
                    Some(i) => i,
                    None => {
                        let i = next;
                        next += 1;
                        anthropic_event(
                            &mut out,
                            &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                        );
                        i
                    }
                };
                text_open = Some(i);
                anthropic_event(
                    &mut out,
                    &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": c.text}}),
                );
            }
            if let Some(i) = text_open {
                anthropic_event(&mut out, &json!({"type": "content_block_stop", "index": i}));
            }
            for tool in &c.tools {
                let i = next;
                next += 1;
                anthropic_event(
                    &mut out,
                    &json!({"type": "content_block_start", "index": i,
                            "content_block": {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}}),
                );
                anthropic_event(
                    &mut out,
                    &json!({"type": "content_block_delta", "index": i,
                            "delta": {"type": "input_json_delta", "partial_json": tool.arguments}}),
                );
                anthropic_event(&mut out, &json!({"type": "content_block_stop", "index": i}));
            }
            if t.stop_reason.is_none() {
                anthropic_event(
                    &mut out,
                    &json!({"type": "message_delta", "delta": {"stop_reason": c.stop_reason, "stop_sequence": null},
                            "usage": {"output_tokens": total_out}}),
                );
            }
            anthropic_event(&mut out, &json!({"type": "message_stop"}));
        }
        ClientApi::OpenAi => {
            let chunk = |delta: Value, finish: Option<&str>| {
                let mut v = json!({"id": t.id, "object": "chat.completion.chunk", "created": t.created, "model": t.model,
                                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
                if let (Some(fp), Some(o)) = (&t.system_fingerprint, v.as_object_mut()) {
                    o.insert("system_fingerprint".into(), Value::from(fp.as_str()));
                }
                v
            };
            if t.stop_reason.is_none() {
                if !c.text.is_empty() {
                    data_line(&mut out, &chunk(json!({"content": c.text}), None));
                }
                for (k, tool) in c.tools.iter().enumerate() {
                    data_line(
                        &mut out,
                        &chunk(
                            json!({"tool_calls": [{"index": k, "id": tool.id, "type": "function",
                                                    "function": {"name": tool.name, "arguments": tool.arguments}}]}),
                            None,
                        ),
                    );
                }
                data_line(&mut out, &chunk(json!({}), Some(finish_reason(&c.stop_reason))));
            }
            if include_usage {
                let prompt = t.input_tokens.or(c.input_tokens).unwrap_or(0);
                let mut v = json!({"id": t.id, "object": "chat.completion.chunk", "created": t.created, "model": t.model,
                                   "choices": [],
                                   "usage": {"prompt_tokens": prompt, "completion_tokens": total_out,
                                             "total_tokens": prompt.saturating_add(total_out)}});
                if let (Some(fp), Some(o)) = (&t.system_fingerprint, v.as_object_mut()) {
                    o.insert("system_fingerprint".into(), Value::from(fp.as_str()));
                }
                data_line(&mut out, &v);
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";

    fn delta(i: u64, text: &str) -> String {
        format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type":"content_block_delta","index":i,"delta":{"type":"text_delta","text":text}})
        )
    }

    fn block(i: u64, kind: &str) -> String {
        format!(
            "event: content_block_start\ndata: {}\n\n",
            json!({"type":"content_block_start","index":i,"content_block":{"type":kind,"text":""}})
        )
    }

    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        SseParser::new().feed(bytes, &mut |e, d| {
            let v = if d == b"[DONE]" { Value::from("[DONE]") } else { serde_json::from_slice(d).unwrap() };
            out.push((String::from_utf8(e.to_vec()).unwrap(), v));
        });
        out
    }

    #[test]
    fn an_anthropic_stream_broken_in_a_text_block_is_continued_in_that_block() {
        let sent =
            format!("{START}{}{}{}{}", block(0, "text"), delta(0, "The"), delta(0, " quick"), delta(0, " brown"));
        let t = Transcript::read(ClientApi::Anthropic, sent.as_bytes());
        assert_eq!(t.text, "The quick brown");
        assert_eq!((t.open_text, t.next_index, t.output_tokens()), (Some(0), 1, 3));
        assert!(t.continuable().is_ok());
        let c = Continued {
            text: " fox".into(),
            stop_reason: "end_turn".into(),
            output_tokens: Some(2),
            ..Default::default()
        };
        let ev = events(&splice(&t, &c, false));
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(ev[0].1["index"], 0);
        assert_eq!(ev[0].1["delta"]["text"], " fox");
        assert_eq!(ev[2].1["usage"]["output_tokens"], 5, "3 partial + 2 continued");
        assert_eq!(ev[2].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn a_closed_block_and_a_tool_call_take_the_next_indices() {
        let sent = format!(
            "{START}{}{}event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n",
            block(0, "text"),
            delta(0, "Hi")
        );
        let t = Transcript::read(ClientApi::Anthropic, sent.as_bytes());
        assert_eq!((t.open_text, t.next_index), (None, 1));
        let c = Continued {
            text: " there".into(),
            tools: vec![ToolCall { id: "toolu_1".into(), name: "get".into(), arguments: "{\"a\":1}".into() }],
            stop_reason: "tool_use".into(),
            ..Default::default()
        };
        let ev = events(&splice(&t, &c, false));
        assert_eq!(ev[0].1["index"], 1);
        assert_eq!(ev[0].0, "content_block_start");
        assert_eq!(ev[3].1["index"], 2);
        assert_eq!(ev[3].1["content_block"]["type"], "tool_use");
        assert_eq!(ev[4].1["delta"]["partial_json"], "{\"a\":1}");
    }

    #[test]
    fn tool_calls_and_open_thinking_blocks_are_not_continued() {
        let tool = format!(
            "{START}event: content_block_start\ndata: {}\n\n",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"n","input":{}}})
        );
        assert!(Transcript::read(ClientApi::Anthropic, tool.as_bytes()).continuable().is_err());
        let thinking = format!("{START}{}", block(0, "thinking"));
        assert!(Transcript::read(ClientApi::Anthropic, thinking.as_bytes()).continuable().is_err());
        assert!(Transcript::read(ClientApi::Anthropic, b"").continuable().is_err());
        // A finished thinking block before the text is fine.
        let ok = format!(
            "{START}{}event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n{}{}",
            block(0, "thinking"),
            block(1, "text"),
            delta(1, "So")
        );
        let t = Transcript::read(ClientApi::Anthropic, ok.as_bytes());
        assert!(t.continuable().is_ok());
        assert_eq!((t.text.as_str(), t.open_text, t.next_index), ("So", Some(1), 2));
    }

    #[test]
    fn an_openai_stream_is_continued_with_its_own_id_and_usage() {
        let chunk = |d: Value| {
            format!(
                "data: {}\n\n",
                json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt-x","choices":[{"index":0,"delta":d,"finish_reason":null}]})
            )
        };
        let sent = format!(
            "{}{}{}",
            chunk(json!({"role":"assistant","content":""})),
            chunk(json!({"content":"Hel"})),
            chunk(json!({"content":"lo"}))
        );
        let t = Transcript::read(ClientApi::OpenAi, sent.as_bytes());
        assert_eq!((t.text.as_str(), t.id.as_str(), t.created, t.deltas), ("Hello", "chatcmpl-1", 7, 2));
        let c = Continued {
            text: " world".into(),
            stop_reason: "end_turn".into(),
            input_tokens: Some(30),
            output_tokens: Some(2),
            ..Default::default()
        };
        let ev = events(&splice(&t, &c, true));
        assert_eq!(ev[0].1["choices"][0]["delta"]["content"], " world");
        assert_eq!(ev[0].1["id"], "chatcmpl-1");
        assert_eq!(ev[1].1["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[2].1["usage"]["completion_tokens"], 4);
        assert_eq!(ev[3].1, "[DONE]");
    }

    #[test]
    fn an_answer_that_had_ended_gets_only_its_terminal() {
        let sent = format!(
            "{START}{}{}event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":4}}}}\n\n",
            block(0, "text"),
            delta(0, "Hi")
        );
        let t = Transcript::read(ClientApi::Anthropic, sent.as_bytes());
        assert_eq!(t.stop_reason.as_deref(), Some("end_turn"));
        let ev = events(&splice(&t, &Continued::default(), false));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "message_stop");
    }

    #[test]
    fn the_repeated_part_of_a_continuation_is_dropped() {
        let p = "The quick brown fox jumps over";
        assert_eq!(fresh_text(p, " the lazy dog.", Form::Instruction), " the lazy dog.");
        assert_eq!(fresh_text(p, "The quick brown fox jumps over the lazy dog.", Form::Instruction), " the lazy dog.");
        assert_eq!(fresh_text(p, "brown fox jumps over the lazy dog.", Form::Instruction), " the lazy dog.");
        // A short accidental overlap is kept.
        assert_eq!(fresh_text(p, "over and out", Form::Instruction), "over and out");
        // A short partial answer is dropped only when repeated whole.
        assert_eq!(fresh_text("Hi", "Hi there", Form::Instruction), " there");
        assert_eq!(fresh_text("Hi", "i there", Form::Instruction), "i there");
        // Prefill: the trailing whitespace the host never saw is not sent twice.
        assert_eq!(fresh_text("Hello, ", " world", Form::Prefill), "world");
        assert_eq!(fresh_text("Hello,", " world", Form::Prefill), " world");
        // Multi-byte text.
        assert_eq!(fresh_text("ça va très bien, merci", "très bien, merci beaucoup", Form::Instruction), " beaucoup");
        assert_eq!(
            fresh_text("ça va très bien, merci", "bien, merci beaucoup", Form::Instruction),
            "bien, merci beaucoup"
        );
        assert_eq!(
            fresh_text("ça va très bien, merci", "ça va très bien, merci beaucoup", Form::Instruction),
            " beaucoup"
        );
    }

    #[test]
    fn continuation_requests_prefill_or_instruct_and_do_not_stream() {
        let original = json!({"model":"m","max_tokens":100,"stream":true,
                              "messages":[{"role":"user","content":"Tell me"}]});
        let b = request_body(ClientApi::Anthropic, &original, "Once upon ", Form::Prefill, 10);
        assert_eq!(b["stream"], false);
        assert_eq!(b["max_tokens"], 90);
        assert_eq!(b["messages"][1], json!({"role":"assistant","content":"Once upon"}));
        let b = request_body(ClientApi::Anthropic, &original, "Once upon ", Form::Instruction, 10);
        assert_eq!(b["messages"][1]["role"], "user");
        assert!(b["messages"][1]["content"].as_str().unwrap().contains("Once upon"));
        assert_eq!(b["messages"].as_array().unwrap().len(), 2);
        let oa = json!({"model":"g","stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":5,
                        "messages":[{"role":"user","content":"x"}]});
        let b = request_body(ClientApi::OpenAi, &oa, "abc", Form::Instruction, 10);
        assert!(b.get("stream_options").is_none());
        assert_eq!(b["max_completion_tokens"], 1);
    }

    #[test]
    fn answers_of_both_formats_are_read() {
        let a = br#"{"type":"message","content":[{"type":"text","text":" fox"},{"type":"tool_use","id":"t","name":"n","input":{"a":1}}],"stop_reason":"tool_use","usage":{"input_tokens":20,"output_tokens":3}}"#;
        let c = Continued::parse(ClientApi::Anthropic, a).unwrap();
        assert_eq!(
            (c.text.as_str(), c.tools.len(), c.stop_reason.as_str(), c.output_tokens),
            (" fox", 1, "tool_use", Some(3))
        );
        let o = br#"{"choices":[{"message":{"role":"assistant","content":" fox"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#;
        let c = Continued::parse(ClientApi::OpenAi, o).unwrap();
        assert_eq!((c.text.as_str(), c.stop_reason.as_str(), c.input_tokens), (" fox", "max_tokens", Some(9)));
        assert!(Continued::parse(ClientApi::Anthropic, br#"{"type":"error","error":{}}"#).is_none());
        assert!(Continued::parse(ClientApi::OpenAi, b"not json").is_none());
    }
}

#[cfg(test)]
mod robustness {
    //! Whatever the bytes, reading, parsing, deduplicating and splicing never panic, and the
    //! fresh text is always a suffix of the continuation.
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn random_text(seed: &mut u64, alphabet: &[&str]) -> String {
        let n = lcg(seed) as usize % 40;
        (0..n).map(|_| alphabet[lcg(seed) as usize % alphabet.len()]).collect()
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut seed = 11u64;
        let pieces = [
            "a",
            "b",
            " ",
            "é",
            "日本",
            "\n",
            "\"",
            "{",
            "}",
            "event: ",
            "data: ",
            "\n\n",
            "[DONE]",
            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}",
            "{\"type\":\"message_start\",\"message\":{}}",
            "{\"choices\":[{\"delta\":{\"content\":\"y\"}}]}",
        ];
        for _ in 0..2000 {
            let bytes = random_text(&mut seed, &pieces);
            for client in [ClientApi::Anthropic, ClientApi::OpenAi] {
                let t = Transcript::read(client, bytes.as_bytes());
                let _ = Continued::parse(client, bytes.as_bytes());
                let c = Continued {
                    text: random_text(&mut seed, &pieces),
                    stop_reason: "end_turn".into(),
                    ..Default::default()
                };
                let out = splice(&t, &c, true);
                assert!(out.ends_with(b"\n\n"));
            }
            let partial = random_text(&mut seed, &["a", "é", " ", "日", "\n", "ab"]);
            let cont = random_text(&mut seed, &["a", "é", " ", "日", "\n", "ab"]);
            for form in [Form::Prefill, Form::Instruction] {
                let fresh = fresh_text(&partial, &cont, form);
                assert!(cont.ends_with(fresh), "{partial:?} {cont:?} -> {fresh:?}");
            }
            let _ = request_body(
                ClientApi::Anthropic,
                &serde_json::json!({"messages": [{"role": "assistant", "content": partial}]}),
                &cont,
                Form::Prefill,
                3,
            );
        }
    }
}

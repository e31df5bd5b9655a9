//! SSE streams translated event by event: Anthropic events -> OpenAI chunks, and OpenAI chunks
//! -> Anthropic events. The caller parses SSE (crate::sse) and hands each event over; output is
//! appended as ready-to-send SSE bytes. Each event's JSON is parsed once, into borrowed
//! structs; state is a few counters and ids, so memory does not grow with the stream.
//!
//! **Anthropic -> OpenAI** ([`AnthropicToOpenAi`]): every chunk has the same `id`
//! (`"chatcmpl-" + message id`), `created` and `model` (from `message_start`).
//! `message_start` -> a chunk with `delta: {role: assistant, content: ""}`; `text_delta` ->
//! `delta.content`; `tool_use` `content_block_start` -> `delta.tool_calls[{index, id, type:
//! function, function: {name, arguments: ""}}]`; `input_json_delta` ->
//! `tool_calls[{index, function: {arguments}}]` (the index counts tool blocks only);
//! `message_delta.stop_reason` -> a chunk with `finish_reason` (mapped as in
//! [`super::response`]); `message_stop` -> a usage chunk (`choices: []`, when `include_usage`)
//! then `data: [DONE]`; `error` -> `data: {"error": {...}}` (OpenAI style), nothing after it.
//! Ignored: `ping`, `content_block_stop`, thinking/signature/citation deltas and non-tool
//! blocks other than text, unknown events, events that are not JSON. More than 4096 tool
//! calls in one stream -> an error chunk (state stays bounded).
//!
//! **OpenAI -> Anthropic** ([`OpenAiToAnthropic`]): the first chunk -> `message_start` (a full
//! message: id `msg_<16 hex of id_suffix>`, `content: []`, model from the chunk, usage 0/0);
//! `delta.content`/`delta.refusal` -> a text block (`content_block_start`, `text_delta`s);
//! each `tool_calls[i]` -> a `tool_use` block with `input_json_delta`s; a block is stopped
//! when the kind or tool index changes or at `finish_reason`; `finish_reason` -> held until
//! the usage chunk (or `[DONE]`), then one `message_delta` with `stop_reason` and usage
//! (`input_tokens` = prompt - cached, `cache_read_input_tokens`, `output_tokens`); `[DONE]` ->
//! `message_stop`; an error chunk -> `event: error` with an Anthropic error, nothing after it.
//! Refused in-stream (an `event: error`, then nothing): deltas returning to a tool call that
//! was already closed (Anthropic blocks cannot be reopened), tool index >= 4096, and `[DONE]`
//! without any `finish_reason`. Ignored: choices other than index 0, chunks that are not JSON, data after
//! the end.
//!
//! Both translators' `finish` (end of the upstream body) never fabricates a successful end: if
//! the stream did not complete and no error was sent, it appends an error (`data:
//! {"error":...}` / `event: error`) saying the upstream stream was cut short, so the client
//! sees the failure instead of a silently partial answer; there is still no `[DONE]` /
//! `message_stop`.

use super::response::{anthropic_error_body, finish_reason, openai_error_body, openai_error_fields, stop_reason};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Tool calls kept track of in one stream; a stream with more is failed, not silently cut.
const MAX_TOOL_BLOCKS: u32 = 4096;

fn write_data(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Writing to a Vec cannot fail, and these types always serialize.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

fn write_event(out: &mut Vec<u8>, name: &str, value: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, value);
}

fn write_raw_event(out: &mut Vec<u8>, name: &str, json: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

// ---------------------------------------------------------------------------------------------
// Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct AEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    message: Option<AStart<'a>>,
    index: Option<u64>,
    #[serde(borrow)]
    content_block: Option<ABlock<'a>>,
    #[serde(borrow)]
    delta: Option<ADelta<'a>>,
    usage: Option<AUsage>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AStart<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    usage: Option<AUsage>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ABlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ADelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct AUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AErrorEvent<'a> {
    #[serde(borrow)]
    error: Option<AError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

#[derive(Serialize)]
struct OChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [OChoice<'a>],
    /// Absent without `include_usage`; null on every chunk but the usage chunk with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<OUsage>>,
}

#[derive(Serialize)]
struct OChoice<'a> {
    index: u32,
    delta: ODelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct ODelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[OToolDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct OToolDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: OFunctionDelta<'a>,
}

#[derive(Serialize)]
struct OFunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct OUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: OCached,
}

#[derive(Serialize)]
struct OCached {
    cached_tokens: u64,
}

/// Anthropic stream events -> OpenAI `chat.completion.chunk` SSE.
#[derive(Debug, Default)]
pub struct AnthropicToOpenAi {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    /// `[DONE]` sent.
    done: bool,
    /// An error was sent; nothing follows it.
    failed: bool,
    /// (Anthropic content block index, OpenAI tool call index) of each tool_use block.
    tools: Vec<(u64, u32)>,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation: u64,
    cache_read: u64,
}

impl AnthropicToOpenAi {
    pub fn new(created_s: u64, include_usage: bool) -> Self {
        Self { created: created_s, include_usage, id: "chatcmpl-".into(), ..Self::default() }
    }

    /// True once `[DONE]` was sent.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once an error was sent to the client.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// One Anthropic event (`event:` name, `data:` JSON) -> zero or more `data: {...}\n\n`
    /// chunks (and `data: [DONE]\n\n` after `message_stop`).
    pub fn on_event(&mut self, event: &[u8], data: &[u8], out: &mut Vec<u8>) {
        if self.done || self.failed {
            return;
        }
        if event == b"error" {
            self.on_error(data, out);
            return;
        }
        let Ok(ev) = serde_json::from_slice::<AEvent<'_>>(data) else { return };
        let name: &[u8] = if event == b"message" || event.is_empty() { ev.kind.as_bytes() } else { event };
        match name {
            b"message_start" => {
                if self.started {
                    return;
                }
                if let Some(m) = &ev.message {
                    self.id.push_str(&m.id);
                    self.model.push_str(&m.model);
                    if let Some(u) = m.usage {
                        self.add_usage(u);
                    }
                }
                self.start(out);
            }
            b"content_block_start" => {
                let (Some(index), Some(block)) = (ev.index, &ev.content_block) else { return };
                match block.kind.as_ref() {
                    "tool_use" => {
                        if self.tools.len() >= MAX_TOOL_BLOCKS as usize {
                            self.fail(out, "too many tool calls in one stream");
                            return;
                        }
                        let tool = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                        self.tools.push((index, tool));
                        let call = OToolDelta {
                            index: tool,
                            id: Some(&block.id),
                            kind: Some("function"),
                            function: OFunctionDelta { name: Some(&block.name), arguments: "" },
                        };
                        self.chunk(out, ODelta { tool_calls: Some([call]), ..ODelta::default() }, None);
                    }
                    "text" if !block.text.is_empty() => {
                        self.chunk(out, ODelta { content: Some(&block.text), ..ODelta::default() }, None)
                    }
                    _ => {}
                }
            }
            b"content_block_delta" => {
                let Some(delta) = &ev.delta else { return };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(t) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                            self.chunk(out, ODelta { content: Some(t), ..ODelta::default() }, None);
                        }
                    }
                    Some("input_json_delta") => {
                        let Some(index) = ev.index else { return };
                        let Some(&(_, tool)) = self.tools.iter().rev().find(|(b, _)| *b == index) else { return };
                        let Some(args) = delta.partial_json.as_deref().filter(|a| !a.is_empty()) else { return };
                        let call = OToolDelta {
                            index: tool,
                            id: None,
                            kind: None,
                            function: OFunctionDelta { name: None, arguments: args },
                        };
                        self.chunk(out, ODelta { tool_calls: Some([call]), ..ODelta::default() }, None);
                    }
                    _ => {}
                }
            }
            b"message_delta" => {
                if let Some(u) = ev.usage {
                    // message_delta usage is cumulative: overwrite what it reports.
                    self.set_usage(u);
                }
                if let Some(reason) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.chunk(out, ODelta::default(), Some(finish_reason(reason)));
                }
            }
            b"message_stop" => {
                self.start(out);
                if self.include_usage {
                    let prompt = self.input_tokens.saturating_add(self.cache_creation).saturating_add(self.cache_read);
                    let usage = OUsage {
                        prompt_tokens: prompt,
                        completion_tokens: self.output_tokens,
                        total_tokens: prompt.saturating_add(self.output_tokens),
                        prompt_tokens_details: OCached { cached_tokens: self.cache_read },
                    };
                    let chunk = OChunk {
                        id: &self.id,
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: &self.model,
                        choices: &[],
                        usage: Some(Some(usage)),
                    };
                    write_data(out, &chunk);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            _ => {} // ping, content_block_stop, unknown events
        }
    }

    /// End of the upstream body: if the stream did not reach `message_stop` (and no error was
    /// sent), appends an error chunk saying so. Never appends `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.done && !self.failed {
            self.fail(out, "the upstream stream ended before message_stop");
        }
    }

    fn add_usage(&mut self, u: AUsage) {
        self.input_tokens = self.input_tokens.saturating_add(u.input_tokens.unwrap_or(0));
        self.output_tokens = self.output_tokens.saturating_add(u.output_tokens.unwrap_or(0));
        self.cache_creation = self.cache_creation.saturating_add(u.cache_creation_input_tokens.unwrap_or(0));
        self.cache_read = self.cache_read.saturating_add(u.cache_read_input_tokens.unwrap_or(0));
    }

    fn set_usage(&mut self, u: AUsage) {
        self.input_tokens = u.input_tokens.unwrap_or(self.input_tokens);
        self.output_tokens = u.output_tokens.unwrap_or(self.output_tokens);
        self.cache_creation = u.cache_creation_input_tokens.unwrap_or(self.cache_creation);
        self.cache_read = u.cache_read_input_tokens.unwrap_or(self.cache_read);
    }

    /// The first chunk (role), once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(out, ODelta { role: Some("assistant"), content: Some(""), tool_calls: None }, None);
        }
    }

    fn chunk(&mut self, out: &mut Vec<u8>, delta: ODelta<'_>, finish: Option<&str>) {
        if !self.started {
            self.start(out);
        }
        let choices = [OChoice { index: 0, delta, logprobs: None, finish_reason: finish }];
        let chunk = OChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choices,
            usage: if self.include_usage { Some(None) } else { None },
        };
        write_data(out, &chunk);
    }

    fn on_error(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let parsed = serde_json::from_slice::<AErrorEvent<'_>>(data).ok().and_then(|e| e.error);
        let (kind, message) = match &parsed {
            Some(e) => (e.kind.as_ref(), e.message.as_ref()),
            None => ("api_error", "the upstream stream reported an error"),
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&openai_error_body(kind, 0, message));
        out.extend_from_slice(b"\n\n");
        self.failed = true;
    }

    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&openai_error_body("api_error", 0, message));
        out.extend_from_slice(b"\n\n");
        self.failed = true;
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI -> Anthropic
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct OChunkIn<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    choices: Option<Vec<OChoiceIn<'a>>>,
    usage: Option<OUsageIn>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OChoiceIn<'a> {
    index: u32,
    #[serde(borrow)]
    delta: Option<ODeltaIn<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ODeltaIn<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<OToolIn<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OToolIn<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<OFunctionIn<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OFunctionIn<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct OUsageIn {
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<OCachedIn>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct OCachedIn {
    cached_tokens: Option<u64>,
}

#[derive(Serialize)]
struct AMessageStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: AMessageOut<'a>,
}

#[derive(Serialize)]
struct AMessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    content: [(); 0],
    model: &'a str,
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: AUsageOut,
}

#[derive(Serialize)]
struct AUsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct ABlockStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: ABlockOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ABlockOut<'a> {
    Text { text: &'static str },
    ToolUse { id: &'a str, name: &'a str, input: Empty },
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ABlockDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: ADeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ADeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct ABlockStopOut {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct AMessageDeltaOut {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: AStopOut,
    usage: AUsageOut,
}

#[derive(Serialize)]
struct AStopOut {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct ATypeOnly {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u32),
}

/// OpenAI `chat.completion.chunk` SSE -> Anthropic stream events.
#[derive(Debug, Default)]
pub struct OpenAiToAnthropic {
    id: String,
    started: bool,
    /// `message_stop` sent.
    done: bool,
    /// An error event was sent; nothing follows it.
    failed: bool,
    /// The open block and its Anthropic index.
    open: Option<(Open, u32)>,
    /// Anthropic index of the next block.
    next_block: u32,
    /// Highest OpenAI tool index started so far.
    last_tool: Option<u32>,
    stop_reason: Option<&'static str>,
    usage: Option<OUsageIn>,
    /// `message_delta` sent.
    delta_sent: bool,
}

impl OpenAiToAnthropic {
    pub fn new(id_suffix: u64) -> Self {
        Self { id: format!("msg_{id_suffix:016x}"), ..Self::default() }
    }

    /// True once `message_stop` was sent.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once an error event was sent to the client.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// One OpenAI `data:` payload (a chunk JSON, an error JSON, or `[DONE]`) -> zero or more
    /// `event: X\ndata: {...}\n\n` Anthropic events.
    pub fn on_data(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done || self.failed {
            return;
        }
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.on_done(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<OChunkIn<'_>>(data) else { return };
        if let Some(err) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            let (kind, message) = openai_error_fields(Some(err), 0, data);
            self.send_error(out, kind, &message);
            return;
        }
        self.start(out, &chunk.model);
        for choice in chunk.choices.iter().flatten().filter(|c| c.index == 0) {
            if let Some(delta) = &choice.delta {
                for text in [&delta.content, &delta.refusal].into_iter().flatten() {
                    if !text.is_empty() {
                        self.text(out, text);
                    }
                }
                for call in delta.tool_calls.iter().flatten() {
                    if !self.tool_call(out, call) {
                        return;
                    }
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.close(out);
                self.stop_reason = Some(stop_reason(reason));
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
            if self.stop_reason.is_some() {
                self.message_delta(out);
            }
        }
    }

    /// End of the upstream body (a clean end): a stream that reached its `finish_reason` is
    /// complete even without `data: [DONE]` (some compatible servers never send it) and gets its
    /// `message_delta` and `message_stop`; one that did not gets an `event: error` saying so.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done || self.failed {
            return;
        }
        if self.stop_reason.is_some() {
            self.on_done(out);
        } else {
            self.send_error(out, "api_error", "the upstream stream ended before its finish_reason");
        }
    }

    fn on_done(&mut self, out: &mut Vec<u8>) {
        if self.stop_reason.is_none() {
            self.send_error(out, "api_error", "the upstream stream ended without a finish_reason");
            return;
        }
        self.close(out);
        self.message_delta(out);
        write_event(out, "message_stop", &ATypeOnly { kind: "message_stop" });
        self.done = true;
    }

    fn start(&mut self, out: &mut Vec<u8>, model: &str) {
        if self.started {
            return;
        }
        self.started = true;
        let start = AMessageStartOut {
            kind: "message_start",
            message: AMessageOut {
                id: &self.id,
                kind: "message",
                role: "assistant",
                content: [],
                model,
                stop_reason: None,
                stop_sequence: None,
                usage: AUsageOut {
                    input_tokens: 0,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 0,
                    output_tokens: 0,
                },
            },
        };
        write_event(out, "message_start", &start);
    }

    fn text(&mut self, out: &mut Vec<u8>, text: &str) {
        let index = match self.open {
            Some((Open::Text, i)) => i,
            _ => self.open_block(out, Open::Text, ABlockOut::Text { text: "" }),
        };
        let delta = ABlockDeltaOut { kind: "content_block_delta", index, delta: ADeltaOut::TextDelta { text } };
        write_event(out, "content_block_delta", &delta);
    }

    /// False when the stream failed.
    fn tool_call(&mut self, out: &mut Vec<u8>, call: &OToolIn<'_>) -> bool {
        let tool = match (call.index, self.open) {
            (Some(i), _) => i,
            // No index (some compatible servers): the open tool call, or the next one.
            (None, Some((Open::Tool(i), _))) if call.id.is_none() => i,
            (None, _) => self.last_tool.map_or(0, |t| t.saturating_add(1)),
        };
        let function = call.function.as_ref();
        let index = match self.open {
            Some((Open::Tool(t), i)) if t == tool => i,
            _ => {
                if self.last_tool.is_some_and(|last| tool <= last) {
                    self.send_error(out, "api_error", "the upstream stream returned to a tool call that was closed");
                    return false;
                }
                if tool >= MAX_TOOL_BLOCKS {
                    self.send_error(out, "api_error", "too many tool calls in one stream");
                    return false;
                }
                self.last_tool = Some(tool);
                let id = call.id.as_deref().unwrap_or_default();
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
                let block = ABlockOut::ToolUse { id, name, input: Empty {} };
                self.open_block(out, Open::Tool(tool), block)
            }
        };
        if let Some(args) = function.and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty()) {
            let delta = ABlockDeltaOut {
                kind: "content_block_delta",
                index,
                delta: ADeltaOut::InputJsonDelta { partial_json: args },
            };
            write_event(out, "content_block_delta", &delta);
        }
        true
    }

    fn open_block(&mut self, out: &mut Vec<u8>, kind: Open, block: ABlockOut<'_>) -> u32 {
        self.close(out);
        let index = self.next_block;
        self.next_block = self.next_block.saturating_add(1);
        self.open = Some((kind, index));
        write_event(
            out,
            "content_block_start",
            &ABlockStartOut { kind: "content_block_start", index, content_block: block },
        );
        index
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            write_event(out, "content_block_stop", &ABlockStopOut { kind: "content_block_stop", index });
        }
    }

    fn message_delta(&mut self, out: &mut Vec<u8>) {
        let Some(stop_reason) = self.stop_reason else { return };
        if self.delta_sent {
            return;
        }
        self.delta_sent = true;
        let u = self.usage.unwrap_or_default();
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        let delta = AMessageDeltaOut {
            kind: "message_delta",
            delta: AStopOut { stop_reason, stop_sequence: None },
            usage: AUsageOut {
                input_tokens: u.prompt_tokens.saturating_sub(cached),
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: cached,
                output_tokens: u.completion_tokens,
            },
        };
        write_event(out, "message_delta", &delta);
    }

    fn send_error(&mut self, out: &mut Vec<u8>, kind: &str, message: &str) {
        write_raw_event(out, "error", &anthropic_error_body(kind, message));
        self.failed = true;
    }
}

#[cfg(test)]
mod tests {
    //! Streams written from the public references:
    //! - Anthropic streaming events: https://docs.anthropic.com/en/docs/build-with-claude/streaming
    //! - OpenAI chunk object and streaming: https://platform.openai.com/docs/api-reference/chat/streaming,
    //!   https://platform.openai.com/docs/api-reference/chat/create (stream_options.include_usage)
    //!
    //! Expected outputs live next to the inputs (`*.openai.sse`, `*.anthropic.sse`); run with
    //! `BLESS=1` to rewrite them after a deliberate change, then review the diff.
    use super::*;
    use crate::classify::StreamVerdict;
    use crate::sse::SseParser;
    use serde_json::{json, Value};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/translate/");
    const A_TEXT: &str = include_str!("../../tests/golden/translate/stream_anthropic_text.sse");
    const A_TOOL: &str = include_str!("../../tests/golden/translate/stream_anthropic_tool.sse");
    const A_ERROR: &str = include_str!("../../tests/golden/translate/stream_anthropic_error.sse");
    const O_TEXT: &str = include_str!("../../tests/golden/translate/stream_openai_text.sse");
    const O_TOOL: &str = include_str!("../../tests/golden/translate/stream_openai_tool.sse");
    const O_ERROR: &str = include_str!("../../tests/golden/translate/stream_openai_error.sse");
    const A_TEXT_OUT: &str = include_str!("../../tests/golden/translate/stream_anthropic_text.openai.sse");
    const A_TOOL_OUT: &str = include_str!("../../tests/golden/translate/stream_anthropic_tool.openai.sse");
    const A_ERROR_OUT: &str = include_str!("../../tests/golden/translate/stream_anthropic_error.openai.sse");
    const O_TEXT_OUT: &str = include_str!("../../tests/golden/translate/stream_openai_text.anthropic.sse");
    const O_TOOL_OUT: &str = include_str!("../../tests/golden/translate/stream_openai_tool.anthropic.sse");
    const O_ERROR_OUT: &str = include_str!("../../tests/golden/translate/stream_openai_error.anthropic.sse");

    fn a2o(pieces: &[&[u8]], include_usage: bool) -> Vec<u8> {
        let mut p = SseParser::new();
        let mut t = AnthropicToOpenAi::new(1_700_000_000, include_usage);
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut |e, d| t.on_event(e, d, &mut out));
        }
        out
    }

    fn o2a(pieces: &[&[u8]]) -> Vec<u8> {
        let mut p = SseParser::new();
        let mut t = OpenAiToAnthropic::new(0xfeed);
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut |_, d| t.on_data(d, &mut out));
        }
        out
    }

    /// Same output whole and split in two at every byte.
    fn split_invariant(input: &str, run: &dyn Fn(&[&[u8]]) -> Vec<u8>) -> Vec<u8> {
        let b = input.as_bytes();
        let whole = run(&[b]);
        for i in 0..=b.len() {
            assert_eq!(run(&[&b[..i], &b[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    fn golden(name: &str, expected: &str, got: &[u8]) {
        let got = String::from_utf8(got.to_vec()).unwrap();
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(format!("{DIR}{name}"), &got).unwrap();
            return;
        }
        assert_eq!(got, expected, "{name}");
    }

    fn events(sse: &[u8]) -> Vec<(String, Value)> {
        let mut p = SseParser::new();
        let mut v = Vec::new();
        p.feed(sse, &mut |e, d| {
            let data = if d == b"[DONE]" { json!("[DONE]") } else { serde_json::from_slice(d).unwrap() };
            v.push((String::from_utf8(e.to_vec()).unwrap(), data));
        });
        v
    }

    /// Accumulates Anthropic events the way the SDKs do, strictly: a block is only
    /// addressed while open, `message_start` comes first and once, nothing follows
    /// `message_stop`. Returns the final message and whether `message_stop` arrived.
    fn accumulate_anthropic(sse: &[u8]) -> (Value, bool) {
        let mut msg = Value::Null;
        let mut json_buf = String::new();
        let mut open: Option<usize> = None;
        let mut stopped = false;
        for (name, ev) in events(sse) {
            assert!(!stopped, "event after message_stop");
            assert_eq!(ev["type"], name.as_str());
            match name.as_str() {
                "message_start" => {
                    assert!(msg.is_null());
                    msg = ev["message"].clone();
                    for k in ["id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage"] {
                        assert!(msg.get(k).is_some(), "message_start lacks {k}");
                    }
                    assert_eq!(msg["content"], json!([]));
                }
                "content_block_start" => {
                    assert!(open.is_none());
                    let content = msg["content"].as_array_mut().unwrap();
                    assert_eq!(ev["index"], content.len());
                    content.push(ev["content_block"].clone());
                    open = Some(content.len() - 1);
                    json_buf.clear();
                }
                "content_block_delta" => {
                    let i = ev["index"].as_u64().unwrap() as usize;
                    assert_eq!(open, Some(i));
                    let block = &mut msg["content"][i];
                    match ev["delta"]["type"].as_str().unwrap() {
                        "text_delta" => {
                            let t =
                                format!("{}{}", block["text"].as_str().unwrap(), ev["delta"]["text"].as_str().unwrap());
                            block["text"] = json!(t);
                        }
                        "input_json_delta" => json_buf.push_str(ev["delta"]["partial_json"].as_str().unwrap()),
                        other => panic!("delta {other}"),
                    }
                }
                "content_block_stop" => {
                    let i = ev["index"].as_u64().unwrap() as usize;
                    assert_eq!(open.take(), Some(i));
                    if msg["content"][i]["type"] == "tool_use" && !json_buf.is_empty() {
                        msg["content"][i]["input"] = serde_json::from_str(&json_buf).unwrap();
                    }
                }
                "message_delta" => {
                    assert!(open.is_none());
                    msg["stop_reason"] = ev["delta"]["stop_reason"].clone();
                    msg["stop_sequence"] = ev["delta"]["stop_sequence"].clone();
                    for (k, v) in ev["usage"].as_object().unwrap() {
                        msg["usage"][k] = v.clone();
                    }
                }
                "message_stop" => stopped = true,
                "ping" => {}
                "error" => panic!("unexpected error event {ev}"),
                other => panic!("unknown event {other}"),
            }
        }
        (msg, stopped)
    }

    /// (text, [(id, name, arguments)], finish_reason, usage, saw [DONE]).
    type OpenAiResult = (String, Vec<(String, String, String)>, Option<String>, Value, bool);

    /// Accumulates OpenAI chunks the way the SDKs do.
    fn accumulate_openai(sse: &[u8]) -> OpenAiResult {
        let mut text = String::new();
        let mut tools: Vec<(String, String, String)> = Vec::new();
        let (mut finish, mut usage, mut done) = (None, Value::Null, false);
        let mut id = None;
        for (name, ev) in events(sse) {
            assert_eq!(name, "message");
            assert!(!done, "data after [DONE]");
            if ev == "[DONE]" {
                done = true;
                continue;
            }
            assert_eq!(ev["object"], "chat.completion.chunk");
            let this_id = ev["id"].as_str().unwrap().to_owned();
            assert_eq!(id.get_or_insert(this_id.clone()), &this_id, "one id per stream");
            if !ev["usage"].is_null() {
                usage = ev["usage"].clone();
            }
            for c in ev["choices"].as_array().unwrap() {
                let d = &c["delta"];
                if let Some(t) = d["content"].as_str() {
                    text.push_str(t);
                }
                for tc in d["tool_calls"].as_array().into_iter().flatten() {
                    let i = tc["index"].as_u64().unwrap() as usize;
                    if i == tools.len() {
                        tools.push((
                            tc["id"].as_str().unwrap().into(),
                            tc["function"]["name"].as_str().unwrap().into(),
                            String::new(),
                        ));
                    }
                    tools[i].2.push_str(tc["function"]["arguments"].as_str().unwrap());
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    finish = Some(f.to_owned());
                }
            }
        }
        (text, tools, finish, usage, done)
    }

    fn openai_verdict(sse: &[u8]) -> StreamVerdict {
        let mut m = crate::providers::openai::StreamMonitor::new();
        let mut p = SseParser::new();
        p.feed(sse, &mut |_, d| m.on_data(d));
        m.verdict(false)
    }

    fn anthropic_verdict(sse: &[u8]) -> StreamVerdict {
        let mut m = crate::providers::anthropic::StreamMonitor::new();
        m.feed(sse);
        m.verdict()
    }

    #[test]
    fn anthropic_text_stream_to_openai() {
        let out = split_invariant(A_TEXT, &|p| a2o(p, true));
        golden("stream_anthropic_text.openai.sse", A_TEXT_OUT, &out);
        let (text, tools, finish, usage, done) = accumulate_openai(&out);
        assert_eq!(text, "Hello! \"Quoted\" and caf\u{e9} \u{2014} ok.");
        assert!(tools.is_empty());
        assert_eq!(finish.as_deref(), Some("stop"));
        assert_eq!(
            usage,
            json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40, "prompt_tokens_details": {"cached_tokens": 0}})
        );
        assert!(done);
        assert_eq!(openai_verdict(&out), StreamVerdict::Complete);
        // Without include_usage: no usage anywhere.
        let out = a2o(&[A_TEXT.as_bytes()], false);
        assert!(!String::from_utf8(out.clone()).unwrap().contains("usage"));
        assert_eq!(openai_verdict(&out), StreamVerdict::Complete);
    }

    #[test]
    fn anthropic_tool_stream_to_openai() {
        let out = split_invariant(A_TOOL, &|p| a2o(p, true));
        golden("stream_anthropic_tool.openai.sse", A_TOOL_OUT, &out);
        let (text, tools, finish, usage, done) = accumulate_openai(&out);
        assert_eq!(text, "Okay, let me check.");
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[0].0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
        assert_eq!(tools[0].1, "get_weather");
        assert_eq!(serde_json::from_str::<Value>(&tools[0].2).unwrap(), json!({"location": "San Francisco, CA"}));
        assert_eq!(tools[1].1, "get_time");
        assert_eq!(serde_json::from_str::<Value>(&tools[1].2).unwrap(), json!({"tz": "PST"}));
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(usage["completion_tokens"], 89);
        assert!(done);
    }

    #[test]
    fn anthropic_error_event_becomes_an_openai_error_chunk() {
        let out = split_invariant(A_ERROR, &|p| a2o(p, true));
        golden("stream_anthropic_error.openai.sse", A_ERROR_OUT, &out);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(!s.contains("[DONE]"));
        assert!(s.ends_with(
            "data: {\"error\":{\"code\":\"server_is_overloaded\",\"message\":\"Overloaded\",\"param\":null,\"type\":\"server_error\"}}\n\n"
        ));
        assert_eq!(openai_verdict(&out), StreamVerdict::Error { overloaded: true });
    }

    #[test]
    fn truncated_anthropic_stream_stays_truncated() {
        let b = A_TOOL.as_bytes();
        let stop = A_TOOL.find("event: message_stop").unwrap();
        for cut in 0..stop {
            let mut p = SseParser::new();
            let mut t = AnthropicToOpenAi::new(1, true);
            let mut out = Vec::new();
            p.feed(&b[..cut], &mut |e, d| t.on_event(e, d, &mut out));
            assert!(!t.is_done());
            let s = String::from_utf8(out.clone()).unwrap();
            assert!(!s.contains("[DONE]"), "cut at {cut}");
            assert_eq!(openai_verdict(&out), StreamVerdict::Truncated, "cut at {cut}");
            t.finish(&mut out);
            t.finish(&mut out);
            let s = String::from_utf8(out.clone()).unwrap();
            assert!(!s.contains("[DONE]"));
            assert_eq!(s.matches("\"error\"").count(), 1, "one error chunk at cut {cut}");
            assert_eq!(openai_verdict(&out), StreamVerdict::Error { overloaded: false });
        }
        // A complete stream: finish adds nothing.
        let mut t = AnthropicToOpenAi::new(1, true);
        let mut out = Vec::new();
        SseParser::new().feed(b, &mut |e, d| t.on_event(e, d, &mut out));
        let n = out.len();
        t.finish(&mut out);
        assert_eq!(out.len(), n);
    }

    #[test]
    fn openai_text_stream_to_anthropic() {
        let out = split_invariant(O_TEXT, &o2a);
        golden("stream_openai_text.anthropic.sse", O_TEXT_OUT, &out);
        let (msg, stopped) = accumulate_anthropic(&out);
        assert!(stopped);
        assert_eq!(msg["id"], "msg_000000000000feed");
        assert_eq!(msg["model"], "gpt-4o-mini-2024-07-18");
        assert_eq!(msg["content"], json!([{"type": "text", "text": "Hello! \"Quoted\" and caf\u{e9}."}]));
        assert_eq!(msg["stop_reason"], "end_turn");
        assert_eq!(msg["usage"]["input_tokens"], 9);
        assert_eq!(msg["usage"]["output_tokens"], 12);
        assert_eq!(anthropic_verdict(&out), StreamVerdict::Complete);
    }

    #[test]
    fn openai_tool_stream_to_anthropic() {
        let out = split_invariant(O_TOOL, &o2a);
        golden("stream_openai_tool.anthropic.sse", O_TOOL_OUT, &out);
        let (msg, stopped) = accumulate_anthropic(&out);
        assert!(stopped);
        assert_eq!(
            msg["content"],
            json!([
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
            ])
        );
        assert_eq!(msg["stop_reason"], "tool_use");
        assert_eq!(msg["usage"]["input_tokens"], 20);
        assert_eq!(msg["usage"]["cache_read_input_tokens"], 100);
        assert_eq!(msg["usage"]["output_tokens"], 40);
    }

    #[test]
    fn openai_error_chunk_becomes_an_anthropic_error_event() {
        let out = split_invariant(O_ERROR, &o2a);
        golden("stream_openai_error.anthropic.sse", O_ERROR_OUT, &out);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(!s.contains("message_stop"));
        assert!(s.ends_with("event: error\ndata: {\"error\":{\"message\":\"The server is overloaded or not ready yet.\",\"type\":\"overloaded_error\"},\"type\":\"error\"}\n\n"));
        assert_eq!(anthropic_verdict(&out), StreamVerdict::Error { overloaded: true });
    }

    #[test]
    fn truncated_openai_stream_stays_truncated() {
        let b = O_TOOL.as_bytes();
        let done = O_TOOL.find("data: [DONE]").unwrap();
        for cut in 0..done {
            let mut p = SseParser::new();
            let mut t = OpenAiToAnthropic::new(1);
            let mut out = Vec::new();
            p.feed(&b[..cut], &mut |_, d| t.on_data(d, &mut out));
            assert!(!String::from_utf8(out.clone()).unwrap().contains("message_stop"), "cut at {cut}");
            assert_eq!(anthropic_verdict(&out), StreamVerdict::Truncated, "cut at {cut}");
            let finished = t.stop_reason.is_some();
            t.finish(&mut out);
            t.finish(&mut out);
            let s = String::from_utf8(out.clone()).unwrap();
            if finished {
                // Cut after the finish_reason chunk, at a clean end: a complete answer.
                assert_eq!(s.matches("event: message_stop").count(), 1, "cut at {cut}");
                assert_eq!(anthropic_verdict(&out), StreamVerdict::Complete, "cut at {cut}");
            } else {
                assert!(!s.contains("message_stop"));
                assert_eq!(s.matches("event: error").count(), 1);
                assert_eq!(anthropic_verdict(&out), StreamVerdict::Error { overloaded: false });
            }
        }
        // [DONE] without any finish_reason is not a complete answer either.
        let out = o2a(&[
            b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n",
        ]);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(!s.contains("message_stop") && s.contains("event: error"));
    }

    #[test]
    fn usage_in_the_finish_chunk_or_missing() {
        // Some compatible servers put usage in the finish chunk itself.
        let s = "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let (msg, stopped) = accumulate_anthropic(&o2a(&[s.as_bytes()]));
        assert!(stopped);
        assert_eq!(
            (msg["stop_reason"].as_str(), msg["usage"]["output_tokens"].as_u64()),
            (Some("max_tokens"), Some(1))
        );
        // No usage chunk at all (include_usage was off): message_delta waits for [DONE].
        let s = "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\ndata: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\ndata: [DONE]\n\n";
        let out = o2a(&[s.as_bytes()]);
        let (msg, stopped) = accumulate_anthropic(&out);
        assert!(stopped);
        assert_eq!(msg["stop_reason"], "refusal");
        assert_eq!(String::from_utf8(out).unwrap().matches("message_delta").count(), 2);
    }

    #[test]
    fn round_trip_anthropic_openai_anthropic() {
        for input in [A_TEXT, A_TOOL] {
            let (want, _) = accumulate_anthropic(input.as_bytes());
            let openai = a2o(&[input.as_bytes()], true);
            let back = o2a(&[&openai]);
            let (got, stopped) = accumulate_anthropic(&back);
            assert!(stopped);
            let strip = |m: &Value| -> Value {
                m["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|b| b["type"] != "text" || b["text"] != "")
                    .cloned()
                    .collect()
            };
            assert_eq!(strip(&got), strip(&want));
            assert_eq!(got["stop_reason"], want["stop_reason"]);
            assert_eq!(got["usage"]["output_tokens"], want["usage"]["output_tokens"]);
            assert_eq!(got["usage"]["input_tokens"], want["usage"]["input_tokens"]);
        }
    }

    #[test]
    fn interleaved_tool_deltas_fail_visibly() {
        let chunk = |i: u32, id: &str, args: &str| {
            format!(
                "data: {{\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{i},{id}\"function\":{{\"name\":\"f\",\"arguments\":\"{args}\"}}}}]}}}}]}}\n\n"
            )
        };
        let s = [chunk(0, "\"id\":\"a\",", "{"), chunk(1, "\"id\":\"b\",", "{"), chunk(0, "", "}")].concat();
        let out = String::from_utf8(o2a(&[s.as_bytes()])).unwrap();
        assert!(out.ends_with("\"type\":\"error\"}\n\n"), "{out}");
        assert_eq!(out.matches("event: content_block_start").count(), 2);
    }

    #[test]
    fn garbage_is_tolerated() {
        let garbage: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut a = AnthropicToOpenAi::new(0, true);
        let mut o = OpenAiToAnthropic::new(0);
        let mut out = Vec::new();
        for c in garbage.chunks(97) {
            a.on_event(b"content_block_delta", c, &mut out);
            a.on_event(b"message", c, &mut out);
            o.on_data(c, &mut out);
        }
        assert!(out.is_empty());
        // Wrong shapes in valid JSON.
        for d in [
            &b"{\"type\":\"content_block_delta\",\"index\":\"x\"}"[..],
            b"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":7}",
            b"{\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}",
            b"[1,2]",
            b"null",
        ] {
            a.on_event(b"message", d, &mut out);
        }
        for d in [&b"{\"choices\":5}"[..], b"{\"choices\":[{\"delta\":{\"tool_calls\":[{}]}}]}", b"[]", b"1"] {
            o.on_data(d, &mut out);
        }
        // An error event whose data is not JSON still fails the stream.
        let mut a = AnthropicToOpenAi::new(0, false);
        let mut out = Vec::new();
        a.on_event(b"error", b"<html>", &mut out);
        assert!(a.is_failed());
        assert_eq!(openai_verdict(&out), StreamVerdict::Error { overloaded: false });
    }

    #[test]
    fn events_without_an_event_name_use_the_data_type() {
        let s = A_TEXT.replace("event: ", ": ");
        assert_eq!(a2o(&[s.as_bytes()], true), a2o(&[A_TEXT.as_bytes()], true));
    }
}

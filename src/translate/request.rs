//! Request bodies: Anthropic Messages <-> OpenAI Chat Completions.
//!
//! Owns the request half of the translation. `model` is always replaced by
//! [`RequestOptions::model`]. A field not listed below is refused as unknown.
//!
//! **Anthropic -> OpenAI** ([`anthropic_to_openai`])
//! - Translated: `system` (string or text blocks) -> leading `system` message (text parts when
//!   several blocks); `messages[]` user/assistant with string or block content: `text`,
//!   `image` (`base64` source -> `data:<media_type>;base64,...` `image_url`; `url` source ->
//!   `image_url.url`), assistant `tool_use` -> `tool_calls` (arguments = JSON text of `input`),
//!   user `tool_result` -> `role: tool` messages placed before the rest of that turn (content:
//!   string, or text blocks concatenated; `is_error: true` prefixes it with `[tool error] `); `tools` (`name`, `description`, `input_schema` ->
//!   `function.parameters`, `strict` -> `function.strict`); `tool_choice` auto/any/tool/none ->
//!   `"auto"`/`"required"`/`{type:function,...}`/`"none"`, `disable_parallel_tool_use: true` ->
//!   `parallel_tool_calls: false`; `stop_sequences` -> `stop` (at most 4); `max_tokens` ->
//!   `max_completion_tokens`; `temperature`; `top_p`; `metadata.user_id` -> `user`; `stream`
//!   (true adds `stream_options.include_usage: true`).
//! - Refused: `top_k`; `thinking` other than `{type: disabled}`; `document` blocks (PDF and
//!   text files), `thinking`/`redacted_thinking` blocks and every other block type;
//!   image sources other than base64/url (e.g. Files API `file`); images or documents inside
//!   `tool_result`; `tool_result` after other blocks of a turn;
//!   text `citations`; server tools (`tools[].type` other than `custom`); a final assistant
//!   message (prefill: OpenAI would answer it, not continue it); more than 4 `stop_sequences`;
//!   `metadata` keys other than `user_id`; roles other than user/assistant; unknown fields.
//! - Ignored (cannot change the answer): `cache_control` anywhere (prompt caching hint);
//!   `thinking: {type: disabled}` (the default); `service_tier` (capacity routing).
//!
//! **OpenAI -> Anthropic** ([`openai_to_anthropic`])
//! - Translated: leading `system`/`developer` messages (string or text parts) -> `system` (a
//!   string, or text blocks when several); `user` text and `image_url` parts (`data:` base64
//!   URL -> base64 image source; http(s) URL -> url source); `assistant` content, `refusal`
//!   text and `tool_calls` -> text and `tool_use` blocks (arguments parsed as JSON);
//!   `tool` messages -> `tool_result` blocks in a user turn; consecutive messages of the same
//!   Anthropic role merged into one turn; empty text skipped; `tools` (type function:
//!   `name`, `description`, `parameters` -> `input_schema`); `tool_choice`
//!   auto/none/required/`{type:function}` -> auto/none/any/tool; `parallel_tool_calls: false`
//!   -> `disable_parallel_tool_use: true`; `stop` (string or list) -> `stop_sequences`;
//!   `max_completion_tokens` (else `max_tokens`, else [`RequestOptions::default_max_tokens`])
//!   -> `max_tokens`; `temperature` (0..=1); `top_p`; `user` (else `safety_identifier`) ->
//!   `metadata.user_id`; `stream`.
//! - Refused: a system/developer message after the first other message; `temperature` > 1;
//!   `n` > 1; `logprobs: true`; `top_logprobs` > 0; `response_format` other than text;
//!   `modalities` other than `["text"]`; `audio`; non-zero `presence_penalty` /
//!   `frequency_penalty`; non-empty `logit_bias`; `reasoning_effort`; `verbosity`;
//!   `web_search_options`; legacy `functions`/`function_call`; `role: function`; message
//!   `name`; `input_audio` and `file` parts; non-base64 `data:` URLs and other URL schemes;
//!   image types other than jpeg/png/gif/webp; tool call arguments that are not a JSON
//!   object; tool types other than function; `tool_choice` allowed_tools/custom; a final
//!   assistant message (Anthropic would continue it as a prefill); unknown fields.
//! - Ignored (cannot change the answer): `stream_options` (the stream translator emits usage
//!   anyway); `seed` (a best-effort reproducibility hint); `store`, `metadata` (OpenAI-side
//!   storage and tagging); `service_tier`; `prompt_cache_key`; `prediction` (a latency
//!   hint); `image_url.detail` (a resolution/cost hint: Claude sees the image at its own
//!   resolution); `tools[].function.strict` (a guarantee, not an instruction: Claude's tool
//!   input follows the schema without it, as in Anthropic's own OpenAI compatibility layer).

use super::Untranslatable;
use serde_json::{json, Map, Value};

/// What the target request needs besides the client's body.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions<'a> {
    /// The model name the target provider expects (after model mapping).
    pub model: &'a str,
    /// `max_tokens` for an Anthropic request when the OpenAI client gave none.
    pub default_max_tokens: u32,
}

type Res<T> = Result<T, Untranslatable>;

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Untranslatable {
    Untranslatable::new(field, reason)
}

/// How a `tool_result` with `is_error: true` reads in an OpenAI tool message.
pub const TOOL_ERROR_PREFIX: &str = "[tool error] ";

/// At most this many stop sequences in an OpenAI request.
const OPENAI_MAX_STOP: usize = 4;

// ---------------------------------------------------------------------------------------------
// Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

/// An Anthropic Messages request as an OpenAI Chat Completions request.
pub fn anthropic_to_openai(body: &Value, opts: &RequestOptions<'_>) -> Result<Value, Untranslatable> {
    let obj = body.as_object().ok_or_else(|| bad("(root)", "the request body is not a JSON object"))?;
    let mut out = Map::new();
    out.insert("model".into(), Value::from(opts.model));
    let mut system: Option<Value> = None;
    let mut messages = Vec::new();
    for (key, v) in obj {
        let k = key.as_str();
        match k {
            "model" => {}
            "messages" => messages = a2o_messages(v)?,
            "system" => system = a2o_system(v)?,
            "max_tokens" => copy_number(&mut out, "max_completion_tokens", v, k)?,
            "temperature" | "top_p" => copy_number(&mut out, k, v, k)?,
            "stop_sequences" => {
                if let Some(stop) = a2o_stop(v)? {
                    out.insert("stop".into(), stop);
                }
            }
            "metadata" => a2o_metadata(&mut out, v)?,
            "stream" => match v {
                Value::Null => {}
                Value::Bool(true) => {
                    out.insert("stream".into(), Value::Bool(true));
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
                Value::Bool(false) => {
                    out.insert("stream".into(), Value::Bool(false));
                }
                _ => return Err(bad(k, "must be a boolean")),
            },
            "tools" => {
                if !v.is_null() {
                    out.insert("tools".into(), a2o_tools(v)?);
                }
            }
            "tool_choice" => a2o_tool_choice(&mut out, v)?,
            "top_k" => {
                if !v.is_null() {
                    return Err(bad(k, "OpenAI Chat Completions has no top-k sampling"));
                }
            }
            "thinking" => {
                let disabled = v.is_null() || v.get("type").and_then(Value::as_str) == Some("disabled");
                if !disabled {
                    return Err(bad(k, "extended thinking has no OpenAI Chat Completions equivalent"));
                }
            }
            "service_tier" => {}
            _ => return Err(bad(k, "unknown field with no OpenAI Chat Completions equivalent")),
        }
    }
    if let Some(system) = system {
        messages.insert(0, json!({"role": "system", "content": system}));
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(Value::Object(out))
}

fn copy_number(out: &mut Map<String, Value>, to: &str, v: &Value, field: &str) -> Res<()> {
    match v {
        Value::Null => Ok(()),
        Value::Number(_) => {
            out.insert(to.into(), v.clone());
            Ok(())
        }
        _ => Err(bad(field, "must be a number")),
    }
}

/// `system` as the content of an OpenAI system message (None when empty).
fn a2o_system(v: &Value) -> Res<Option<Value>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(Value::from(s.as_str()))),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                let path = format!("system[{i}]");
                match block_type(b, &path)? {
                    "text" => parts.push(a2o_text_part(b, &path)?),
                    t => return Err(bad(format!("{path}.type"), format!("`{t}` blocks cannot be a system prompt"))),
                }
            }
            Ok(match parts.len() {
                0 => None,
                1 => parts.pop().and_then(|mut p| p.get_mut("text").map(Value::take)),
                _ => Some(Value::Array(parts)),
            })
        }
        _ => Err(bad("system", "must be a string or an array of text blocks")),
    }
}

fn block_type<'v>(b: &'v Value, path: &str) -> Res<&'v str> {
    if !b.is_object() {
        return Err(bad(path, "a content block must be an object"));
    }
    b.get("type").and_then(Value::as_str).ok_or_else(|| bad(format!("{path}.type"), "missing block type"))
}

/// Checks that `b` has only `allowed` keys (and `type`).
fn only_keys(b: &Value, path: &str, allowed: &[&str]) -> Res<()> {
    if let Some(obj) = b.as_object() {
        for (k, v) in obj {
            if k == "type" || allowed.contains(&k.as_str()) {
                continue;
            }
            // An explicit null says nothing.
            if v.is_null() {
                continue;
            }
            return Err(bad(format!("{path}.{k}"), "no OpenAI Chat Completions equivalent"));
        }
    }
    Ok(())
}

fn str_field<'v>(b: &'v Value, key: &str, path: &str) -> Res<&'v str> {
    b.get(key).and_then(Value::as_str).ok_or_else(|| bad(format!("{path}.{key}"), "must be a string"))
}

/// A text block's text, checked: `cache_control` is ignored, `citations` refused.
fn a2o_text(b: &Value, path: &str) -> Res<String> {
    if let Some(c) = b.get("citations") {
        if !(c.is_null() || c.as_array().is_some_and(Vec::is_empty)) {
            return Err(bad(format!("{path}.citations"), "citations have no OpenAI Chat Completions equivalent"));
        }
    }
    only_keys(b, path, &["text", "cache_control", "citations"])?;
    Ok(str_field(b, "text", path)?.to_owned())
}

fn a2o_text_part(b: &Value, path: &str) -> Res<Value> {
    Ok(json!({"type": "text", "text": a2o_text(b, path)?}))
}

fn a2o_image_part(b: &Value, path: &str) -> Res<Value> {
    only_keys(b, path, &["source", "cache_control"])?;
    let src_path = format!("{path}.source");
    let src = b.get("source").filter(|s| s.is_object()).ok_or_else(|| bad(&src_path, "missing image source"))?;
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            only_keys(src, &src_path, &["media_type", "data"])?;
            let media_type = str_field(src, "media_type", &src_path)?;
            let data = str_field(src, "data", &src_path)?;
            let mut url = String::with_capacity(data.len() + media_type.len() + 13);
            url.push_str("data:");
            url.push_str(media_type);
            url.push_str(";base64,");
            url.push_str(data);
            url
        }
        Some("url") => {
            only_keys(src, &src_path, &["url"])?;
            str_field(src, "url", &src_path)?.to_owned()
        }
        _ => {
            return Err(bad(
                format!("{src_path}.type"),
                "only base64 and url image sources have an OpenAI Chat Completions equivalent",
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn a2o_messages(v: &Value) -> Res<Vec<Value>> {
    let list = v.as_array().ok_or_else(|| bad("messages", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len() + 1);
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        if !m.is_object() {
            return Err(bad(path, "a message must be an object"));
        }
        only_keys(m, &path, &["role", "content"])?;
        let content = m.get("content").ok_or_else(|| bad(format!("{path}.content"), "missing content"))?;
        match m.get("role").and_then(Value::as_str) {
            Some("user") => a2o_user(content, &path, &mut out)?,
            Some("assistant") => {
                if i + 1 == list.len() {
                    return Err(bad(
                        path,
                        "a final assistant message is a prefill that OpenAI Chat Completions cannot continue",
                    ));
                }
                out.push(a2o_assistant(content, &path)?);
            }
            _ => return Err(bad(format!("{path}.role"), "must be user or assistant")),
        }
    }
    Ok(out)
}

fn a2o_user(content: &Value, path: &str, out: &mut Vec<Value>) -> Res<()> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err(bad(format!("{path}.content"), "must be a string or an array of blocks")),
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        match block_type(b, &bpath)? {
            "text" => parts.push(a2o_text_part(b, &bpath)?),
            "image" => parts.push(a2o_image_part(b, &bpath)?),
            "tool_result" => {
                if !parts.is_empty() {
                    return Err(bad(bpath, "tool_result blocks must come before other content in a turn"));
                }
                out.push(a2o_tool_result(b, &bpath)?);
            }
            "document" => {
                return Err(bad(
                    format!("{bpath}.type"),
                    "document blocks (PDF, text files) are not translated to OpenAI Chat Completions",
                ))
            }
            t => {
                return Err(bad(
                    format!("{bpath}.type"),
                    format!("`{t}` blocks have no OpenAI Chat Completions equivalent in a user turn"),
                ))
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = if parts.len() == 1 && parts.first().and_then(|p| p.get("type")) == Some(&Value::from("text")) {
        parts.pop().and_then(|mut p| p.get_mut("text").map(Value::take)).unwrap_or_default()
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn a2o_tool_result(b: &Value, path: &str) -> Res<Value> {
    only_keys(b, path, &["tool_use_id", "content", "is_error", "cache_control"])?;
    let id = str_field(b, "tool_use_id", path)?;
    let is_error = match b.get("is_error") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(bad(format!("{path}.is_error"), "must be a boolean")),
    };
    let mut text = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (k, c) in blocks.iter().enumerate() {
                let cpath = format!("{path}.content[{k}]");
                match block_type(c, &cpath)? {
                    "text" => text.push_str(&a2o_text(c, &cpath)?),
                    t => {
                        return Err(bad(
                            format!("{cpath}.type"),
                            format!("`{t}` blocks inside a tool_result have no OpenAI Chat Completions equivalent"),
                        ))
                    }
                }
            }
            text
        }
        Some(_) => return Err(bad(format!("{path}.content"), "must be a string or an array of blocks")),
    };
    // OpenAI tool messages have no error flag: the model is told in the content itself.
    if is_error {
        text.insert_str(0, TOOL_ERROR_PREFIX);
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

fn a2o_assistant(content: &Value, path: &str) -> Res<Value> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(blocks) => blocks,
        _ => return Err(bad(format!("{path}.content"), "must be a string or an array of blocks")),
    };
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        match block_type(b, &bpath)? {
            "text" => text.get_or_insert_with(String::new).push_str(&a2o_text(b, &bpath)?),
            "tool_use" => {
                only_keys(b, &bpath, &["id", "name", "input", "cache_control"])?;
                let input = b.get("input").unwrap_or(&Value::Null);
                if !input.is_object() {
                    return Err(bad(format!("{bpath}.input"), "must be an object"));
                }
                calls.push(json!({
                    "id": str_field(b, "id", &bpath)?,
                    "type": "function",
                    "function": {"name": str_field(b, "name", &bpath)?, "arguments": input.to_string()},
                }));
            }
            t => {
                return Err(bad(
                    format!("{bpath}.type"),
                    format!("`{t}` blocks have no OpenAI Chat Completions equivalent in an assistant turn"),
                ))
            }
        }
    }
    let mut m = Map::new();
    m.insert("role".into(), Value::from("assistant"));
    m.insert("content".into(), text.map_or(Value::Null, Value::from));
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(m))
}

fn a2o_stop(v: &Value) -> Res<Option<Value>> {
    let list = match v {
        Value::Null => return Ok(None),
        Value::Array(list) => list,
        _ => return Err(bad("stop_sequences", "must be an array of strings")),
    };
    if list.iter().any(|s| !s.is_string()) {
        return Err(bad("stop_sequences", "must be an array of strings"));
    }
    if list.len() > OPENAI_MAX_STOP {
        return Err(bad("stop_sequences", "OpenAI Chat Completions accepts at most 4 stop sequences"));
    }
    Ok(if list.is_empty() { None } else { Some(v.clone()) })
}

fn a2o_metadata(out: &mut Map<String, Value>, v: &Value) -> Res<()> {
    let Some(obj) = v.as_object() else {
        return if v.is_null() { Ok(()) } else { Err(bad("metadata", "must be an object")) };
    };
    for (k, val) in obj {
        match (k.as_str(), val) {
            (_, Value::Null) => {}
            ("user_id", Value::String(s)) => {
                out.insert("user".into(), Value::from(s.as_str()));
            }
            ("user_id", _) => return Err(bad("metadata.user_id", "must be a string")),
            _ => return Err(bad(format!("metadata.{k}"), "no OpenAI Chat Completions equivalent")),
        }
    }
    Ok(())
}

fn a2o_tools(v: &Value) -> Res<Value> {
    let list = v.as_array().ok_or_else(|| bad("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        if !t.is_object() {
            return Err(bad(path, "a tool must be an object"));
        }
        match t.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "custom" => {}
            Some(_) => {
                return Err(bad(format!("{path}.type"), "server tools have no OpenAI Chat Completions equivalent"))
            }
        }
        only_keys(t, &path, &["name", "description", "input_schema", "cache_control", "strict"])?;
        let mut f = Map::new();
        f.insert("name".into(), Value::from(str_field(t, "name", &path)?));
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            f.insert("description".into(), d.clone());
        }
        let schema = t.get("input_schema").filter(|s| s.is_object());
        f.insert(
            "parameters".into(),
            schema.cloned().ok_or_else(|| bad(format!("{path}.input_schema"), "must be an object"))?,
        );
        if let Some(s) = t.get("strict").filter(|s| s.is_boolean()) {
            f.insert("strict".into(), s.clone());
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

fn a2o_tool_choice(out: &mut Map<String, Value>, v: &Value) -> Res<()> {
    if v.is_null() {
        return Ok(());
    }
    if !v.is_object() {
        return Err(bad("tool_choice", "must be an object"));
    }
    let kind = str_field(v, "type", "tool_choice")?;
    let allowed: &[&str] = match kind {
        "tool" => &["name", "disable_parallel_tool_use"],
        "none" => &[],
        _ => &["disable_parallel_tool_use"],
    };
    only_keys(v, "tool_choice", allowed)?;
    let choice = match kind {
        "auto" => Value::from("auto"),
        "any" => Value::from("required"),
        "none" => Value::from("none"),
        "tool" => json!({"type": "function", "function": {"name": str_field(v, "name", "tool_choice")?}}),
        _ => return Err(bad("tool_choice.type", "must be auto, any, tool or none")),
    };
    out.insert("tool_choice".into(), choice);
    match v.get("disable_parallel_tool_use") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
        Some(_) => return Err(bad("tool_choice.disable_parallel_tool_use", "must be a boolean")),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OpenAI -> Anthropic
// ---------------------------------------------------------------------------------------------

/// An OpenAI Chat Completions request as an Anthropic Messages request.
pub fn openai_to_anthropic(body: &Value, opts: &RequestOptions<'_>) -> Result<Value, Untranslatable> {
    let obj = body.as_object().ok_or_else(|| bad("(root)", "the request body is not a JSON object"))?;
    let mut out = Map::new();
    out.insert("model".into(), Value::from(opts.model));
    let mut max_tokens: Option<u64> = None;
    let mut max_completion_tokens: Option<u64> = None;
    let mut user: Option<&str> = None;
    let mut safety_identifier: Option<&str> = None;
    let mut tool_choice: Option<Value> = None;
    let mut no_parallel = false;
    for (key, v) in obj {
        let k = key.as_str();
        match k {
            "model" | "stream_options" | "seed" | "store" | "metadata" | "service_tier" | "prompt_cache_key"
            | "prediction" => {}
            "messages" => {
                let (system, messages) = o2a_messages(v)?;
                if let Some(system) = system {
                    out.insert("system".into(), system);
                }
                out.insert("messages".into(), Value::Array(messages));
            }
            "max_tokens" => max_tokens = positive_int(v, k)?,
            "max_completion_tokens" => max_completion_tokens = positive_int(v, k)?,
            "temperature" => match v {
                Value::Null => {}
                Value::Number(n) => {
                    let t = n.as_f64().unwrap_or(f64::NAN);
                    if !(0.0..=1.0).contains(&t) {
                        return Err(bad(k, "Anthropic accepts temperatures from 0 to 1"));
                    }
                    out.insert(k.into(), v.clone());
                }
                _ => return Err(bad(k, "must be a number")),
            },
            "top_p" => copy_number(&mut out, k, v, k)?,
            "stop" => match v {
                Value::Null => {}
                Value::String(s) => {
                    out.insert("stop_sequences".into(), json!([s]));
                }
                Value::Array(list) if list.iter().all(Value::is_string) => {
                    if !list.is_empty() {
                        out.insert("stop_sequences".into(), v.clone());
                    }
                }
                _ => return Err(bad(k, "must be a string or an array of strings")),
            },
            "stream" => match v {
                Value::Null => {}
                Value::Bool(b) => {
                    out.insert(k.into(), Value::Bool(*b));
                }
                _ => return Err(bad(k, "must be a boolean")),
            },
            "tools" => {
                if !v.is_null() {
                    out.insert("tools".into(), o2a_tools(v)?);
                }
            }
            "tool_choice" => tool_choice = o2a_tool_choice(v)?,
            "parallel_tool_calls" => match v {
                Value::Null | Value::Bool(true) => {}
                Value::Bool(false) => no_parallel = true,
                _ => return Err(bad(k, "must be a boolean")),
            },
            "user" => user = opt_str(v, k)?,
            "safety_identifier" => safety_identifier = opt_str(v, k)?,
            "n" => {
                if !(v.is_null() || v.as_u64() == Some(1)) {
                    return Err(bad(k, "Anthropic returns exactly one choice"));
                }
            }
            "logprobs" => {
                if !(v.is_null() || v == &Value::Bool(false)) {
                    return Err(bad(k, "Anthropic does not return log probabilities"));
                }
            }
            "top_logprobs" => {
                if !(v.is_null() || v.as_u64() == Some(0)) {
                    return Err(bad(k, "Anthropic does not return log probabilities"));
                }
            }
            "response_format" => {
                if !(v.is_null() || v.get("type").and_then(Value::as_str) == Some("text")) {
                    return Err(bad(k, "structured output formats are not translated to Anthropic"));
                }
            }
            "modalities" => {
                let text_only = v.is_null() || v.as_array().is_some_and(|m| m.iter().all(|x| x == "text"));
                if !text_only {
                    return Err(bad(k, "Anthropic answers with text only"));
                }
            }
            "audio" => {
                if !v.is_null() {
                    return Err(bad(k, "Anthropic has no audio output"));
                }
            }
            "presence_penalty" | "frequency_penalty" => {
                if !(v.is_null() || v.as_f64() == Some(0.0)) {
                    return Err(bad(k, "Anthropic has no repetition penalties"));
                }
            }
            "logit_bias" => {
                if !(v.is_null() || v.as_object().is_some_and(Map::is_empty)) {
                    return Err(bad(k, "Anthropic has no logit bias"));
                }
            }
            "functions" | "function_call" => {
                if !v.is_null() {
                    return Err(bad(k, "legacy function calling is not translated; use tools and tool_choice"));
                }
            }
            _ => return Err(bad(k, "unknown field with no Anthropic Messages equivalent")),
        }
    }
    let max = max_completion_tokens.or(max_tokens).unwrap_or(u64::from(opts.default_max_tokens));
    out.insert("max_tokens".into(), Value::from(max));
    if let Some(u) = user.or(safety_identifier) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if no_parallel && tool_choice.is_none() {
        tool_choice = Some(json!({"type": "auto"}));
    }
    if let Some(mut choice) = tool_choice {
        if no_parallel && choice.get("type").and_then(Value::as_str) != Some("none") {
            if let Some(c) = choice.as_object_mut() {
                c.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
        out.insert("tool_choice".into(), choice);
    }
    if !out.contains_key("messages") {
        return Err(bad("messages", "missing"));
    }
    Ok(Value::Object(out))
}

fn positive_int(v: &Value, field: &str) -> Res<Option<u64>> {
    match v {
        Value::Null => Ok(None),
        _ => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(bad(field, "must be a positive integer")),
        },
    }
}

fn opt_str<'v>(v: &'v Value, field: &str) -> Res<Option<&'v str>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_str())),
        _ => Err(bad(field, "must be a string")),
    }
}

/// Anthropic turns under construction: role and blocks.
struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        match self.0.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => self.0.push((role, blocks)),
        }
    }
}

type SystemAndMessages = (Option<Value>, Vec<Value>);

fn o2a_messages(v: &Value) -> Res<SystemAndMessages> {
    let list = v.as_array().ok_or_else(|| bad("messages", "must be an array"))?;
    let mut system: Vec<String> = Vec::new();
    let mut turns = Turns(Vec::with_capacity(list.len()));
    let mut last_role = "";
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        if !m.is_object() {
            return Err(bad(path, "a message must be an object"));
        }
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        last_role = role;
        match role {
            "system" | "developer" => {
                if !turns.0.is_empty() {
                    return Err(bad(
                        path,
                        "Anthropic has one system prompt before the conversation; a system message cannot follow other messages",
                    ));
                }
                only_keys(m, &path, &["role", "content"])?;
                system.extend(o2a_text_only(m.get("content").unwrap_or(&Value::Null), &path)?);
            }
            "user" => {
                only_keys(m, &path, &["role", "content"])?;
                turns.push("user", o2a_user_content(m.get("content").unwrap_or(&Value::Null), &path)?);
            }
            "assistant" => {
                only_keys(m, &path, &["role", "content", "tool_calls", "refusal"])?;
                turns.push("assistant", o2a_assistant(m, &path)?);
            }
            "tool" => {
                only_keys(m, &path, &["role", "content", "tool_call_id"])?;
                let id = str_field(m, "tool_call_id", &path)?;
                let texts = o2a_text_only(m.get("content").unwrap_or(&Value::Null), &path)?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                let content = match texts.len() {
                    0 => None,
                    1 => texts.into_iter().next().map(Value::from),
                    _ => Some(Value::Array(texts.into_iter().map(|t| json!({"type": "text", "text": t})).collect())),
                };
                if let (Some(c), Some(b)) = (content, block.as_object_mut()) {
                    b.insert("content".into(), c);
                }
                turns.push("user", vec![block]);
            }
            "function" => return Err(bad(format!("{path}.role"), "legacy function messages are not translated")),
            _ => return Err(bad(format!("{path}.role"), "must be system, developer, user, assistant or tool")),
        }
    }
    if last_role == "assistant" {
        return Err(bad(
            format!("messages[{}]", list.len().saturating_sub(1)),
            "a final assistant message would be continued by Anthropic (prefill), not answered",
        ));
    }
    let system = match system.len() {
        0 => None,
        1 => system.pop().map(Value::from),
        _ => Some(Value::Array(system.into_iter().map(|t| json!({"type": "text", "text": t})).collect())),
    };
    let messages = turns.0.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    Ok((system, messages))
}

/// Content that may only hold text: a string or text parts. Empty texts are dropped.
fn o2a_text_only(content: &Value, path: &str) -> Res<Vec<String>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let ppath = format!("{path}.content[{j}]");
                match block_type(p, &ppath)? {
                    "text" => {
                        only_keys(p, &ppath, &["text"])?;
                        let t = str_field(p, "text", &ppath)?;
                        if !t.is_empty() {
                            out.push(t.to_owned());
                        }
                    }
                    t => return Err(bad(format!("{ppath}.type"), format!("`{t}` parts are not allowed here"))),
                }
            }
            Ok(out)
        }
        _ => Err(bad(format!("{path}.content"), "must be a string or an array of parts")),
    }
}

fn text_block(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

fn o2a_user_content(content: &Value, path: &str) -> Res<Vec<Value>> {
    let parts = match content {
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![text_block(s)]),
        Value::Array(parts) => parts,
        _ => return Err(bad(format!("{path}.content"), "must be a string or an array of parts")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let ppath = format!("{path}.content[{j}]");
        match block_type(p, &ppath)? {
            "text" => {
                only_keys(p, &ppath, &["text"])?;
                let t = str_field(p, "text", &ppath)?;
                if !t.is_empty() {
                    out.push(text_block(t));
                }
            }
            "image_url" => {
                only_keys(p, &ppath, &["image_url"])?;
                let ipath = format!("{ppath}.image_url");
                let img = p.get("image_url").ok_or_else(|| bad(&ipath, "missing"))?;
                only_keys(img, &ipath, &["url", "detail"])?;
                out.push(o2a_image(str_field(img, "url", &ipath)?, &format!("{ipath}.url"))?);
            }
            t => {
                return Err(bad(format!("{ppath}.type"), format!("`{t}` parts have no Anthropic Messages equivalent")))
            }
        }
    }
    Ok(out)
}

const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn o2a_image(url: &str, path: &str) -> Res<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| bad(path, "malformed data URL"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad(path, "only base64 data URLs are translated"))?
            .to_ascii_lowercase();
        if !IMAGE_TYPES.contains(&media_type.as_str()) {
            return Err(bad(path, "Anthropic accepts image/jpeg, image/png, image/gif and image/webp"));
        }
        return Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(bad(path, "only data: and http(s) image URLs are translated"))
}

fn o2a_assistant(m: &Value, path: &str) -> Res<Vec<Value>> {
    let mut out = Vec::new();
    let content = m.get("content").unwrap_or(&Value::Null);
    match content {
        Value::Null => {}
        Value::String(s) => {
            if !s.is_empty() {
                out.push(text_block(s));
            }
        }
        Value::Array(parts) => {
            for (j, p) in parts.iter().enumerate() {
                let ppath = format!("{path}.content[{j}]");
                let key = match block_type(p, &ppath)? {
                    "text" => "text",
                    "refusal" => "refusal",
                    t => {
                        return Err(bad(
                            format!("{ppath}.type"),
                            format!("`{t}` parts are not allowed in an assistant message"),
                        ))
                    }
                };
                only_keys(p, &ppath, &[key])?;
                let t = str_field(p, key, &ppath)?;
                if !t.is_empty() {
                    out.push(text_block(t));
                }
            }
        }
        _ => return Err(bad(format!("{path}.content"), "must be a string, null or an array of parts")),
    }
    match m.get("refusal") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                out.push(text_block(s));
            }
        }
        Some(_) => return Err(bad(format!("{path}.refusal"), "must be a string")),
    }
    match m.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, c) in calls.iter().enumerate() {
                out.push(o2a_tool_call(c, &format!("{path}.tool_calls[{j}]"))?);
            }
        }
        Some(_) => return Err(bad(format!("{path}.tool_calls"), "must be an array")),
    }
    Ok(out)
}

fn o2a_tool_call(c: &Value, path: &str) -> Res<Value> {
    if !c.is_object() {
        return Err(bad(path, "a tool call must be an object"));
    }
    match c.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(_) => return Err(bad(format!("{path}.type"), "only function tool calls are translated")),
    }
    only_keys(c, path, &["id", "function"])?;
    let fpath = format!("{path}.function");
    let f = c.get("function").filter(|f| f.is_object()).ok_or_else(|| bad(&fpath, "missing"))?;
    only_keys(f, &fpath, &["name", "arguments"])?;
    let args = str_field(f, "arguments", &fpath)?;
    let input: Value = if args.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(args).map_err(|_| bad(format!("{fpath}.arguments"), "not valid JSON"))?
    };
    if !input.is_object() {
        return Err(bad(format!("{fpath}.arguments"), "must be a JSON object"));
    }
    Ok(json!({
        "type": "tool_use",
        "id": str_field(c, "id", path)?,
        "name": str_field(f, "name", &fpath)?,
        "input": input,
    }))
}

fn o2a_tools(v: &Value) -> Res<Value> {
    let list = v.as_array().ok_or_else(|| bad("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(format!("{path}.type"), "only function tools are translated"));
        }
        only_keys(t, &path, &["function"])?;
        let fpath = format!("{path}.function");
        let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| bad(&fpath, "missing"))?;
        only_keys(f, &fpath, &["name", "description", "parameters", "strict"])?;
        let mut tool = Map::new();
        tool.insert("name".into(), Value::from(str_field(f, "name", &fpath)?));
        if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
            tool.insert("description".into(), d.clone());
        }
        let schema = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p) if p.is_object() => p.clone(),
            Some(_) => return Err(bad(format!("{fpath}.parameters"), "must be an object")),
        };
        tool.insert("input_schema".into(), schema);
        out.push(Value::Object(tool));
    }
    Ok(Value::Array(out))
}

fn o2a_tool_choice(v: &Value) -> Res<Option<Value>> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::String(s) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => return Err(bad("tool_choice", "must be auto, none, required or a function")),
        },
        Value::Object(_) => {
            if v.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad("tool_choice.type", "only function tool choices are translated"));
            }
            only_keys(v, "tool_choice", &["function"])?;
            let f = v.get("function").unwrap_or(&Value::Null);
            only_keys(f, "tool_choice.function", &["name"])?;
            json!({"type": "tool", "name": str_field(f, "name", "tool_choice.function")?})
        }
        _ => return Err(bad("tool_choice", "must be a string or an object")),
    }))
}

#[cfg(test)]
mod tests {
    //! Golden requests written from the public API references:
    //! - Anthropic Messages: https://docs.anthropic.com/en/api/messages
    //! - OpenAI Chat Completions: https://platform.openai.com/docs/api-reference/chat/create
    //! - What Anthropic's own compatibility layer accepts: https://docs.anthropic.com/en/api/openai-sdk
    use super::*;

    const A2O: &str = include_str!("../../tests/golden/translate/request_anthropic_to_openai.json");
    const O2A: &str = include_str!("../../tests/golden/translate/request_openai_to_anthropic.json");
    const REFUSALS: &str = include_str!("../../tests/golden/translate/request_refusals.json");

    const TO_OPENAI: RequestOptions<'static> = RequestOptions { model: "gpt-4o", default_max_tokens: 4096 };
    const TO_ANTHROPIC: RequestOptions<'static> = RequestOptions { model: "claude-opus-4-6", default_max_tokens: 4096 };

    fn cases(s: &str) -> Vec<Value> {
        serde_json::from_str::<Value>(s).unwrap().as_array().unwrap().clone()
    }

    #[test]
    fn failed_tool_results_say_so_in_the_tool_message() {
        let body = json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true,
                                          "content": "city not found"}]}]});
        let got = anthropic_to_openai(&body, &TO_OPENAI).unwrap();
        assert_eq!(
            got["messages"][2],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "[tool error] city not found"})
        );
    }

    #[test]
    fn anthropic_to_openai_goldens() {
        let cases = cases(A2O);
        assert!(cases.len() >= 7);
        for c in cases {
            let got = anthropic_to_openai(&c["anthropic"], &TO_OPENAI).unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
            assert_eq!(got, c["openai"], "{}", c["name"]);
        }
    }

    #[test]
    fn openai_to_anthropic_goldens() {
        let cases = cases(O2A);
        assert!(cases.len() >= 7);
        for c in cases {
            let got = openai_to_anthropic(&c["openai"], &TO_ANTHROPIC).unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
            assert_eq!(got, c["anthropic"], "{}", c["name"]);
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        let all: Value = serde_json::from_str(REFUSALS).unwrap();
        let mut n = 0;
        for c in all["anthropic_to_openai"].as_array().unwrap() {
            let err = anthropic_to_openai(&c["body"], &TO_OPENAI).expect_err(&c.to_string());
            assert_eq!(err.field, c["field"].as_str().unwrap(), "{c} -> {err}");
            assert!(!err.reason.is_empty());
            n += 1;
        }
        for c in all["openai_to_anthropic"].as_array().unwrap() {
            let err = openai_to_anthropic(&c["body"], &TO_ANTHROPIC).expect_err(&c.to_string());
            assert_eq!(err.field, c["field"].as_str().unwrap(), "{c} -> {err}");
            n += 1;
        }
        assert!(n >= 50);
    }

    #[test]
    fn request_round_trip_keeps_the_conversation() {
        // OpenAI -> Anthropic -> OpenAI gives back what the client said (modulo representation).
        let c = &cases(O2A)[2];
        let anthropic = openai_to_anthropic(&c["openai"], &TO_ANTHROPIC).unwrap();
        let back = anthropic_to_openai(&anthropic, &TO_OPENAI).unwrap();
        let msgs = back["messages"].as_array().unwrap();
        assert_eq!(msgs[1]["tool_calls"][0]["id"], "call_abc123");
        let args: Value =
            serde_json::from_str(msgs[1]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, serde_json::json!({"location": "Boston, MA"}));
        assert_eq!(msgs[2], serde_json::json!({"role": "tool", "tool_call_id": "call_abc123", "content": "22 F"}));
        assert_eq!(msgs[3]["content"], "3 Ccloudy");
        assert_eq!(msgs[4], serde_json::json!({"role": "user", "content": "And tomorrow?"}));
        assert_eq!(back["tool_choice"], "required");
        assert_eq!(back["parallel_tool_calls"], false);
        assert_eq!(back["max_completion_tokens"], 500);
    }

    #[test]
    fn nulls_mean_absent() {
        let body = serde_json::json!({
            "model": "x", "max_tokens": 5, "temperature": null, "top_k": null, "stop_sequences": null,
            "tools": null, "tool_choice": null, "metadata": {"user_id": null}, "system": "",
            "messages": [{"role": "user", "content": "hi"}]
        });
        let got = anthropic_to_openai(&body, &TO_OPENAI).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"model": "gpt-4o", "max_completion_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]})
        );
        let body = serde_json::json!({
            "model": "x", "messages": [{"role": "user", "content": "hi"}], "n": null, "stop": null,
            "logit_bias": null, "tools": null, "functions": null, "audio": null, "temperature": 1
        });
        let got = openai_to_anthropic(&body, &TO_ANTHROPIC).unwrap();
        assert_eq!(got["temperature"], 1);
        assert_eq!(got.as_object().unwrap().len(), 4, "{got}");
    }

    #[test]
    fn garbage_never_panics() {
        let shapes = [
            serde_json::json!(null),
            serde_json::json!({"messages": "x"}),
            serde_json::json!({"messages": [1, null, {"role": 3}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [1, {"type": 2}, {"type": "image"}]}]}),
            serde_json::json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}, {"role": "user", "content": "x"}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]}),
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64"}}]}]}),
            serde_json::json!({"messages": [{"role": "tool"}]}),
            serde_json::json!({"tools": [1], "messages": []}),
            serde_json::json!({"tools": [{"type": "function"}], "messages": []}),
            serde_json::json!({"tool_choice": 5, "messages": []}),
            serde_json::json!({"max_tokens": -1, "messages": []}),
            serde_json::json!({"temperature": "hot", "messages": []}),
        ];
        for s in &shapes {
            let _ = anthropic_to_openai(s, &TO_OPENAI);
            let _ = openai_to_anthropic(s, &TO_ANTHROPIC);
        }
    }
}

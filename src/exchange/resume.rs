//! The continuation of one request's broken stream (see [`crate::continuation`] for what is
//! read, asked and spliced): which provider is asked for the rest, the call the downstream
//! filter makes to it (`dispatch_http_call`: Envoy's router cannot retry once the client has
//! part of the answer, so the rest comes through a call of the filter's own, in one piece), what
//! its answer becomes for the client, and what the client gets when no continuation is
//! possible: the error event it would have got at the break, never a clean end.
//!
//! Every call is a replay for the retry budget, passes the provider's breaker like an attempt,
//! and its outcome is recorded in that breaker.

use super::Exchange;
use crate::attempt::{AttemptSummary, StreamCut};
use crate::breaker::{Admission, Peek};
use crate::classify::{classify_headers, Outcome};
use crate::config::{Api, ClientApi, Config};
use crate::continuation::{fresh_text, request_body, splice, Continued, Form, Transcript};
use crate::header_map::HeaderMap;
use crate::health::{Budget, Health};
use crate::plan::{attempt_edits, Target};
use crate::request_rewrite::{rewrite, ClientRequest};
use crate::validate;

/// A request to a provider made by the filter itself (not by Envoy's router).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSpec {
    pub cluster: String,
    /// Every header, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// What the host does next for a continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeStep {
    /// Make this call (keep the client's stream paused) and hand its answer to
    /// [`Exchange::resume_answer`].
    Call(CallSpec),
    /// Append these bytes to the client's stream and let it go on: the rest of the answer
    /// (spliced), or the error event that ends it.
    Append(Vec<u8>),
}

/// How a continuation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeResult {
    /// The rest of the answer came from this provider and was spliced in.
    Spliced(usize),
    /// The answer had ended but for its terminal events, which were added.
    Completed,
    /// Not continued: the client's stream ends with an error event.
    Failed(&'static str),
}

impl ResumeResult {
    pub fn as_str(&self) -> String {
        match self {
            ResumeResult::Spliced(_) => "spliced".to_string(),
            ResumeResult::Completed => "completed".to_string(),
            ResumeResult::Failed(why) => format!("failed:{why}"),
        }
    }
}

/// The call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    provider: usize,
    position: usize,
    form: Form,
    probe: bool,
    start_ms: u64,
}

/// The continuation of one broken stream.
#[derive(Debug)]
pub struct Resume {
    cut: StreamCut,
    transcript: Option<Transcript>,
    /// Providers asked, in order.
    pub asked: Vec<usize>,
    pending: Option<Pending>,
    pub result: Option<ResumeResult>,
    /// Each call, as an attempt (for the provider's stats).
    pub calls: Vec<AttemptSummary>,
    /// The host started on it.
    started: bool,
    /// Output tokens of the whole answer, once spliced.
    pub output_tokens: Option<u64>,
}

impl Exchange {
    /// A stream of this request broke after its first content (kept for a continuation).
    pub fn on_cut(&mut self, cut: StreamCut) {
        if self.resume.is_none() {
            self.resume = Some(Resume {
                cut,
                transcript: None,
                asked: Vec::new(),
                pending: None,
                result: None,
                calls: Vec::new(),
                started: false,
                output_tokens: None,
            });
        }
    }

    /// A broken stream waits for the host to start its continuation.
    pub fn resume_waiting(&self) -> bool {
        self.resume.as_ref().is_some_and(|r| !r.started)
    }

    /// Starts the continuation: the first call, or (none possible) the error event.
    /// `current` is the request's headers as they are now.
    pub fn resume_start(
        &mut self,
        cfg: &Config,
        current: &HeaderMap,
        health: &mut dyn Health,
        budget: &mut dyn Budget,
        now_ms: u64,
    ) -> ResumeStep {
        let Some(r) = self.resume.as_mut() else { return ResumeStep::Append(Vec::new()) };
        r.started = true;
        let enabled = cfg.chains.get(self.chain).is_some_and(|c| c.continuation.enabled);
        if !enabled {
            return self.resume_fail("disabled");
        }
        let Some(sent) = r.cut.sent.as_deref() else { return self.resume_fail("answer_too_long") };
        let t = Transcript::read(self.client, sent);
        if let Err(why) = t.continuable() {
            log::debug!("llm-failover: a broken stream is not continued: {why}");
            return self.resume_fail(if why.contains("tool") { "tool_call" } else { "not_continuable" });
        }
        // The usage chunk follows the client's own request (the attempt knows it only when it
        // rewrote the request).
        let include_usage = self
            .client_request()
            .ok()
            .and_then(|req| {
                req.body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(|v| v.as_bool())
            })
            .unwrap_or(false);
        let Some(r) = self.resume.as_mut() else { return ResumeStep::Append(Vec::new()) };
        r.cut.include_usage |= include_usage;
        if t.stop_reason.is_some() {
            // Only the terminal events were missing.
            let bytes = splice(&t, &Continued::default(), r.cut.include_usage);
            r.result = Some(ResumeResult::Completed);
            r.transcript = Some(t);
            return ResumeStep::Append(bytes);
        }
        r.transcript = Some(t);
        self.resume_next(cfg, current, health, budget, now_ms)
    }

    /// The answer of the call in flight (`status` 0: no answer: a timeout or a reset).
    #[allow(clippy::too_many_arguments)]
    pub fn resume_answer(
        &mut self,
        cfg: &Config,
        status: u16,
        body: &[u8],
        current: &HeaderMap,
        health: &mut dyn Health,
        budget: &mut dyn Budget,
        now_ms: u64,
    ) -> ResumeStep {
        let Some(r) = self.resume.as_mut() else { return ResumeStep::Append(Vec::new()) };
        let Some(p) = r.pending.take() else { return ResumeStep::Append(Vec::new()) };
        let api = cfg.providers.get(p.provider).map_or(Api::Anthropic, |q| q.api);
        let ok = (200..300).contains(&status);
        let answer = if ok { Continued::parse(api.format(), body) } else { None };
        let outcome = call_outcome(answer.is_some(), status);
        health.record(p.provider, outcome, p.probe, now_ms);
        let model = cfg
            .chains
            .get(self.chain)
            .and_then(|c| c.models.get(p.position))
            .and_then(|m| m.model_for(api, self.client, self.model.as_deref().unwrap_or("")))
            .map(str::to_string);
        r.calls.push(AttemptSummary {
            number: self.attempts_started.saturating_add(u32::try_from(r.calls.len()).unwrap_or(0)).saturating_add(1),
            provider: p.provider,
            position: p.position,
            probe: p.probe,
            outcome,
            model,
            first_content_ms: answer.as_ref().map(|_| now_ms),
            start_ms: p.start_ms,
            end_ms: now_ms,
            input_tokens: answer.as_ref().and_then(|a| a.input_tokens),
            output_tokens: answer.as_ref().and_then(|a| a.output_tokens),
            answered: answer.is_some(),
            streamed: false,
        });
        let Some(mut c) = answer else {
            log::info!(
                "llm-failover: continuation at {} failed: {}",
                cfg.providers.get(p.provider).map_or("?", |q| q.name.as_str()),
                outcome.as_str()
            );
            return self.resume_next(cfg, current, health, budget, now_ms);
        };
        let Some(t) = r.transcript.as_ref() else { return ResumeStep::Append(r.cut.tail.clone()) };
        c.text = fresh_text(&t.text, &c.text, p.form).to_string();
        let bytes = splice(t, &c, r.cut.include_usage);
        r.output_tokens = Some(t.output_tokens().saturating_add(c.output_tokens.unwrap_or(0)));
        r.result = Some(ResumeResult::Spliced(p.provider));
        ResumeStep::Append(bytes)
    }

    fn resume_fail(&mut self, why: &'static str) -> ResumeStep {
        let Some(r) = self.resume.as_mut() else { return ResumeStep::Append(Vec::new()) };
        r.result = Some(ResumeResult::Failed(why));
        ResumeStep::Append(r.cut.tail.clone())
    }

    /// The next provider to ask, or the end.
    fn resume_next(
        &mut self,
        cfg: &Config,
        current: &HeaderMap,
        health: &mut dyn Health,
        budget: &mut dyn Budget,
        now_ms: u64,
    ) -> ResumeStep {
        let Some(chain) = cfg.chains.get(self.chain) else { return self.resume_fail("no_provider") };
        let Some(r) = self.resume.as_ref() else { return ResumeStep::Append(Vec::new()) };
        if r.asked.len() as u32 >= chain.continuation.max_attempts {
            return self.resume_fail("attempts_spent");
        }
        let from = r.cut.position;
        let cut_provider = r.cut.provider;
        let asked = r.asked.clone();
        let mut budget_spent = false;
        for (position, &provider) in chain.providers.iter().enumerate().skip(from.saturating_add(1)) {
            if asked.contains(&provider) || provider == cut_provider {
                continue;
            }
            if self.same_model_only && !chain.same_model.get(position).copied().unwrap_or(false) {
                continue;
            }
            let Some(probe) = admit(health, provider, now_ms) else { continue };
            let Some(spec) = self.continuation_call(cfg, provider, position, current) else {
                if probe {
                    health.abandon_probe(provider);
                }
                continue;
            };
            if !budget.try_replay(now_ms) {
                if probe {
                    health.abandon_probe(provider);
                }
                budget_spent = true;
                break;
            }
            let form = spec.1;
            if let Some(r) = self.resume.as_mut() {
                r.asked.push(provider);
                r.pending = Some(Pending { provider, position, form, probe, start_ms: now_ms });
            }
            return ResumeStep::Call(spec.0);
        }
        self.resume_fail(if budget_spent { "retry_budget_exhausted" } else { "no_provider" })
    }

    /// The continuation call to `provider` (chain position `position`), and the form of it.
    fn continuation_call(
        &mut self,
        cfg: &Config,
        provider: usize,
        position: usize,
        current: &HeaderMap,
    ) -> Option<(CallSpec, Form)> {
        let chain = cfg.chains.get(self.chain)?;
        let p = cfg.providers.get(provider)?;
        let r = self.resume.as_ref()?;
        let t = r.transcript.as_ref()?;
        let (partial, used) = (t.text.clone(), t.output_tokens());
        let req = self.client_request().ok()?.clone();
        let thinking = req.body.get("thinking").and_then(|v| v.get("type")).and_then(|v| v.as_str()) == Some("enabled");
        let form = if p.prefill && p.api.format() == ClientApi::Anthropic && !thinking {
            Form::Prefill
        } else {
            Form::Instruction
        };
        let body = request_body(self.client, &req.body, &partial, form, used);
        let creq = ClientRequest { body, ..req };
        let (spec, _) = self.call_spec(cfg, provider, position, &creq, current, chain.continuation.timeout_ms)?;
        Some((spec, form))
    }

    /// A call of the filter's own to `provider` (chain position `position`) with the client's
    /// request `req` rewritten for it: the request's current headers with that provider's edits
    /// (its credential only, its authority, the path), and the rewrite (its model, whether it
    /// streams).
    pub(super) fn call_spec(
        &self,
        cfg: &Config,
        provider: usize,
        position: usize,
        req: &ClientRequest,
        current: &HeaderMap,
        timeout_ms: u64,
    ) -> Option<(CallSpec, crate::request_rewrite::Rewrite)> {
        let chain = cfg.chains.get(self.chain)?;
        let p = cfg.providers.get(provider)?;
        let rw = rewrite(req, p, chain.models.get(position)?, cfg.default_max_tokens).ok()?;
        if !validate::valid_model(&rw.model) {
            return None;
        }
        let lookup = |name: &str| current.get(name).map(str::to_string);
        let target =
            Target { provider, position, authority: self.authority.as_deref(), path: &self.path, rewrite: Some(&rw) };
        let edits = attempt_edits(cfg, chain, &target, &lookup);
        let mut headers: Vec<(String, String)> = Vec::with_capacity(current.len() + 4);
        for (k, v) in current.iter() {
            let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) else { continue };
            if dropped_for_call(cfg, k) || edits.iter().any(|(e, _)| e == k) {
                continue;
            }
            headers.push((k.to_string(), v.to_string()));
        }
        for (k, v) in edits {
            if let Some(v) = v {
                headers.retain(|(h, _)| *h != k);
                headers.push((k, v));
            }
        }
        headers.retain(|(k, _)| k != ":method" && k != "content-type");
        headers.push((":method".to_string(), "POST".to_string()));
        headers.push(("content-type".to_string(), "application/json".to_string()));
        if !headers.iter().any(|(k, _)| k == ":authority") {
            headers.push((":authority".to_string(), p.authority.clone().unwrap_or_else(|| p.cluster.clone())));
        }
        let body = rw.body.clone();
        Some((CallSpec { cluster: p.cluster.clone(), headers, body, timeout_ms }, rw))
    }
}

/// Asks `provider`'s breaker to admit a call of the filter's own, as an attempt would be:
/// None when it refuses, else whether the call is a half-open probe.
pub(super) fn admit(health: &mut dyn Health, provider: usize, now_ms: u64) -> Option<bool> {
    match health.peek(provider, now_ms) {
        Peek::Admit => Some(false),
        Peek::Reject(_) => None,
        Peek::NeedsClaim => match health.claim(provider, now_ms) {
            Admission::Admit => Some(false),
            Admission::Probe => Some(true),
            Admission::Reject(_) => None,
        },
    }
}

/// The outcome of a call of the filter's own: `answered` (a usable answer came), else by the
/// status (0: no answer at all, a timeout or a reset; a 2xx that is no answer is invalid).
pub(super) fn call_outcome(answered: bool, status: u16) -> Outcome {
    match status {
        _ if answered => Outcome::Success,
        0 => Outcome::Timeout,
        s if (200..300).contains(&s) => Outcome::InvalidAnswer,
        s => classify_headers(s, None, None, None),
    }
}

/// Request headers a call of the filter's own does not carry over: hop-by-hop and length
/// headers, compression (the filter reads the answer), Envoy's and the filter's own controls.
fn dropped_for_call(cfg: &Config, name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "accept-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "upgrade"
            | "expect"
            | "proxy-connection"
            | ":scheme"
    ) || name.starts_with("x-envoy-")
        || name == cfg.route_header
        || name == super::DEGRADED_FORM_HEADER
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::exchange::RequestHead;
    use crate::health::{MemBudget, MemHealth};

    fn cfg(prefill: bool, enabled: bool) -> Config {
        let json = format!(
            r#"{{"providers":[
                {{"name":"a","cluster":"ca","authority":"a.example","credential":{{"header":"x-api-key","value":"ka"}}}},
                {{"name":"b","cluster":"cb","authority":"b.example","prefill":{prefill},"credential":{{"header":"x-api-key","value":"kb"}}}},
                {{"name":"o","cluster":"co","api":"openai","authority":"o.example","models":{{"claude-x":"gpt-x"}},"credential":{{"header":"authorization","value":"Bearer ko"}}}}],
              "chains":[{{"providers":["a","b","o"],"continuation":{{"enabled":{enabled}}}}}]}}"#
        );
        config::parse(json.as_bytes(), |_| None).unwrap()
    }

    const SENT: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The quick\"}}\n\n";

    fn exchange(cfg: &Config) -> (Exchange, HeaderMap) {
        let pairs: Vec<(String, Vec<u8>)> = vec![
            (":path".into(), b"/v1/messages".to_vec()),
            (":authority".into(), b"a.example".to_vec()),
            ("x-api-key".into(), b"ka".to_vec()),
            ("anthropic-version".into(), b"2023-06-01".to_vec()),
            ("content-length".into(), b"99".to_vec()),
        ];
        let headers = HeaderMap::from_pairs(&pairs);
        let head = RequestHead { headers: &headers, end_of_stream: false };
        let mut ex = Exchange::new(cfg, 0, &head, true, 0, 1);
        let body = br#"{"model":"claude-x","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Go"}]}"#;
        let mut health = MemHealth::new(cfg.providers.len(), &cfg.breaker);
        let mut budget = MemBudget::new(&cfg.retry_budget);
        ex.on_request_body(cfg, &head, body.to_vec(), &mut health, &mut budget);
        ex.on_cut(StreamCut {
            sent: Some(SENT.as_bytes().to_vec()),
            tail: b"event: error\ndata: {}\n\n".to_vec(),
            provider: 0,
            position: 0,
            include_usage: false,
        });
        (ex, headers)
    }

    #[test]
    fn the_next_provider_is_asked_with_its_own_credential_and_the_rest_is_spliced() {
        let cfg = cfg(false, true);
        let (mut ex, headers) = exchange(&cfg);
        let mut health = MemHealth::new(cfg.providers.len(), &cfg.breaker);
        let mut budget = MemBudget::new(&cfg.retry_budget);
        budget.count_request(0);
        let ResumeStep::Call(spec) = ex.resume_start(&cfg, &headers, &mut health, &mut budget, 10) else { panic!() };
        assert_eq!(spec.cluster, "cb");
        let h = |n: &str| spec.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(h("x-api-key"), Some("kb"), "b's credential, never a's");
        assert_eq!(h(":authority"), Some("b.example"));
        assert_eq!(h(":method"), Some("POST"));
        assert_eq!(h("content-length"), None);
        let body: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
        assert_eq!(body["stream"], false);
        let last = body["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["role"], "user", "b refuses prefill: an instruction turn");
        assert!(last["content"].as_str().unwrap().contains("The quick"));
        let answer = br#"{"type":"message","content":[{"type":"text","text":"The quick brown fox."}],"stop_reason":"end_turn","usage":{"input_tokens":40,"output_tokens":4}}"#;
        let ResumeStep::Append(bytes) = ex.resume_answer(&cfg, 200, answer, &headers, &mut health, &mut budget, 20)
        else {
            panic!()
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"text\":\" brown fox.\""), "the repeat is dropped: {text}");
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert_eq!(ex.resume.as_ref().unwrap().result, Some(ResumeResult::Spliced(1)));
        assert_eq!(health.recorded, vec![(1, Outcome::Success, false)]);
    }

    #[test]
    fn a_prefill_host_gets_the_partial_answer_as_its_turn_and_a_failure_moves_on() {
        let cfg = cfg(true, true);
        let (mut ex, headers) = exchange(&cfg);
        let mut health = MemHealth::new(cfg.providers.len(), &cfg.breaker);
        let mut budget = MemBudget::new(&cfg.retry_budget);
        budget.count_request(0);
        let ResumeStep::Call(spec) = ex.resume_start(&cfg, &headers, &mut health, &mut budget, 10) else { panic!() };
        let body: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
        assert_eq!(body["messages"][1], serde_json::json!({"role":"assistant","content":"The quick"}));
        // b fails: the OpenAI host is asked next, translated, with its own credential.
        let ResumeStep::Call(spec) = ex.resume_answer(&cfg, 529, b"{}", &headers, &mut health, &mut budget, 20) else {
            panic!()
        };
        assert_eq!(spec.cluster, "co");
        let h = |n: &str| spec.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!((h("authorization"), h("x-api-key")), (Some("Bearer ko"), None));
        assert_eq!(h(":path"), Some("/v1/chat/completions"));
        let body: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
        assert_eq!(body["model"], "gpt-x");
        assert_eq!(health.recorded, vec![(1, Outcome::Overloaded, false)]);
        // The max attempts (2) are spent: the error event.
        let ResumeStep::Append(tail) = ex.resume_answer(&cfg, 0, b"", &headers, &mut health, &mut budget, 30) else {
            panic!()
        };
        assert!(tail.starts_with(b"event: error"));
        assert_eq!(ex.resume.as_ref().unwrap().result, Some(ResumeResult::Failed("attempts_spent")));
    }

    #[test]
    fn without_continuation_or_budget_the_client_gets_the_error_event() {
        let cfg0 = cfg(false, false);
        let (mut ex, headers) = exchange(&cfg0);
        let mut health = MemHealth::new(cfg0.providers.len(), &cfg0.breaker);
        let mut budget = MemBudget::new(&cfg0.retry_budget);
        let step = ex.resume_start(&cfg0, &headers, &mut health, &mut budget, 10);
        assert_eq!(step, ResumeStep::Append(b"event: error\ndata: {}\n\n".to_vec()));
        let cfg1 = cfg(false, true);
        let (mut ex, headers) = exchange(&cfg1);
        let mut budget = MemBudget::new(&crate::config::RetryBudget { ratio: 0.0, min_per_s: 0.0, window_ms: 1000 });
        let step = ex.resume_start(&cfg1, &headers, &mut health, &mut budget, 10);
        assert!(matches!(step, ResumeStep::Append(_)));
        assert_eq!(ex.resume.as_ref().unwrap().result, Some(ResumeResult::Failed("retry_budget_exhausted")));
    }
}

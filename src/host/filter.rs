//! The per-request HTTP context: snapshots the request, asks the core which provider serves it,
//! applies the header edits, watches the response (status, Envoy's code details, the stream),
//! replaces a failure that has not reached the client with the degraded answer, and records the
//! outcome in the provider's shared window and breaker when the stream is done.

use super::props::{property_string, property_u64, response_header, set_request_header, set_response_header};
use super::{metrics, now_us, random_u32, shared, waiting};
use crate::breaker::{Admission, Change, Peek, State};
use crate::classify::{classify_end, classify_headers, Health, Outcome, StreamVerdict};
use crate::config::{Api, Chain, ClientApi, Config, DegradedMode, OnUntranslatable};
use crate::degraded::{degraded_response, DegradedReason, LocalResponse};
use crate::plan::{self, Choice};
use crate::request_peek::RequestPeek;
use crate::request_rewrite::{refusal, rewrite, ClientRequest, Rewrite, Unfit};
use crate::response_rewrite::{translate_json, StreamPipeline};
use crate::telemetry::{self, RequestRecord};
use crate::usage::UsageScanner;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;

pub struct Filter {
    cfg: Option<Rc<Config>>,
    context_id: u32,
    chain: Option<usize>,
    choice: Option<Choice>,
    peek: RequestPeek,
    /// Waiting for the whole request body before walking the chain on from this position
    /// (a provider there needs the body rewritten; or nothing is left and a degraded answer
    /// must know whether the client asked for a stream).
    awaiting_body: Option<usize>,
    /// The request headers, kept while the request waits for its body.
    held_headers: Vec<(String, Vec<u8>)>,
    /// The client asked for same-model hosts only (`x-llm-failover-same-model: required`).
    same_model_only: bool,
    /// The request was rewritten for its host: the model asked for, and whether an OpenAI
    /// client wants the usage chunk.
    rewritten: Option<(String, bool)>,
    /// This stream's response is our own local reply.
    local_reply: bool,
    headers_outcome: Option<Outcome>,
    /// A streamed answer: watched, and translated when the client speaks another format.
    stream: Option<StreamPipeline>,
    /// A JSON answer to buffer whole and translate (status kept for the translation).
    json_rewrite: Option<u16>,
    /// Token counts of a 2xx JSON answer.
    usage: Option<UsageScanner>,
    body_ended: bool,
    start_us: u64,
    first_byte_us: Option<u64>,
    record: RequestRecord,
}

impl Filter {
    pub fn new(cfg: Option<Rc<Config>>, context_id: u32) -> Self {
        Filter {
            cfg,
            context_id,
            chain: None,
            choice: None,
            peek: RequestPeek::new(),
            awaiting_body: None,
            held_headers: Vec::new(),
            same_model_only: false,
            rewritten: None,
            local_reply: false,
            headers_outcome: None,
            stream: None,
            json_rewrite: None,
            usage: None,
            body_ended: false,
            start_us: 0,
            first_byte_us: None,
            record: RequestRecord::default(),
        }
    }

    /// Asks provider `p`'s breaker for admission: a read in the common case, a CAS-guarded
    /// claim when the breaker is open past its cooldown or half-open.
    fn admit(cfg: &Config, p: usize, now: u64) -> Admission {
        let Some(provider) = cfg.providers.get(p) else { return Admission::Reject(crate::breaker::Rejection::Open) };
        let s = &cfg.breaker;
        match shared::peek(&provider.state_key, now, s) {
            Peek::Admit => Admission::Admit,
            Peek::Reject(r) => Admission::Reject(r),
            Peek::NeedsClaim => {
                let claimed = shared::update(&provider.state_key, s, |st| {
                    let (admission, change) = st.claim(now, s);
                    let changed = change.is_some() || admission == Admission::Probe;
                    ((admission, change), changed)
                });
                match claimed {
                    Some((admission, change)) => {
                        if let Some(c) = change {
                            log_change(&provider.name, &c);
                        }
                        admission
                    }
                    None => Admission::Reject(crate::breaker::Rejection::ProbesBusy),
                }
            }
        }
    }

    /// The format the client speaks.
    fn client_api(&self, cfg: &Config) -> ClientApi {
        self.chain.and_then(|c| cfg.chains.get(c)).map_or(ClientApi::Anthropic, |c| c.client_api)
    }

    fn send_degraded(&mut self, cfg: &Config, reason: DegradedReason) {
        let api = self.client_api(cfg);
        let id = (u64::from(random_u32()) << 32) | u64::from(random_u32());
        let model = self.peek.model();
        let resp = degraded_response(&cfg.degraded, api, model.as_deref(), self.peek.stream(), reason, id);
        self.local_reply = true;
        self.record.degraded_reason = Some(reason.as_str());
        metrics::counter(telemetry::degraded(reason.as_str()), 1);
        log::debug!("degraded answer ({})", reason.as_str());
        send(&resp);
    }

    /// Is the provider at chain position `pos` out of bounds for this request?
    fn excluded(&self, chain: &Chain, pos: usize) -> bool {
        self.same_model_only && !chain.same_model.get(pos).copied().unwrap_or(false)
    }

    /// Sends the request to `choice`'s provider: credentials, authority, the routing header and,
    /// for a rewritten request, its path, headers and body.
    fn route(
        &mut self,
        cfg: &Config,
        chain: &Chain,
        choice: Choice,
        headers: &[(String, Vec<u8>)],
        rw: Option<Rewrite>,
        body_size: usize,
    ) {
        let has = |name: &str| headers.iter().any(|(k, _)| k == name);
        let Some(edits) = plan::request_edits(cfg, chain, choice) else { return };
        let replaced = edits.credential.map(|c| c.header.as_str());
        for h in edits.strip.iter().filter(|h| Some(h.as_str()) != replaced && has(h)) {
            set_request_header(h, None);
        }
        if let Some(c) = edits.credential {
            set_request_header(&c.header, Some(&c.value));
        }
        let authority = headers.iter().find(|(k, _)| k == ":authority").map(|(_, v)| v.as_slice());
        if let Some(a) = edits.authority.filter(|a| authority != Some(a.as_bytes())) {
            set_request_header(":authority", Some(a));
        }
        if let Some(rw) = rw {
            set_request_header(":path", Some(&rw.path));
            for (k, v) in &rw.add_headers {
                set_request_header(k, Some(v));
            }
            // The answer is rewritten: it must come uncompressed.
            if has("accept-encoding") {
                set_request_header("accept-encoding", None);
            }
            let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &rw.body);
            self.rewritten = Some((rw.model, rw.include_usage));
        }
        set_request_header(&cfg.route_header, Some(edits.cluster));
        clear_route_cache();
        self.choice = Some(choice);
        if choice.position > 0 {
            let first = chain.providers.first().and_then(|&p| cfg.providers.get(p));
            let to = cfg.providers.get(choice.provider);
            if let (Some(from), Some(to)) = (first, to) {
                metrics::counter(telemetry::failovers(&from.name, &to.name), 1);
            }
        }
    }

    /// Walks the chain on from `start` with the whole request body in hand: each provider is
    /// checked for fit (model mapping, translation) before its breaker is asked.
    fn walk_with_body(&mut self, cfg: &Config, start: usize, body: &[u8], body_size: usize) -> Action {
        let Some(chain) = self.chain.and_then(|c| cfg.chains.get(c)) else { return Action::Continue };
        let client = chain.client_api;
        let path =
            self.held_headers.iter().find(|(k, _)| k == ":path").map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        let beta = self
            .held_headers
            .iter()
            .find(|(k, _)| k == "anthropic-beta")
            .and_then(|(_, v)| std::str::from_utf8(v).ok());
        let req = ClientRequest::parse(client, path.as_deref().unwrap_or("/"), body).map(|r| r.with_betas(beta));
        let now = now_us() / 1000;
        let headers = std::mem::take(&mut self.held_headers);
        for (pos, &p) in chain.providers.iter().enumerate().skip(start) {
            if self.excluded(chain, pos) {
                continue;
            }
            let Some(provider) = cfg.providers.get(p) else { continue };
            let model = req.as_ref().and_then(|r| r.model());
            let Some(models) = chain.models.get(pos) else { continue };
            let rw = if models.passes_through(provider.api, client, model) {
                None
            } else {
                match req.as_ref().map(|r| rewrite(r, provider, models, cfg.default_max_tokens)) {
                    Some(Ok(rw)) => Some(rw),
                    Some(Err(Unfit::Untranslatable(u))) if chain.on_untranslatable == OnUntranslatable::Refuse => {
                        // Refuse only when this provider would serve (else it is skipped anyway).
                        if !matches!(shared::peek(&provider.state_key, now, &cfg.breaker), Peek::Reject(_)) {
                            metrics::counter(telemetry::untranslatable(&provider.name), 1);
                            log::debug!("request refused for provider {}: `{}`: {}", provider.name, u.field, u.reason);
                            self.local_reply = true;
                            send(&refusal(client, &provider.name, &u));
                            return Action::Pause;
                        }
                        continue;
                    }
                    _ => continue,
                }
            };
            match Self::admit(cfg, p, now) {
                a @ (Admission::Admit | Admission::Probe) => {
                    let choice = Choice { provider: p, position: pos, probe: a == Admission::Probe };
                    self.record.attempts = self.record.attempts.saturating_add(1);
                    self.route(cfg, chain, choice, &headers, rw, body_size);
                    return Action::Continue;
                }
                Admission::Reject(_) => self.record.attempts = self.record.attempts.saturating_add(1),
            }
        }
        self.send_degraded(cfg, DegradedReason::NoProviderAvailable);
        Action::Pause
    }
}

/// Sends a local reply built by the core.
fn send(resp: &LocalResponse) {
    let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _ = hostcalls::send_http_response(resp.status, headers, Some(&resp.body));
}

/// Request header with which a client asks for same-model hosts only.
pub const SAME_MODEL_HEADER: &str = "x-llm-failover-same-model";

fn clear_route_cache() {
    if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", None) {
        log::warn!("clear_route_cache failed: {e:?}");
    }
}

fn state_value(s: State) -> i64 {
    match s {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

/// Logs a change once (by the worker that made it) and moves the breaker stats with it.
fn log_change(provider: &str, change: &Change) {
    if let Change::Transition { from, to, .. } = change {
        metrics::gauge_add(telemetry::breaker_state(provider), state_value(*to) - state_value(*from));
        metrics::counter(telemetry::breaker_transitions(provider, to.as_str()), 1);
    }
    match change {
        Change::Transition { from, to, reason, open_ms } => match open_ms {
            Some(ms) => log::info!(
                "provider {provider} breaker {} -> {} ({reason}); open for {ms} ms",
                from.as_str(),
                to.as_str()
            ),
            None => log::info!("provider {provider} breaker {} -> {} ({reason})", from.as_str(), to.as_str()),
        },
        Change::RateLimited { cooldown_ms } => {
            log::info!("provider {provider} answered 429; skipped for {cooldown_ms} ms")
        }
    }
}

impl Filter {
    /// Per-request stats and access-log fields of a request that reached a provider.
    fn emit(&mut self, provider: &str, outcome: Outcome, end_us: u64) {
        let model_name = self.answered_model();
        let model = metrics::model_tag(model_name.as_deref());
        let duration_ms = end_us.saturating_sub(self.start_us) / 1000;
        let (input, output) = match (&self.stream, &self.usage) {
            (Some(m), _) => m.usage(),
            (None, Some(u)) => (u.input_tokens(), u.output_tokens()),
            (None, None) => (None, None),
        };
        let ttft_ms = self.first_byte_us.map(|t| t.saturating_sub(self.start_us) / 1000);
        let tpot = self
            .first_byte_us
            .and_then(|first| telemetry::time_per_output_token_us(first, end_us, output.unwrap_or(0)));
        metrics::with_request_stats(provider, &model, |st| {
            st.request(outcome);
            st.duration_ms(duration_ms);
            for (kind, n) in [input, output].into_iter().enumerate() {
                if let Some(n) = n {
                    st.tokens(kind, n);
                }
            }
            if let Some(v) = ttft_ms {
                st.ttft_ms(v);
            }
            if let Some(v) = tpot {
                st.time_per_output_token_us(v);
            }
        });
        self.record.provider = Some(provider.to_string());
        self.record.model = model_name;
        self.record.outcome = Some(outcome.as_str());
        self.record.input_tokens = input;
        self.record.output_tokens = output;
        self.record.ttft_ms = ttft_ms;
        self.record.duration_ms = Some(duration_ms);
        self.publish_record();
    }

    /// The model that answered: the host's model of a rewritten request, else the client's.
    fn answered_model(&self) -> Option<String> {
        match &self.rewritten {
            Some((m, _)) => Some(m.clone()),
            None => self.peek.model(),
        }
    }

    /// The access-log fields, as filter state `wasm.llm_failover.*`.
    fn publish_record(&self) {
        for (name, value) in self.record.fields() {
            let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(cfg) = self.cfg.clone() else { return Action::Continue };
        // One host call for all request headers (each lookup or removal is a call of its own).
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let has = |name: &str| headers.iter().any(|(k, _)| k == name);
        let header = |name: &str| {
            headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_string))
        };
        // Whatever happens next, the client never picks the cluster.
        if has(&cfg.route_header) {
            set_request_header(&cfg.route_header, None);
        }

        let path = header(":path").unwrap_or_default();
        let Some(chain_idx) = cfg.chain_for(&path, &header) else { return Action::Continue };
        let Some(chain) = cfg.chains.get(chain_idx) else { return Action::Continue };
        self.chain = Some(chain_idx);
        self.same_model_only = header(SAME_MODEL_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("required"));

        self.start_us = now_us();
        let now = self.start_us / 1000;
        let client = chain.client_api;
        // Walk the chain while providers can take the request as it is; stop at the first that
        // needs its body rewritten (or when nothing is left) and wait for the body.
        let mut resume = chain.providers.len();
        for (pos, &p) in chain.providers.iter().enumerate() {
            if self.excluded(chain, pos) {
                continue;
            }
            let Some(provider) = cfg.providers.get(p) else { continue };
            if !chain.models.get(pos).is_some_and(|m| m.passes_through(provider.api, client, None)) {
                resume = pos;
                break;
            }
            match Self::admit(&cfg, p, now) {
                a @ (Admission::Admit | Admission::Probe) => {
                    let choice = Choice { provider: p, position: pos, probe: a == Admission::Probe };
                    self.record.attempts = self.record.attempts.saturating_add(1);
                    self.route(&cfg, chain, choice, &headers, None, 0);
                    return Action::Continue;
                }
                Admission::Reject(_) => self.record.attempts = self.record.attempts.saturating_add(1),
            }
        }
        let nothing_left = resume >= chain.providers.len();
        // An error-mode answer is the same for streams; a message needs the body's `stream`.
        if nothing_left && (end_of_stream || cfg.degraded.mode == DegradedMode::Error) {
            self.send_degraded(&cfg, DegradedReason::NoProviderAvailable);
            return Action::Pause;
        }
        if end_of_stream {
            self.held_headers = headers;
            return self.walk_with_body(&cfg, resume, b"", 0);
        }
        if !nothing_left && has("content-length") {
            // The body may change size.
            set_request_header("content-length", None);
        }
        self.held_headers = headers;
        self.awaiting_body = Some(resume);
        waiting::hold(self.context_id, now, client);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.chain.is_none() || self.local_reply {
            return Action::Continue;
        }
        if let Some(resume) = self.awaiting_body {
            // The body flows: the tick need not answer for us.
            waiting::release(self.context_id);
            // Envoy buffers the body while we pause; read it whole at the end.
            if !end_of_stream {
                return Action::Pause;
            }
            self.awaiting_body = None;
            let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                Ok(Some(b)) => b,
                _ => Vec::new(),
            };
            self.peek.feed(&body);
            let Some(cfg) = self.cfg.clone() else { return Action::Continue };
            return self.walk_with_body(&cfg, resume, &body, body_size);
        }
        if !self.peek.done() && body_size > 0 {
            if let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                self.peek.feed(&chunk);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.local_reply {
            return Action::Continue;
        }
        let (Some(cfg), Some(choice)) = (self.cfg.clone(), self.choice) else { return Action::Continue };
        let Some(provider) = cfg.providers.get(choice.provider) else { return Action::Continue };
        let status = response_header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        // Envoy's own replies (timeouts, resets) are never 2xx: skip the lookups on success.
        let outcome = if (200..300).contains(&status) {
            classify_headers(status, None, None, None)
        } else {
            let details = property_string(&["response", "code_details"]);
            let (ra_ms, ra) = if status == 429 {
                (response_header("retry-after-ms"), response_header("retry-after"))
            } else {
                (None, None)
            };
            classify_headers(status, details.as_deref(), ra_ms.as_deref(), ra.as_deref())
        };
        self.headers_outcome = Some(outcome);
        if outcome.is_provider_failure() && cfg.degraded.on_upstream_failure {
            self.send_degraded(&cfg, DegradedReason::UpstreamFailure);
            return Action::Pause;
        }
        set_response_header("x-llm-provider", Some(&provider.name));
        if let Some(model) = self.answered_model() {
            set_response_header("x-llm-model", Some(&model));
        }
        let client = self.client_api(&cfg);
        let content_type = response_header("content-type").unwrap_or_default();
        let event_stream = content_type.starts_with("application/vnd.amazon.eventstream");
        if outcome == Outcome::Success && (event_stream || content_type.starts_with("text/event-stream")) {
            let include_usage = self.rewritten.as_ref().is_some_and(|(_, u)| *u);
            let id = (u64::from(random_u32()) << 32) | u64::from(random_u32());
            let pipeline =
                StreamPipeline::new(provider.api, event_stream, client, include_usage, self.start_us / 1_000_000, id);
            if pipeline.rewrites() {
                set_response_header("content-length", None);
                if event_stream {
                    set_response_header("content-type", Some("text/event-stream; charset=utf-8"));
                }
            }
            self.stream = Some(pipeline);
        } else {
            let success = (200..300).contains(&status);
            let differ = provider.api.format() != client;
            let own_errors = !success && matches!(provider.api, Api::Bedrock | Api::Vertex);
            if differ || own_errors {
                set_response_header("content-length", None);
                self.json_rewrite = Some(status);
            }
            if success {
                self.usage = Some(UsageScanner::new());
            }
        }
        self.body_ended = end_of_stream;
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.local_reply || self.choice.is_none() {
            return Action::Continue;
        }
        if let Some(status) = self.json_rewrite {
            // Buffer the whole answer, then translate it in one go.
            if !end_of_stream {
                return Action::Pause;
            }
            self.body_ended = true;
            let Ok(Some(body)) = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) else {
                return Action::Continue;
            };
            if let Some(u) = self.usage.as_mut() {
                u.feed(&body);
            }
            let (Some(cfg), Some(choice)) = (self.cfg.clone(), self.choice) else { return Action::Continue };
            let Some(provider) = cfg.providers.get(choice.provider) else { return Action::Continue };
            let client = self.client_api(&cfg);
            if let Some(new) = translate_json(provider.api, client, status, &body, self.start_us / 1_000_000) {
                let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &new);
            }
            return Action::Continue;
        }
        if let Some(p) = self.stream.as_mut() {
            if body_size > 0 && self.first_byte_us.is_none() {
                self.first_byte_us = Some(now_us());
            }
            let chunk = match body_size {
                0 => Vec::new(),
                n => hostcalls::get_buffer(BufferType::HttpResponseBody, 0, n).ok().flatten().unwrap_or_default(),
            };
            if let Some(out) = p.feed(&chunk, end_of_stream) {
                if body_size > 0 || !out.is_empty() {
                    let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, out);
                }
            }
        } else if body_size > 0 && self.usage.is_some() {
            if let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) {
                if let Some(u) = self.usage.as_mut() {
                    u.feed(&chunk);
                }
            }
        }
        if end_of_stream {
            self.body_ended = true;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        waiting::release(self.context_id);
        let Some(cfg) = self.cfg.clone() else { return };
        let Some(choice) = self.choice else {
            // Answered degraded before any provider was tried: only the access-log fields.
            if self.record.degraded_reason.is_some() {
                self.record.model = self.peek.model();
                self.publish_record();
            }
            return;
        };
        let Some(provider) = cfg.providers.get(choice.provider) else { return };
        let s = &cfg.breaker;
        // No response headers at all: the client left before anything came back.
        let from_headers = self.headers_outcome.unwrap_or(Outcome::ClientCancelled);
        let verdict = self.stream.as_ref().map_or(StreamVerdict::NotStream, |m| m.verdict());
        let body_ended = self.body_ended || self.local_reply;
        // Envoy's flags only matter for a body that did not end (who cut it?).
        let flags = if body_ended { 0 } else { property_u64(&["response", "flags"]).unwrap_or(0) };
        let outcome = classify_end(from_headers, verdict, body_ended, flags);
        let health = outcome.health(s.default_retry_after_ms, s.max_retry_after_ms);
        log::debug!("{} -> {} (probe {})", provider.name, outcome.as_str(), choice.probe);
        let end_us = now_us();
        self.emit(&provider.name, outcome, end_us);
        metrics::report_memory();
        let now = end_us / 1000;
        if health == Health::Success && !choice.probe {
            // Admitted by a closed breaker: only the window's count changes; batch it.
            if let Some(batch) = shared::batch_success(choice.provider, now, cfg.success_flush_ms()) {
                shared::flush_successes(choice.provider, &provider.state_key, s, now, batch);
            }
            return;
        }
        if health == Health::Neutral && !choice.probe {
            return;
        }
        let random = random_u32();
        let pending = shared::take_pending(choice.provider);
        let change = shared::update(&provider.state_key, s, |st| {
            st.record_successes(now, pending.count, pending.last_ms);
            (st.record(now, health, choice.probe, s, random), true)
        });
        match change {
            Some(Some(c)) => log_change(&provider.name, &c),
            Some(None) => {}
            None => shared::restore_pending(choice.provider, pending),
        }
    }
}

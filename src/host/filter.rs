//! The per-request HTTP context: snapshots the request, asks the core which provider serves it,
//! applies the header edits, watches the response (status, Envoy's code details, the stream),
//! replaces a failure that has not reached the client with the degraded answer, and records the
//! outcome in the provider's shared window and breaker when the stream is done.

use super::props::{property_string, property_u64, response_header, set_request_header, set_response_header};
use super::{metrics, now_us, random_u32, shared, waiting};
use crate::breaker::{Admission, Change, Peek, State};
use crate::classify::{classify_end, classify_headers, Health, Outcome, StreamVerdict};
use crate::config::{Config, DegradedMode};
use crate::degraded::{degraded_response, DegradedReason};
use crate::plan::{self, Choice};
use crate::providers::StreamMonitor;
use crate::request_peek::RequestPeek;
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
    /// No provider admitted the request: answer degraded once the request body is in.
    degraded_pending: bool,
    /// This stream's response is our own local reply.
    local_reply: bool,
    headers_outcome: Option<Outcome>,
    monitor: Option<StreamMonitor>,
    /// Token counts of a 2xx answer (JSON or stream).
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
            degraded_pending: false,
            local_reply: false,
            headers_outcome: None,
            monitor: None,
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

    /// The API the client speaks: that of the chain's first provider.
    fn client_api(&self, cfg: &Config) -> crate::config::Api {
        self.chain
            .and_then(|c| cfg.chains.get(c))
            .and_then(|c| c.providers.first())
            .and_then(|&p| cfg.providers.get(p))
            .map(|p| p.api)
            .unwrap_or(crate::config::Api::Anthropic)
    }

    fn send_degraded(&mut self, cfg: &Config, reason: DegradedReason) {
        let api = self.client_api(cfg);
        let id = (u64::from(random_u32()) << 32) | u64::from(random_u32());
        let model = self.peek.model();
        let resp = degraded_response(&cfg.degraded, api, model.as_deref(), self.peek.stream(), reason, id);
        let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.local_reply = true;
        self.record.degraded_reason = Some(reason.as_str());
        metrics::counter(telemetry::degraded(reason.as_str()), 1);
        log::debug!("degraded answer ({})", reason.as_str());
        let _ = hostcalls::send_http_response(resp.status, headers, Some(&resp.body));
    }
}

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
        let model_name = self.peek.model();
        let model = metrics::model_tag(model_name.as_deref());
        let duration_ms = end_us.saturating_sub(self.start_us) / 1000;
        let (input, output) = match (&self.monitor, &self.usage) {
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

        self.start_us = now_us();
        let now = self.start_us / 1000;
        let plan = plan::choose(chain, |p| Self::admit(&cfg, p, now));
        self.record.attempts = u32::try_from(plan.skipped.len()).unwrap_or(u32::MAX).saturating_add(1);
        let Some(choice) = plan.choice else {
            self.record.attempts -= 1;
            // An error-mode answer is the same for streams; a message needs the body's `stream`.
            if end_of_stream || cfg.degraded.mode == DegradedMode::Error {
                self.send_degraded(&cfg, DegradedReason::NoProviderAvailable);
            } else {
                self.degraded_pending = true;
                waiting::hold(self.context_id, now, self.client_api(&cfg));
            }
            return Action::Pause;
        };
        let Some(edits) = plan::request_edits(&cfg, chain, choice) else { return Action::Continue };
        let replaced = edits.credential.map(|c| c.header.as_str());
        for h in edits.strip.iter().filter(|h| Some(h.as_str()) != replaced && has(h)) {
            set_request_header(h, None);
        }
        if let Some(c) = edits.credential {
            set_request_header(&c.header, Some(&c.value));
        }
        if let Some(a) = edits.authority.filter(|a| header(":authority").as_deref() != Some(a)) {
            set_request_header(":authority", Some(a));
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
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.chain.is_none() || self.local_reply {
            return Action::Continue;
        }
        if self.degraded_pending {
            waiting::release(self.context_id);
            // Envoy buffers the body while we pause; read it whole at the end.
            if !end_of_stream {
                return Action::Pause;
            }
            if let Ok(Some(body)) = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                self.peek.feed(&body);
            }
            if let Some(cfg) = self.cfg.clone() {
                self.send_degraded(&cfg, DegradedReason::NoProviderAvailable);
            }
            return Action::Pause;
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
        if outcome == Outcome::Success {
            // A stream's monitor reads its usage events; a JSON answer is scanned for `usage`.
            if response_header("content-type").is_some_and(|ct| ct.starts_with("text/event-stream")) {
                self.monitor = Some(StreamMonitor::new(provider.api));
            } else {
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
        if body_size > 0 && (self.usage.is_some() || self.monitor.is_some()) {
            if self.monitor.is_some() && self.first_byte_us.is_none() {
                self.first_byte_us = Some(now_us());
            }
            if let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size) {
                if let Some(m) = self.monitor.as_mut() {
                    m.feed(&chunk);
                }
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
        let verdict = self.monitor.as_ref().map_or(StreamVerdict::NotStream, |m| m.verdict());
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

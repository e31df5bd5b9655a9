//! The downstream HTTP context of one request: a pump of host events into the request's
//! [`Exchange`] (and, in single mode, its one [`Attempt`]), and of the core's steps back into host
//! calls. It decides nothing itself.

use super::health::{SharedBudget, SharedHealth};
use super::props::{property_string, property_u64, response_header, response_headers, set_header};
use super::registry::{self, SharedExchange, EXCHANGE_PROPERTY};
use super::{abi, metrics, now_ms, random_u64, waiting};
use crate::attempt::{AttemptSummary, BodyStep, ResponseHeaders};
use crate::config::Config;
use crate::degraded::LocalResponse;
use crate::exchange::{Answer, Exchange, Mode, OverflowStep, RequestHead, ResumeStep, Step};
use crate::header_map::HeaderMap;
use crate::health::Health;
use crate::plan::HeaderEdits;
use crate::request_peek::RequestPeek;
use crate::telemetry;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;

pub struct Filter {
    cfg: Option<Rc<Config>>,
    context_id: u32,
    ex: Option<SharedExchange>,
    /// The request headers, kept while the request waits for its body.
    held: Option<HeaderMap>,
    /// A streaming look at the body of a request routed at its headers (model, stream).
    peek: Option<RequestPeek>,
    /// The exchange is registered for the upstream filter.
    registered: bool,
    /// The token of the continuation call in flight (the response is paused meanwhile).
    resume_call: Option<u32>,
    /// A 400 held to see whether it is a context overflow; the call in flight for it.
    overflow_hold: bool,
    overflow_call: Option<u32>,
    /// Bytes of the response body Envoy holds for us.
    held_body: usize,
}

impl Filter {
    pub fn new(cfg: Option<Rc<Config>>, context_id: u32) -> Self {
        Filter {
            cfg,
            context_id,
            ex: None,
            held: None,
            peek: None,
            registered: false,
            resume_call: None,
            overflow_hold: false,
            overflow_call: None,
            held_body: 0,
        }
    }

    /// Carries out continuation steps until one waits for a call or ends (`in_call`: from the
    /// call's answer, where the paused response must be resumed).
    fn resume_step(
        &mut self,
        cfg: &Config,
        ex: &SharedExchange,
        mut step: ResumeStep,
        current: &HeaderMap,
        in_call: bool,
    ) -> Action {
        loop {
            match step {
                ResumeStep::Call(spec) => {
                    let headers: Vec<(&str, &str)> =
                        spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let timeout = std::time::Duration::from_millis(spec.timeout_ms);
                    abi::tally::count(abi::tally::HostFn::DispatchHttpCall);
                    match self.dispatch_http_call(&spec.cluster, headers, Some(&spec.body), vec![], timeout) {
                        Ok(token) => {
                            self.resume_call = Some(token);
                            return Action::Pause;
                        }
                        Err(e) => {
                            log::warn!("llm-failover: cannot call cluster {} for a continuation: {e:?}", spec.cluster);
                            step = ex.borrow_mut().resume_answer(
                                cfg,
                                0,
                                b"",
                                current,
                                &mut SharedHealth { cfg },
                                &mut SharedBudget { cfg },
                                now_ms(),
                            );
                        }
                    }
                }
                ResumeStep::Append(bytes) => {
                    if !bytes.is_empty() {
                        // Past the end of what is buffered: appended.
                        if let Err(e) = abi::set_buffer(BufferType::HttpResponseBody, APPEND, 0, &bytes) {
                            log::warn!("llm-failover: cannot end a broken stream: {e:?}");
                        }
                    }
                    if in_call {
                        if let Err(e) = abi::continue_stream(proxy_wasm::types::StreamType::HttpResponse) {
                            log::warn!("llm-failover: cannot resume a continued stream: {e:?}");
                        }
                    }
                    return Action::Continue;
                }
            }
        }
    }

    /// The held 400's step.
    fn overflow_step(&mut self, step: OverflowStep, in_call: bool) -> Action {
        match step {
            OverflowStep::Call(spec) => {
                let headers: Vec<(&str, &str)> = spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let timeout = std::time::Duration::from_millis(spec.timeout_ms);
                abi::tally::count(abi::tally::HostFn::DispatchHttpCall);
                match self.dispatch_http_call(&spec.cluster, headers, Some(&spec.body), vec![], timeout) {
                    Ok(token) => {
                        self.overflow_call = Some(token);
                        return Action::Pause;
                    }
                    Err(e) => log::warn!("llm-failover: cannot call cluster {} for a long prompt: {e:?}", spec.cluster),
                }
            }
            OverflowStep::Replace { headers, body } => {
                apply_edits(MapType::HttpResponseHeaders, &headers);
                if let Err(e) = abi::set_buffer(BufferType::HttpResponseBody, 0, self.held_body, &body) {
                    log::warn!("llm-failover: cannot replace a held answer: {e:?}");
                }
            }
            OverflowStep::Pass => {}
        }
        self.overflow_hold = false;
        if in_call {
            if let Err(e) = abi::continue_stream(proxy_wasm::types::StreamType::HttpResponse) {
                log::warn!("llm-failover: cannot resume a held answer: {e:?}");
            }
        }
        Action::Continue
    }

    /// A stream of this request broke after its first content: continue it, or end it.
    fn start_resume(&mut self, cfg: &Config, ex: &SharedExchange) -> Action {
        let current = abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let step =
            ex.borrow_mut().resume_start(cfg, &current, &mut SharedHealth { cfg }, &mut SharedBudget { cfg }, now_ms());
        self.resume_step(cfg, ex, step, &current, false)
    }

    /// Carries out a request step; returns the action for the host.
    fn apply(&mut self, step: Step, request_body_size: usize) -> Action {
        match step {
            Step::Continue => Action::Continue,
            Step::Hold => Action::Pause,
            Step::Reply(resp) => {
                send(&resp, "llm_failover");
                Action::Pause
            }
            Step::Forward { headers, body } => {
                apply_edits(MapType::HttpRequestHeaders, &headers);
                if let Some(b) = body {
                    let _ = abi::set_buffer(BufferType::HttpRequestBody, 0, request_body_size, &b);
                }
                clear_route_cache();
                let attempts = self.ex.as_ref().is_some_and(|e| e.borrow().mode == Mode::Attempts);
                if attempts {
                    if let Some(ex) = &self.ex {
                        registry::register(self.context_id, ex.clone());
                        self.registered = true;
                        let key = self.context_id.to_string();
                        let _ = abi::set_property(&[EXCHANGE_PROPERTY], Some(key.as_bytes()));
                    }
                }
                Action::Continue
            }
        }
    }
}

/// An answer came back from a provider without any attempt having started: the upstream filter
/// did not run for this route (it must be on the router's `upstream_http_filters`, or on the
/// route's cluster, with the same `vm_id`). Logged once per VM.
fn warn_no_upstream_filter() {
    thread_local! { static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }
    if !WARNED.with(|w| w.replace(true)) {
        log::error!(
            "llm-failover: a request planned for in-request failover reached a provider without the upstream filter (llm-failover-upstream) running for it: add it to the router's upstream_http_filters with the same vm_id; until then its requests are not rewritten per attempt"
        );
    }
}

/// Applies header edits to a header map.
pub fn apply_edits(map: MapType, edits: &HeaderEdits) {
    for (k, v) in edits {
        set_header(map, k, v.as_deref());
    }
}

/// Sends a local reply built by the core.
pub fn send(resp: &LocalResponse, details: &str) {
    let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(e) = abi::send_local_response(resp.status, &headers, &resp.body, details) {
        log::warn!("cannot send a local reply: {e:?}");
    }
}

/// A `set_buffer` start past any buffer's end: the bytes are appended.
const APPEND: usize = i32::MAX as usize;

/// Stats of a request's continuation: each call as an attempt of its provider, then how it
/// ended.
fn emit_resume(cfg: &Config, ex: &Exchange) {
    let Some(r) = ex.resume.as_ref() else { return };
    let name = |p: usize| cfg.providers.get(p).map_or("none", |q| q.name.as_str());
    for call in &r.calls {
        emit_attempt(cfg, call);
        metrics::counter(telemetry::continuations(name(call.provider), "attempted"), 1);
    }
    match r.result {
        Some(crate::exchange::ResumeResult::Spliced(p)) => {
            metrics::counter(telemetry::continuations(name(p), "spliced"), 1)
        }
        Some(crate::exchange::ResumeResult::Failed(_)) => {
            let last = r.asked.last().map_or("none", |p| name(*p));
            metrics::counter(telemetry::continuations(last, "failed"), 1)
        }
        _ => {}
    }
}

fn clear_route_cache() {
    if let Err(e) = abi::call_foreign_function("clear_route_cache", &[]) {
        log::warn!("clear_route_cache failed: {e:?}");
    }
}

/// Stats of one finished attempt, per provider and model.
pub fn emit_attempt(cfg: &Config, s: &AttemptSummary) {
    let Some(p) = cfg.providers.get(s.provider) else { return };
    let duration = s.end_ms.saturating_sub(s.start_ms);
    let ttft = s.first_content_ms.filter(|_| s.streamed).map(|t| t.saturating_sub(s.start_ms));
    let tpot = s.first_content_ms.filter(|_| s.streamed).and_then(|first| {
        telemetry::time_per_output_token_us(first * 1000, s.end_ms * 1000, s.output_tokens.unwrap_or(0))
    });
    metrics::with_request_stats(&p.name, s.model.as_deref(), |st| {
        st.request(s.outcome);
        st.duration_ms(duration);
        for (kind, n) in [s.input_tokens, s.output_tokens].into_iter().enumerate() {
            if let Some(n) = n {
                st.tokens(kind, n);
            }
        }
        if let Some(v) = ttft {
            st.ttft_ms(v);
        }
        if let Some(v) = tpot {
            st.time_per_output_token_us(v);
        }
    });
    if s.number > 1 {
        metrics::counter(telemetry::replays(&p.name), 1);
    }
    match s.outcome {
        crate::classify::Outcome::FirstTokenTimeout => {
            metrics::counter(telemetry::deadlines(&p.name, "first_token"), 1)
        }
        crate::classify::Outcome::Stalled => metrics::counter(telemetry::deadlines(&p.name, "stall"), 1),
        _ => {}
    }
}

impl Context for Filter {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        if self.overflow_call == Some(token_id) {
            self.overflow_call = None;
            let (Some(cfg), Some(ex)) = (self.cfg.clone(), self.ex.clone()) else { return };
            let header = |n: &str| {
                abi::get_map_value(MapType::HttpCallResponseHeaders, n)
                    .ok()
                    .flatten()
                    .and_then(|v| String::from_utf8(v).ok())
            };
            let status = header(":status").and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(0);
            let content_type = header("content-type").unwrap_or_default();
            let body = if body_size > 0 {
                abi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
            } else {
                Vec::new()
            };
            let step = ex.borrow_mut().overflow_answer(
                &cfg,
                status,
                &content_type,
                &body,
                &mut SharedHealth { cfg: &cfg },
                now_ms(),
            );
            if let Some(s) = ex.borrow().summaries.last() {
                emit_attempt(&cfg, s);
            }
            self.overflow_step(step, true);
            return;
        }
        if self.resume_call != Some(token_id) {
            return;
        }
        self.resume_call = None;
        let (Some(cfg), Some(ex)) = (self.cfg.clone(), self.ex.clone()) else { return };
        let status = abi::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse::<u16>().ok()))
            .unwrap_or(0);
        let body = if body_size > 0 {
            abi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        } else {
            Vec::new()
        };
        let current = abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let step = ex.borrow_mut().resume_answer(
            &cfg,
            status,
            &body,
            &current,
            &mut SharedHealth { cfg: &cfg },
            &mut SharedBudget { cfg: &cfg },
            now_ms(),
        );
        self.resume_step(&cfg, &ex, step, &current, true);
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(cfg) = self.cfg.clone() else { return Action::Continue };
        // One host call for all request headers (each lookup is a call of its own).
        let headers = abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let head = RequestHead { headers: &headers, end_of_stream };
        // Whatever happens next, the client never picks the cluster.
        if head.has(&cfg.route_header) {
            set_header(MapType::HttpRequestHeaders, &cfg.route_header, None);
        }
        let path = head.get(":path").unwrap_or_default();
        let lookup = |name: &str| head.get(name).map(str::to_string);
        let Some(chain) = cfg.chain_for(path, &lookup) else { return Action::Continue };
        let now = now_ms();
        let mut ex = Exchange::new(&cfg, chain, &head, registry::upstream_filter(), now, random_u64());
        let step = ex.on_request_headers(&cfg, &head, &mut SharedHealth { cfg: &cfg });
        let held = step == Step::Hold;
        let single = ex.mode == Mode::Single;
        if ex.no_replay.is_some() {
            metrics::counter(telemetry::replays_skipped("body_too_large"), 1);
        }
        let client = ex.client;
        self.ex = Some(Rc::new(RefCell::new(ex)));
        if held {
            // The body may change size when it is rewritten for its host.
            if single && head.has("content-length") {
                set_header(MapType::HttpRequestHeaders, "content-length", None);
            }
            self.held = Some(headers.clone());
            waiting::hold(self.context_id, now, client);
            return Action::Pause;
        }
        if single && !end_of_stream {
            self.peek = Some(RequestPeek::new());
        }
        self.apply(step, 0)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(cfg), Some(ex)) = (self.cfg.clone(), self.ex.clone()) else { return Action::Continue };
        if let Some(headers) = self.held.as_ref() {
            // The body flows: the tick need not answer for us, nor for any other request.
            waiting::release(self.context_id);
            waiting::body_flowed();
            // Envoy buffers the body while we pause; read it whole at the end.
            if !end_of_stream {
                return Action::Pause;
            }
            let body = abi::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten().unwrap_or_default();
            let head = RequestHead { headers, end_of_stream: false };
            let step = ex.borrow_mut().on_request_body(
                &cfg,
                &head,
                body,
                &mut SharedHealth { cfg: &cfg },
                &mut SharedBudget { cfg: &cfg },
            );
            self.held = None;
            return self.apply(step, body_size);
        }
        if let Some(peek) = self.peek.as_mut() {
            let keep = ex.borrow().keeps_body(&cfg, peek.stream(), peek.done());
            if body_size > 0 && (keep || !peek.done()) {
                if let Ok(Some(chunk)) = abi::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                    if !peek.done() {
                        peek.feed(&chunk);
                    }
                    if keep {
                        ex.borrow_mut().body_chunk(&cfg, &chunk, peek.stream(), peek.done());
                    }
                }
            }
            if (peek.done() && !ex.borrow().keeps_body(&cfg, peek.stream(), true)) || end_of_stream {
                let (model, stream) = (peek.model(), peek.stream());
                ex.borrow_mut().learn_model(model, stream);
                self.peek = None;
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(cfg), Some(ex)) = (self.cfg.clone(), self.ex.clone()) else { return Action::Continue };
        if self.held.is_some() {
            ex.borrow_mut().answered_while_held();
            return Action::Continue;
        }
        let mut ex = ex.borrow_mut();
        if ex.replied {
            return Action::Continue;
        }
        // Attempts mode reads only the status and Envoy's code details (the upstream filter
        // watched each attempt); single mode reads what its attempt needs.
        let details = || property_string(&["response", "code_details"]);
        let headers = if ex.watches_the_answer() {
            // One host call for the map rather than one per header read.
            ResponseHeaders::read(&response_headers(), &details)
        } else {
            let status = response_header(":status").and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(0);
            let ok = (200..300).contains(&status);
            ResponseHeaders { status, details: if ok { None } else { details() }, ..Default::default() }
        };
        let now = if ex.reads_clock_at_response(&headers.content_type) { now_ms() } else { 0 };
        let answer = ex.on_response_headers(&cfg, &headers.head(), now);
        if ex.upstream_filter_missing {
            warn_no_upstream_filter();
        }
        // A 400 that may say the prompt is too long for the model: held to be read.
        self.overflow_hold =
            matches!(answer, Answer::Pass(_) | Answer::Hold) && ex.holds_for_overflow(&cfg, headers.status);
        drop(ex);
        match answer {
            Answer::Pass(edits) => {
                apply_edits(MapType::HttpResponseHeaders, &edits);
                if self.overflow_hold {
                    return Action::Pause;
                }
                Action::Continue
            }
            Answer::Hold => Action::Pause,
            Answer::Reply(resp) => {
                send(&resp, "llm_failover_degraded");
                Action::Pause
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.resume_call.is_some() || self.overflow_call.is_some() {
            // A continuation (or a larger context) is on its way: everything waits for it.
            return Action::Pause;
        }
        let Some(shared) = self.ex.clone() else { return Action::Continue };
        let mut ex = shared.borrow_mut();
        if ex.replied {
            return Action::Continue;
        }
        let mut action = Action::Continue;
        let mut replaced: Option<Vec<u8>> = None;
        if ex.mode == Mode::Single {
            let Some(a) = ex.single.as_mut() else { return Action::Continue };
            let data = match a.reads_body_from(body_size, end_of_stream) {
                Some(from) if body_size > from => abi::get_buffer(BufferType::HttpResponseBody, from, body_size - from)
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let now = if a.reads_clock(end_of_stream) { now_ms() } else { 0 };
            action = match a.on_response_body(&data, end_of_stream, now) {
                BodyStep::Continue { headers, body } => {
                    apply_edits(MapType::HttpResponseHeaders, &headers);
                    if let Some(b) = body {
                        if body_size > 0 || !b.is_empty() {
                            let _ = abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &b);
                        }
                        replaced = Some(b);
                    }
                    Action::Continue
                }
                BodyStep::Hold => Action::Pause,
                BodyStep::Retry(_) | BodyStep::Degrade(_) => Action::Continue,
            };
            if let Some(cut) = a.take_cut() {
                ex.on_cut(cut);
            }
        }
        if self.overflow_hold {
            if !end_of_stream {
                return Action::Pause;
            }
            let body = match replaced {
                Some(b) => b,
                None => abi::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten().unwrap_or_default(),
            };
            self.held_body = body.len();
            drop(ex);
            let Some(cfg) = self.cfg.clone() else { return Action::Continue };
            let current = abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
            let step = shared.borrow_mut().overflow_start(
                &cfg,
                &body,
                &current,
                &mut SharedHealth { cfg: &cfg },
                &mut SharedBudget { cfg: &cfg },
                now_ms(),
            );
            return self.overflow_step(step, false);
        }
        if !ex.resume_waiting() {
            return action;
        }
        drop(ex);
        let Some(cfg) = self.cfg.clone() else { return action };
        self.start_resume(&cfg, &shared)
    }

    fn on_log(&mut self) {
        waiting::release(self.context_id);
        registry::unwatch_stall(self.context_id);
        if self.registered {
            registry::unregister(self.context_id);
        }
        let (Some(cfg), Some(ex)) = (self.cfg.clone(), self.ex.take()) else { return };
        let mut ex = ex.borrow_mut();
        let now = now_ms();
        if let Some(mut a) = ex.single.take() {
            // A settled outcome does not depend on how Envoy ended the request: two reads saved.
            let (flags, transport) = if a.settled() {
                (0, false)
            } else {
                let details = property_string(&["response", "code_details"]);
                (
                    property_u64(&["response", "flags"]).unwrap_or(0),
                    details.as_deref().is_some_and(|d| d.contains("connection_failure") || d.contains("connect_error")),
                )
            };
            let summary = a.finish(now, flags, transport);
            SharedHealth { cfg: &cfg }.record(summary.provider, summary.outcome, summary.probe, now);
            emit_attempt(&cfg, &summary);
            ex.end_attempt(summary);
        }
        // The access log is written before the last attempt's context reports its end: take
        // that attempt's outcome as it stands (its context records it in the breaker).
        if self.registered {
            if let Some(a) = registry::current(self.context_id) {
                let flags = property_u64(&["response", "flags"]).unwrap_or(0);
                let summary = a.borrow().summary(now, flags, false);
                ex.end_attempt(summary);
            }
        }
        emit_resume(&cfg, &ex);
        let record = ex.record(&cfg, now);
        if let Some(reason) = record.degraded_reason {
            metrics::counter(telemetry::degraded(reason), 1);
        }
        if let Some((from, to)) = ex.failover(&cfg) {
            if let (Some(from), Some(to)) = (cfg.providers.get(from), cfg.providers.get(to)) {
                metrics::counter(telemetry::failovers(&from.name, &to.name), 1);
            }
        }
        if ex.mode == Mode::Attempts && ex.attempts_started > 0 {
            metrics::histogram(telemetry::request_attempts(), u64::from(ex.attempts_started));
        }
        metrics::report_memory();
        // The whole record in one call (see `access_log`).
        let _ = abi::set_property(&[super::root::RECORD_PROPERTY], Some(&crate::access_log::encode(&record)));
        #[cfg(feature = "host-call-stats")]
        metrics::flush_host_calls();
    }
}

//! The upstream HTTP context of one attempt: Envoy's router runs the upstream filter once per
//! attempt (the first and every retry). It finds its request's exchange, asks it how this attempt
//! starts (which provider the host Envoy picked is, and the request edits for it, or a degraded
//! answer when the retry budget, the attempts or the deadline are spent), then pumps the
//! attempt's answer through its [`Attempt`] and records the outcome in that provider's breaker
//! when the attempt is over. A request the downstream filter did not register passes untouched.

use super::filter::{apply_edits, emit_attempt, send};
use super::health::{SharedBudget, SharedHealth};
use super::props::{property, property_string, property_u64, response_headers};
use super::registry::{self, SharedAttempt, SharedExchange, EXCHANGE_PROPERTY};
use super::{abi, now_ms};
use crate::attempt::{BodyStep, HeadStep, ResponseHeaders};
use crate::config::Config;
use crate::exchange::Start;
use crate::health::Health;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// Host metadata key naming the provider of an endpoint.
pub const PROVIDER_METADATA: [&str; 5] =
    ["xds", "upstream_host_metadata", "filter_metadata", "llm_failover", "provider"];

pub struct Upstream {
    context_id: u32,
    /// The key of this attempt's exchange.
    key: u32,
    cfg: Option<Rc<Config>>,
    ex: Option<SharedExchange>,
    attempt: Option<SharedAttempt>,
    /// The rewritten body to send instead of the client's.
    body: Option<Vec<u8>>,
    /// This context answered the client itself.
    replied: bool,
    finished: bool,
}

impl Upstream {
    pub fn new(context_id: u32) -> Self {
        Upstream { context_id, key: 0, cfg: None, ex: None, attempt: None, body: None, replied: false, finished: false }
    }

    fn reply(&mut self, resp: &crate::degraded::LocalResponse) -> Action {
        if let Some(ex) = &self.ex {
            ex.borrow_mut().replied = true;
        }
        self.replied = true;
        send(resp, "llm_failover_degraded");
        Action::Pause
    }

    /// Ends the attempt once: its outcome to the breaker, its stats, its summary to the exchange.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        registry::unwatch_stall(self.context_id);
        let (Some(cfg), Some(ex), Some(a)) = (self.cfg.clone(), self.ex.clone(), self.attempt.take()) else { return };
        registry::clear_current(self.key, &a);
        let now = now_ms();
        let settled = a.borrow().settled();
        let (flags, transport) = if settled {
            (0, false)
        } else {
            (
                property_u64(&["response", "flags"]).unwrap_or(0),
                property(&["upstream", "transport_failure_reason"]).is_some(),
            )
        };
        let summary = a.borrow_mut().finish(now, flags, transport);
        SharedHealth { cfg: &cfg }.record(summary.provider, summary.outcome, summary.probe, now);
        emit_attempt(&cfg, &summary);
        log::debug!(
            "attempt {} at {} -> {}",
            summary.number,
            cfg.providers.get(summary.provider).map_or("?", |p| p.name.as_str()),
            summary.outcome.as_str()
        );
        ex.borrow_mut().end_attempt(summary);
    }
}

impl Context for Upstream {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for Upstream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(key) = property_string(&[EXCHANGE_PROPERTY]).and_then(|k| k.parse::<u32>().ok()) else {
            return Action::Continue;
        };
        let (Some(ex), Some(cfg)) = (registry::lookup(key), registry::config()) else { return Action::Continue };
        self.cfg = Some(cfg.clone());
        self.ex = Some(ex.clone());
        self.key = key;
        let number =
            property_u64(&["upstream", "request_attempt_count"]).and_then(|n| u32::try_from(n).ok()).unwrap_or(1);
        let landed = property_string(&PROVIDER_METADATA);
        let headers = abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let current = |name: &str| headers.get(name).map(str::to_string);
        let now = now_ms();
        let start = ex.borrow_mut().start_attempt(
            &cfg,
            number,
            landed.as_deref(),
            &current,
            &mut SharedHealth { cfg: &cfg },
            &mut SharedBudget { cfg: &cfg },
            now,
            registry::retry_from_body(),
        );
        match start {
            Start::Reply(resp) => {
                self.finished = true;
                self.reply(&resp)
            }
            Start::Go { attempt, headers: edits, body } => {
                apply_edits(MapType::HttpRequestHeaders, &edits);
                let a = Rc::new(RefCell::new(*attempt));
                registry::set_current(key, a.clone());
                self.attempt = Some(a);
                self.body = body;
                if self.body.is_some() && !end_of_stream {
                    return Action::Pause;
                }
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.body.is_none() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(b) = self.body.take() {
            if let Err(e) = abi::set_buffer(BufferType::HttpRequestBody, 0, body_size, &b) {
                log::warn!("cannot replace the request body: {e:?}");
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        let Some(a) = self.attempt.clone() else { return Action::Continue };
        let headers = ResponseHeaders::read(&response_headers(), &|| None);
        let step = a.borrow_mut().on_response_headers(&headers.head(), now_ms());
        match step {
            HeadStep::Continue(edits) | HeadStep::Retry(edits) => {
                apply_edits(MapType::HttpResponseHeaders, &edits);
                if a.borrow().watching_stall() {
                    registry::watch_stall(self.context_id, a.clone());
                }
                Action::Continue
            }
            HeadStep::Hold => Action::Pause,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        let Some(a) = self.attempt.clone() else { return Action::Continue };
        let from = a.borrow_mut().reads_body_from(body_size, end_of_stream);
        let data = match from {
            Some(from) if body_size > from => {
                abi::get_buffer(BufferType::HttpResponseBody, from, body_size - from).ok().flatten().unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let now = if a.borrow().reads_clock(end_of_stream) { now_ms() } else { 0 };
        let step = a.borrow_mut().on_response_body(&data, end_of_stream, now);
        if let Some(cut) = a.borrow_mut().take_cut() {
            if let Some(ex) = &self.ex {
                ex.borrow_mut().on_cut(cut);
            }
        }
        match step {
            BodyStep::Continue { headers, body } => {
                apply_edits(MapType::HttpResponseHeaders, &headers);
                if let Some(b) = body {
                    if body_size > 0 || !b.is_empty() {
                        let _ = abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &b);
                    }
                }
                if a.borrow().watching_stall() {
                    registry::watch_stall(self.context_id, a.clone());
                }
                Action::Continue
            }
            BodyStep::Hold => Action::Pause,
            BodyStep::Retry(edits) => {
                apply_edits(MapType::HttpResponseHeaders, &edits);
                Action::Continue
            }
            BodyStep::Degrade(reason) => {
                let (Some(cfg), Some(ex)) = (self.cfg.clone(), self.ex.clone()) else { return Action::Continue };
                let resp = ex.borrow_mut().degrade(&cfg, reason);
                self.reply(&resp)
            }
        }
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

/// Resets the client's stream of an attempt that stalled (from the root's tick).
pub fn reset_stalled(context_id: u32) {
    if abi::set_effective_context(context_id).is_ok() {
        if let Err(e) = abi::close_stream(proxy_wasm::types::StreamType::HttpResponse) {
            log::debug!("cannot reset a stalled stream: {e:?}");
        }
    }
}

//! Requests held at their headers until their body is in, for a degraded answer that must know
//! whether the client asked for a stream.
//!
//! With the Wasm filter's `allow_on_headers_stop_iteration: true` (plain Envoy, or Istio through
//! the EnvoyFilter in istio/) Envoy hands the held request's body to the filter as it arrives,
//! and the filter answers with the degraded message (JSON or SSE). Istio's WasmPlugin and
//! TrafficExtension cannot set that flag: Envoy then holds the body back, and a resumed request
//! would skip the filter. So the root context's tick answers a request still held after
//! [`GRACE_MS`] with the degraded answer's error form (503, `Retry-After`, the API's
//! `overloaded_error`), which is right for streaming and non-streaming requests alike. Once a
//! held request's body has reached the filter in this VM, the flag is known to be set and the
//! tick answers nothing: a slow body is then just slow (seen under a burst of 40 concurrent SDK
//! streams on two cores, where bodies came more than 150 ms after their headers).

use super::abi;
use crate::config::{ClientApi as Api, DegradedMode, DegradedSettings};
use crate::degraded::{degraded_response, DegradedReason};
use std::cell::RefCell;

/// How long a request may wait for its body before the tick answers it.
pub const GRACE_MS: u64 = 150;

thread_local! {
    /// (context id, held since ms, API of the client).
    static WAITING: RefCell<Vec<(u32, u64, Api)>> = const { RefCell::new(Vec::new()) };
    /// A held request's body reached the filter: this filter has
    /// `allow_on_headers_stop_iteration`, so a body that is late is only late (a slow client, a
    /// busy machine), never held back by Envoy, and the tick must not answer for it.
    static BODIES_FLOW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A held request's body arrived in the filter (see `BODIES_FLOW`).
pub fn body_flowed() {
    BODIES_FLOW.with(|b| b.set(true));
}

pub fn hold(context_id: u32, now_ms: u64, api: Api) {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        if !w.iter().any(|(id, _, _)| *id == context_id) {
            w.push((context_id, now_ms, api));
        }
    });
}

pub fn release(context_id: u32) {
    WAITING.with(|w| w.borrow_mut().retain(|(id, _, _)| *id != context_id));
}

/// Answers every request held longer than [`GRACE_MS`] (called from the root context's tick).
pub fn answer_overdue(now_ms: u64, settings: &DegradedSettings) {
    if BODIES_FLOW.with(std::cell::Cell::get) {
        WAITING.with(|w| w.borrow_mut().clear());
        return;
    }
    let overdue: Vec<(u32, u64, Api)> = WAITING.with(|w| {
        let mut w = w.borrow_mut();
        let (due, keep): (Vec<_>, Vec<_>) =
            w.drain(..).partition(|(_, since, _)| now_ms.saturating_sub(*since) >= GRACE_MS);
        *w = keep;
        due
    });
    if overdue.is_empty() {
        return;
    }
    let error_form = DegradedSettings { mode: DegradedMode::Error, ..settings.clone() };
    for (id, _, api) in overdue {
        if abi::set_effective_context(id).is_err() {
            continue; // the stream is gone
        }
        let reason = DegradedReason::NoProviderAvailable;
        let resp = degraded_response(&error_form, api, None, false, reason, u64::from(id));
        let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // Its degraded counter and access-log reason come from its own context (the reply's
        // response headers pass through it).
        let _ = abi::send_local_response(resp.status, &headers, &resp.body, "llm_failover_degraded");
    }
}

//! Requests held at their headers until their body is in, for a degraded answer that must know
//! whether the client asked for a stream.
//!
//! With the Wasm filter's `allow_on_headers_stop_iteration: true` (plain Envoy, or Istio through
//! the EnvoyFilter in istio/) Envoy hands the held request's body to the filter as it arrives,
//! and the filter answers with the degraded message (JSON or SSE). Istio's WasmPlugin and
//! TrafficExtension cannot set that flag: Envoy then holds the body back, and a resumed request
//! would skip the filter. So the root context's tick answers a request still held after
//! [`GRACE_MS`] with the degraded answer's error form (503, `Retry-After`, the API's
//! `overloaded_error`), which is right for streaming and non-streaming requests alike.

use crate::config::{ClientApi as Api, DegradedMode, DegradedSettings};
use crate::degraded::{degraded_response, DegradedReason};
use crate::telemetry;
use proxy_wasm::hostcalls;
use std::cell::RefCell;

/// How long a request may wait for its body before the tick answers it.
pub const GRACE_MS: u64 = 150;

thread_local! {
    /// (context id, held since ms, API of the client).
    static WAITING: RefCell<Vec<(u32, u64, Api)>> = const { RefCell::new(Vec::new()) };
}

#[link(wasm_import_module = "env")]
extern "C" {
    // The SDK's send_http_response panics on an unexpected status; a held stream may be gone.
    #[link_name = "proxy_send_local_response"]
    fn send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
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
        if hostcalls::set_effective_context(id).is_err() {
            continue; // the stream is gone
        }
        let reason = DegradedReason::NoProviderAvailable;
        let resp = degraded_response(&error_form, api, None, false, reason, u64::from(id));
        let headers = serialize_headers(&resp.headers);
        // SAFETY: pointers and lengths of live buffers; the host copies them.
        let status = unsafe {
            send_local_response(
                resp.status,
                std::ptr::null(),
                0,
                resp.body.as_ptr(),
                resp.body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        if status == 0 {
            super::metrics::counter(telemetry::degraded(reason.as_str()), 1);
            let _ = hostcalls::set_property(vec!["llm_failover.degraded_reason"], Some(reason.as_str().as_bytes()));
        }
    }
}

/// The proxy-wasm map encoding: count, (key length, value length) pairs, then each key and
/// value followed by a NUL.
fn serialize_headers(headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

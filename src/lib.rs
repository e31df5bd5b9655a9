//! llm-failover: a proxy-wasm filter that keeps LLM traffic working when a provider degrades.
//!
//! Layout (each layer imports only those below it; nothing outside `host` knows proxy-wasm):
//! - `host`: the proxy-wasm contexts, shared data CAS loops, properties (Wasm only).
//! - [`plan`], [`config`], [`degraded`]: which provider serves a request; typed config;
//!   degraded answers.
//! - [`classify`], [`breaker`], [`providers`]: outcome classes; the breaker state machine;
//!   per-API stream knowledge.
//! - [`sse`], [`window`], [`request_peek`]: incremental SSE parsing; the rolling bucket window;
//!   a streaming look at the request body's `model` and `stream`.

pub mod breaker;
pub mod classify;
pub mod config;
pub mod degraded;
pub mod plan;
pub mod providers;
pub mod request_peek;
pub mod sse;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::start();
}}

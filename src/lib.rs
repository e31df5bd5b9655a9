//! llm-failover: a proxy-wasm filter that keeps LLM traffic working when a provider degrades.
//!
//! Layout (each layer imports only those below it; nothing outside `host` knows proxy-wasm):
//! - `host`: the proxy-wasm contexts, shared data CAS loops, properties (Wasm only).
//! - [`plan`], [`config`], [`degraded`]: which provider serves a request; typed config;
//!   degraded answers.
//! - [`classify`], [`breaker`], [`providers`]: outcome classes; the breaker state machine;
//!   per-API stream knowledge.
//! - [`sse`], [`window`], [`request_peek`], [`usage`]: incremental SSE parsing; the rolling
//!   bucket window; streaming looks at the request's `model`/`stream` and the answer's tokens.
//! - [`header_map`]: the host's header maps, read in place.
//! - [`telemetry`]: stat names and the per-request record behind stats and access-log fields;
//!   [`access_log`]: that record as the one FlatBuffers value Envoy's access log reads.

pub mod access_log;
pub mod attempt;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod config;
pub mod continuation;
pub mod degraded;
pub mod eventstream;
pub mod exchange;
pub mod header_map;
pub mod health;
pub mod plan;
pub mod providers;
pub mod request_peek;
pub mod request_rewrite;
pub mod response_rewrite;
pub mod sse;
pub mod telemetry;
pub mod translate;
pub mod usage;
pub mod validate;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::start();
}}

//! The thin host layer: the only code that talks to proxy-wasm. Its contexts pump host events
//! into the pure core (`exchange`, `attempt`) and turn the core's steps into host calls, all of
//! them through [`abi`], whose functions return the host's status instead of panicking (a panic
//! aborts the VM for every request on that worker).
//!
//! - [`root`]: configuration, the tick (success batches, the retry budget, held requests,
//!   stalls), one root per role: the downstream filter and the upstream (per-attempt) filter;
//! - [`filter`]: the downstream HTTP context of a request;
//! - [`upstream`]: the upstream HTTP context of one attempt (Envoy runs it once per attempt);
//! - [`registry`]: how an attempt finds its request's exchange (same VM, same worker);
//! - [`health`]: the core's `Health` and `Budget` over shared data; [`shared`]: the CAS loops;
//! - [`metrics`], [`props`], [`waiting`].

pub mod abi;
mod filter;
mod health;
mod metrics;
mod props;
mod registry;
mod root;
mod shared;
mod upstream;
mod waiting;

use proxy_wasm::types::LogLevel;

/// Registers the root context factory; called once per VM from `_initialize`.
pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::default()) });
}

/// Microseconds since the Unix epoch, from the host clock.
pub fn now_us() -> u64 {
    abi::get_current_time_ns().map(|ns| ns / 1000).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// A random u32 from WASI `random_get`; a fixed midpoint if the host cannot give one.
pub fn random_u32() -> u32 {
    getrandom::u32().unwrap_or(u32::MAX / 2)
}

/// A random u64 (ids of answers the filter writes).
pub fn random_u64() -> u64 {
    (u64::from(random_u32()) << 32) | u64::from(random_u32())
}

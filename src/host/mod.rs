//! The thin host layer: the only code that talks to proxy-wasm. It turns host events into
//! calls on the pure core and the core's decisions into host calls. Host calls that can fail
//! are made through `proxy_wasm::hostcalls` directly and their errors handled, never unwrapped.

mod filter;
mod metrics;
mod props;
mod root;
mod shared;
mod waiting;

use proxy_wasm::types::LogLevel;

/// Registers the root context factory; called once per VM from `_initialize`.
pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::default()) });
}

/// Microseconds since the Unix epoch, from the host clock.
pub fn now_us() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// A random u32 from WASI `random_get`; a fixed midpoint if the host cannot give one.
pub fn random_u32() -> u32 {
    getrandom::u32().unwrap_or(u32::MAX / 2)
}

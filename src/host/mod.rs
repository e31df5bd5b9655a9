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

/// Registers the logger and the root context factory; called once per VM from `_initialize`.
pub fn start() {
    // Our own logger over the raw ABI: the SDK's panics on an unexpected status of proxy_log.
    // (The host's level cannot be asked for here, in _initialize: root contexts ask at configure.)
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::default()) });
}

/// Formats only what the host will print: its level for the `wasm` component (read again at
/// each configuration).
pub fn set_log_level_from_host() {
    let level = match abi::get_log_level() {
        Ok(0) => log::LevelFilter::Trace,
        Ok(1) => log::LevelFilter::Debug,
        Ok(2) | Err(_) => log::LevelFilter::Info,
        Ok(3) => log::LevelFilter::Warn,
        Ok(_) => log::LevelFilter::Error,
    };
    log::set_max_level(level);
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Microseconds since the Unix epoch, from the host clock.
pub fn now_us() -> u64 {
    abi::get_current_time_ns().map(|ns| ns / 1000).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

thread_local! {
    /// This VM's generator state (see [`next_random`]); 0 until seeded.
    static RANDOM: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A per-VM generator (SplitMix64) seeded once from WASI `random_get`: one host call per VM
/// instead of one per request. Its numbers (answer ids, backoff jitter) must differ between
/// requests and VMs, not be secret.
fn next_random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        if x == 0 {
            abi::tally::count(abi::tally::HostFn::RandomGet);
            x = getrandom::u64().unwrap_or_else(|_| now_us() ^ 0x5DEE_CE66_D1CE_5EED) | 1;
        }
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A random u32 (backoff jitter).
pub fn random_u32() -> u32 {
    (next_random() >> 32) as u32
}

/// A random u64 (ids of answers the filter writes).
pub fn random_u64() -> u64 {
    next_random()
}

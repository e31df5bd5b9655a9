//! Envoy stats defined by the filter (under `wasmcustom.` in /stats; Prometheus drops that
//! prefix). Defined once per VM at configure time; every worker's VM defines the same names and
//! so shares the same counters. Gauges are only ever moved with increments, never set, because
//! a set from one worker would overwrite another's share.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::Cell;

#[derive(Clone, Copy, Default)]
struct Ids {
    cas_updates: u32,
    cas_retries: u32,
    cas_exhausted: u32,
    wasm_memory_bytes: u32,
}

thread_local! {
    static IDS: Cell<Option<Ids>> = const { Cell::new(None) };
    /// This VM's share of the memory gauge, to add only the growth.
    static MEMORY_REPORTED: Cell<u64> = const { Cell::new(0) };
}

fn define(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(u32::MAX)
}

/// Defines the metrics of this VM (idempotent: Envoy returns the same stat for the same name).
pub fn define_all() {
    if IDS.with(|c| c.get()).is_some() {
        return;
    }
    let ids = Ids {
        cas_updates: define(MetricType::Counter, "llm_failover.shared_data.updates"),
        cas_retries: define(MetricType::Counter, "llm_failover.shared_data.cas_retries"),
        cas_exhausted: define(MetricType::Counter, "llm_failover.shared_data.cas_exhausted"),
        wasm_memory_bytes: define(MetricType::Gauge, "llm_failover.wasm_memory_bytes"),
    };
    IDS.with(|c| c.set(Some(ids)));
}

fn add(pick: impl Fn(&Ids) -> u32, n: i64) {
    if let Some(ids) = IDS.with(|c| c.get()) {
        let id = pick(&ids);
        if id != u32::MAX && n != 0 {
            let _ = hostcalls::increment_metric(id, n);
        }
    }
}

/// One shared-data write that landed, after `retries` lost races; or one given up.
pub fn shared_update(retries: u32, exhausted: bool) {
    if exhausted {
        add(|i| i.cas_exhausted, 1);
    } else {
        add(|i| i.cas_updates, 1);
    }
    add(|i| i.cas_retries, i64::from(retries));
}

/// Adds this VM's linear-memory growth since the last report to the memory gauge.
pub fn report_memory() {
    #[cfg(target_arch = "wasm32")]
    let now = (core::arch::wasm32::memory_size(0) as u64) * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    let now = 0u64;
    let before = MEMORY_REPORTED.with(|c| c.replace(now));
    if now > before {
        add(|i| i.wasm_memory_bytes, i64::try_from(now - before).unwrap_or(0));
    }
}

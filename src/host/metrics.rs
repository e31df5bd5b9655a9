//! Envoy stats defined by the filter (under `wasmcustom.` in /stats; Prometheus drops that
//! prefix). Names come from `telemetry`; each is defined on first use in this VM and kept in a
//! small map. Every worker's VM defines the same names and so shares the same stats: counters
//! and histograms aggregate across workers, and gauges are only ever moved with increments,
//! never set, because a set from one worker would overwrite another's share.

use crate::telemetry;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

const NONE: u32 = u32::MAX;

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    /// Model tags this VM has handed out (bounded by telemetry::MAX_MODELS).
    static MODELS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// This VM's share of the memory gauge, to add only the growth.
    static MEMORY_REPORTED: Cell<u64> = const { Cell::new(0) };
}

fn id(kind: MetricType, name: String) -> u32 {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(&id) = ids.get(&name) {
            return id;
        }
        let id = hostcalls::define_metric(kind, &name).unwrap_or(NONE);
        ids.insert(name, id);
        id
    })
}

pub fn counter(name: String, n: u64) {
    let id = id(MetricType::Counter, name);
    if id != NONE && n > 0 {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn gauge_add(name: String, delta: i64) {
    let id = id(MetricType::Gauge, name);
    if id != NONE && delta != 0 {
        let _ = hostcalls::increment_metric(id, delta);
    }
}

pub fn histogram(name: String, value: u64) {
    let id = id(MetricType::Histogram, name);
    if id != NONE {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// The model's stat tag: sanitized, and `other` once this VM has seen MAX_MODELS names.
pub fn model_tag(model: Option<&str>) -> String {
    let tag = telemetry::sanitize_model(model);
    MODELS.with(|m| {
        let mut m = m.borrow_mut();
        if m.contains(&tag) {
            tag
        } else if m.len() < telemetry::MAX_MODELS {
            m.push(tag.clone());
            tag
        } else {
            "other".to_string()
        }
    })
}

/// Defines the stats every provider has from the start (so dashboards show zeros, not gaps).
pub fn define_provider(provider: &str) {
    gauge_add(telemetry::breaker_state(provider), 0);
}

/// One shared-data write that landed, after `retries` lost races; or one given up.
pub fn shared_update(retries: u32, exhausted: bool) {
    if exhausted {
        counter("llm_failover.shared_data.cas_exhausted".to_string(), 1);
    } else {
        counter("llm_failover.shared_data.updates".to_string(), 1);
    }
    counter("llm_failover.shared_data.cas_retries".to_string(), u64::from(retries));
}

/// Adds this VM's linear-memory growth since the last report to the memory gauge.
pub fn report_memory() {
    #[cfg(target_arch = "wasm32")]
    let now = (core::arch::wasm32::memory_size(0) as u64) * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    let now = 0u64;
    let before = MEMORY_REPORTED.with(|c| c.replace(now));
    if now > before {
        gauge_add("llm_failover.wasm_memory_bytes".to_string(), i64::try_from(now - before).unwrap_or(0));
    }
}

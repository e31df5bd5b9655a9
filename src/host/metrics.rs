//! Envoy stats defined by the filter (under `wasmcustom.` in /stats; Prometheus drops that
//! prefix). Names come from `telemetry`; each is defined on first use in this VM and kept in a
//! small map. Every worker's VM defines the same names and so shares the same stats: counters
//! and histograms aggregate across workers, and gauges are only ever moved with increments,
//! never set, because a set from one worker would overwrite another's share.
//!
//! Counter increments are summed in the VM and handed to Envoy by the tick ([`flush_counters`],
//! every 100 ms): a request makes no `increment_metric` call of its own (Envoy publishes stats
//! to its sinks every few seconds anyway). Histogram samples and gauge moves are made at once.

use super::abi;
use crate::classify::Outcome;
use crate::telemetry;
use proxy_wasm::types::MetricType;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

const NONE: u32 = u32::MAX;

/// The stats of one (provider, model), defined once per VM.
#[derive(Clone, Debug)]
pub struct RequestStats {
    requests: u32,
    duration: u32,
    ttft: u32,
    tpot: u32,
    tokens: [u32; 2],
    usage: [u32; 2],
    /// Outcome stats, defined on first use: (outcome name, id).
    outcomes: Vec<(&'static str, u32)>,
    provider: String,
    model: String,
}

impl RequestStats {
    fn new(provider: &str, model: &str) -> Self {
        let c = |n| id(MetricType::Counter, n);
        let h = |n| id(MetricType::Histogram, n);
        RequestStats {
            requests: c(telemetry::requests(provider, model)),
            duration: h(telemetry::request_duration(provider, model)),
            ttft: h(telemetry::time_to_first_token(provider, model)),
            tpot: h(telemetry::time_per_output_token(provider, model)),
            tokens: [c(telemetry::tokens(provider, model, "input")), c(telemetry::tokens(provider, model, "output"))],
            usage: [
                h(telemetry::token_usage(provider, model, "input")),
                h(telemetry::token_usage(provider, model, "output")),
            ],
            outcomes: Vec::new(),
            provider: provider.to_string(),
            model: model.to_string(),
        }
    }

    pub fn request(&mut self, outcome: Outcome) {
        add(self.requests, 1);
        let name = outcome.as_str();
        let id = match self.outcomes.iter().find(|(n, _)| *n == name) {
            Some(&(_, id)) => id,
            None => {
                let id = id(MetricType::Counter, telemetry::outcomes(&self.provider, &self.model, outcome));
                self.outcomes.push((name, id));
                id
            }
        };
        add(id, 1);
    }

    pub fn duration_ms(&self, v: u64) {
        record(self.duration, v);
    }
    pub fn ttft_ms(&self, v: u64) {
        record(self.ttft, v);
    }
    pub fn time_per_output_token_us(&self, v: u64) {
        record(self.tpot, v);
    }
    /// `kind` 0 = input, 1 = output.
    pub fn tokens(&self, kind: usize, n: u64) {
        if let (Some(&c), Some(&h)) = (self.tokens.get(kind), self.usage.get(kind)) {
            add(c, n);
            record(h, n);
        }
    }
}

fn add(id: u32, n: u64) {
    if id != NONE && n > 0 {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            match p.iter_mut().find(|(i, _)| *i == id) {
                Some((_, sum)) => *sum = sum.saturating_add(n),
                None => p.push((id, n)),
            }
        });
    }
}

/// Hands the counter increments summed since the last flush to Envoy (from the tick).
pub fn flush_counters() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for (id, n) in &pending {
        let _ = abi::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
    }
    // Keep the allocation for the next batch.
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_empty() {
            let mut v = pending;
            v.clear();
            *p = v;
        }
    });
}

fn record(id: u32, v: u64) {
    if id != NONE {
        let _ = abi::record_metric(id, v);
    }
}

/// Runs `f` on the stats of (provider, the client's `model` as a tag), defining them on first
/// use. A model seen before costs no allocation: its tag is matched, not built.
pub fn with_request_stats(provider: &str, model: Option<&str>, f: impl FnOnce(&mut RequestStats)) {
    let known = BY_PROVIDER_MODEL
        .with(|m| m.borrow().iter().position(|s| s.provider == provider && telemetry::is_model_tag(model, &s.model)));
    let idx = known.unwrap_or_else(|| {
        let tag = model_tag(model);
        BY_PROVIDER_MODEL.with(|m| {
            let mut m = m.borrow_mut();
            m.iter().position(|s| s.provider == provider && s.model == tag).unwrap_or_else(|| {
                m.push(RequestStats::new(provider, &tag));
                m.len() - 1
            })
        })
    });
    BY_PROVIDER_MODEL.with(|m| {
        if let Some(stats) = m.borrow_mut().get_mut(idx) {
            f(stats);
        }
    });
}

thread_local! {
    /// Counter increments not yet handed to Envoy: (metric id, sum).
    static PENDING: RefCell<Vec<(u32, u64)>> = const { RefCell::new(Vec::new()) };
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    /// Bounded: providers × (MAX_MODELS + 1).
    static BY_PROVIDER_MODEL: RefCell<Vec<RequestStats>> = const { RefCell::new(Vec::new()) };
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
        let id = abi::define_metric(kind, &name).unwrap_or(NONE);
        ids.insert(name, id);
        id
    })
}

pub fn counter(name: String, n: u64) {
    add(id(MetricType::Counter, name), n);
}

pub fn histogram(name: String, v: u64) {
    record(id(MetricType::Histogram, name), v);
}

pub fn gauge_add(name: String, delta: i64) {
    let id = id(MetricType::Gauge, name);
    if id != NONE && delta != 0 {
        let _ = abi::increment_metric(id, delta);
    }
}

/// The model's stat tag: sanitized, and `other` once this VM has seen MAX_MODELS names.
fn model_tag(model: Option<&str>) -> String {
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

/// With the `host-call-stats` feature: the host calls made since the last flush, as counters
/// `llm_failover.debug.host_calls.fn.<name>` (the flush's own calls are not counted).
#[cfg(feature = "host-call-stats")]
pub fn flush_host_calls() {
    let counts = abi::tally::take();
    for (name, n) in abi::tally::NAMES.iter().zip(counts) {
        if n > 0 {
            // At once, not batched: the tick's flush of real counters is counted, not this.
            let id = id(MetricType::Counter, format!("llm_failover.debug.host_calls.fn.{name}"));
            if id != NONE {
                let _ = abi::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
    let _ = abi::tally::take();
}

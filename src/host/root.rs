//! The root contexts, one per role of the module: the downstream filter (`root_id`
//! `llm-failover`, any name not ending in `upstream`) loads and validates the configuration once
//! per VM and shares it with the VM's other contexts; the upstream filter (a `root_id` ending in
//! `upstream`, e.g. `llm-failover-upstream`, same `vm_id`) runs each attempt with that same
//! configuration. The tick of every VM flushes the worker's batched successes, counted
//! requests and counter increments, answers requests held for a body that never came, and
//! resets stalled streams.

use super::filter::Filter;
use super::props::property_string;
use super::upstream::{reset_stalled, Upstream};
use super::{abi, metrics, registry, shared};
use crate::config::{self, Config};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;

/// The filter state the access-log record is set as (`wasm.llm_failover`).
pub const RECORD_PROPERTY: &str = "llm_failover";

/// Tick of every VM: flushes batched successes, answers held requests, resets stalls.
const TICK_MS: u32 = 100;

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
    upstream: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        super::set_log_level_from_host();
        let root_id = property_string(&["plugin_root_id"]).unwrap_or_default();
        if root_id.ends_with("upstream") {
            self.upstream = true;
            registry::set_upstream_filter();
            let _ = abi::set_tick_period_ms(TICK_MS);
            log::info!("upstream filter {root_id} ready: attempts use the configuration of the llm-failover filter of this vm_id");
            return true;
        }
        let bytes = if size == 0 {
            Vec::new()
        } else {
            abi::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default()
        };
        match config::parse(&bytes, |k| std::env::var(k).ok()) {
            Ok(cfg) => {
                // The access-log record's type, so that Envoy's CEL reads its fields.
                let args = crate::access_log::declaration(RECORD_PROPERTY);
                if let Err(e) = abi::call_foreign_function("declare_property", &args) {
                    log::warn!("cannot declare the access-log record wasm.{RECORD_PROPERTY} ({e:?}): %CEL(filter_state['wasm.{RECORD_PROPERTY}'].<field>)% will not read its fields");
                }
                shared::reset_pending();
                let _ = abi::set_tick_period_ms(TICK_MS);
                metrics::report_memory();
                for p in &cfg.providers {
                    shared::init(&p.state_key, &cfg.breaker);
                    metrics::define_provider(&p.name);
                }
                log::info!(
                    "configured {} providers, {} chains, routing header {}",
                    cfg.providers.len(),
                    cfg.chains.len(),
                    cfg.route_header
                );
                let cfg = Rc::new(cfg);
                registry::set_config(Some(cfg.clone()));
                self.config = Some(cfg);
                true
            }
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        metrics::flush_counters();
        let now = super::now_ms();
        for id in registry::stalled(now) {
            reset_stalled(id);
        }
        if self.upstream {
            return;
        }
        let Some(cfg) = self.config.as_deref() else { return };
        super::waiting::answer_overdue(now, &cfg.degraded);
        for (idx, p) in cfg.providers.iter().enumerate() {
            let batch = shared::take_pending(idx);
            shared::flush_successes(idx, &p.state_key, &cfg.breaker, now, batch);
        }
        shared::budget_flush(&cfg.retry_budget, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.upstream {
            return Some(Box::new(Upstream::new(context_id)));
        }
        Some(Box::new(Filter::new(self.config.clone(), context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

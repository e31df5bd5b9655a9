//! The root context: loads and validates the configuration once per VM, prepares the shared
//! data keys, and creates one filter context per HTTP stream.

use super::filter::Filter;
use super::{metrics, shared};
use crate::config::{self, Config};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;

/// Tick of every VM: flushes batched successes and resumes requests held for a degraded answer.
const TICK_MS: u64 = 100;

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = if size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default()
        };
        match config::parse(&bytes, |k| std::env::var(k).ok()) {
            Ok(cfg) => {
                shared::reset_pending();
                let _ = proxy_wasm::hostcalls::set_tick_period(std::time::Duration::from_millis(TICK_MS));
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
                self.config = Some(Rc::new(cfg));
                true
            }
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    /// Writes the successes this worker still holds, so an idle worker's share is not lost.
    fn on_tick(&mut self) {
        let Some(cfg) = self.config.as_deref() else { return };
        let now = super::now_ms();
        super::waiting::answer_overdue(now, &cfg.degraded);
        for (idx, p) in cfg.providers.iter().enumerate() {
            let batch = shared::take_pending(idx);
            shared::flush_successes(idx, &p.state_key, &cfg.breaker, now, batch);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter::new(self.config.clone(), context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

//! The floor probe of `make bench`: an HTTP filter that makes only the host calls llm-failover's
//! routing decision cannot do without, and nothing else (no body, no JSON, no breaker logic).
//! What it costs over the empty filter (bench/noop-filter) is the price of those unavoidable
//! host calls: the floor the filter itself is measured against.
//!
//! Per request, 14 calls of 9 host functions:
//! - request headers: read them all (`get_map`), read one shared-data key (`get_shared_data`;
//!   absent is fine), read the clock (`get_current_time_ns`), set the routing header, the
//!   provider's credential and `:authority` (3 × `set_map_value`), clear the route cache
//!   (`call_foreign_function("clear_route_cache")`);
//! - response headers: read `:status` (`get_map_value`), set `x-llm-provider` and
//!   `x-llm-model` (2 × `set_map_value`);
//! - log: read the clock (`get_current_time_ns`), one counter increment (`increment_metric`),
//!   one histogram record (`record_metric`), and the access-log record as one filter-state
//!   property (`set_property`, ~150 bytes).
//!
//! The two metrics are defined once, by the root context. Host errors are ignored (a probe).

use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

/// The request header the route's `cluster_header` reads (as llm-failover's).
const ROUTING_HEADER: &str = "x-llm-failover-cluster";
/// The shared-data key read once per request (as the filter reads its breaker state).
const STATE_KEY: &str = "llm_failover.floor.state";
/// The model named in `x-llm-model` when the request has no `x-llm-model` header.
const DEFAULT_MODEL: &str = "claude-opus-4-6";

#[derive(Clone, Copy, Default)]
struct Metrics {
    requests: Option<u32>,
    duration_ms: Option<u32>,
}

#[derive(Default)]
struct Root {
    metrics: Metrics,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.metrics = Metrics {
            requests: hostcalls::define_metric(MetricType::Counter, "llm_failover.floor.requests").ok(),
            duration_ms: hostcalls::define_metric(MetricType::Histogram, "llm_failover.floor.duration_ms").ok(),
        };
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            metrics: self.metrics,
            started: None,
            model: String::new(),
            status: String::new(),
            state_bytes: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    metrics: Metrics,
    started: Option<SystemTime>,
    model: String,
    status: String,
    state_bytes: usize,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        self.model =
            headers.into_iter().find(|(k, _)| k == "x-llm-model").map_or_else(|| DEFAULT_MODEL.to_string(), |(_, v)| v);
        if let Ok((Some(state), _)) = hostcalls::get_shared_data(STATE_KEY) {
            self.state_bytes = state.len();
        }
        self.started = hostcalls::get_current_time().ok();
        let req = MapType::HttpRequestHeaders;
        let _ = hostcalls::set_map_value(req, ROUTING_HEADER, Some("primary"));
        let _ = hostcalls::set_map_value(req, "x-api-key", Some("sk-ant-primary-bench"));
        let _ = hostcalls::set_map_value(req, ":authority", Some("api.anthropic.com"));
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let resp = MapType::HttpResponseHeaders;
        self.status = hostcalls::get_map_value(resp, ":status").ok().flatten().unwrap_or_default();
        let _ = hostcalls::set_map_value(resp, "x-llm-provider", Some("primary"));
        let _ = hostcalls::set_map_value(resp, "x-llm-model", Some(&self.model));
        Action::Continue
    }

    fn on_log(&mut self) {
        let elapsed = match (self.started, hostcalls::get_current_time()) {
            (Some(start), Ok(now)) => now.duration_since(start).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Some(id) = self.metrics.requests {
            let _ = hostcalls::increment_metric(id, 1);
        }
        if let Some(id) = self.metrics.duration_ms {
            let _ = hostcalls::record_metric(id, ms);
        }
        let outcome = if self.status.starts_with('2') { "success" } else { "failure" };
        let record = format!(
            "{{\"provider\":\"primary\",\"model\":\"{}\",\"attempts\":1,\"tried\":\"primary\",\
             \"status\":\"{}\",\"outcome\":\"{outcome}\",\"input_tokens\":0,\"output_tokens\":0,\
             \"ttft_ms\":{ms},\"state\":{}}}",
            self.model, self.status, self.state_bytes
        );
        let _ = hostcalls::set_property(vec!["llm_failover"], Some(record.as_bytes()));
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

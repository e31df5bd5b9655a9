//! What the contexts of one VM (one Envoy worker) share: the configuration the downstream root
//! parsed, whether the upstream (per-attempt) filter runs in this VM, the exchanges of requests in
//! flight (so that an attempt, an upstream context of its own, finds its request: the downstream
//! filter puts the key into the request's filter state, which Envoy's upstream filters read), the
//! attempts watched for stalls, and what this Envoy can do.

use super::props;
use crate::attempt::Attempt;
use crate::config::Config;
use crate::exchange::Exchange;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// The filter-state property that carries a request's exchange key to its attempts.
pub const EXCHANGE_PROPERTY: &str = "llm_failover.exchange";

pub type SharedExchange = Rc<RefCell<Exchange>>;
pub type SharedAttempt = Rc<RefCell<Attempt>>;

thread_local! {
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
    static UPSTREAM_FILTER: Cell<bool> = const { Cell::new(false) };
    static EXCHANGES: RefCell<HashMap<u32, SharedExchange>> = RefCell::new(HashMap::new());
    /// Streaming attempts with a stall deadline: (context id, attempt).
    static STALL_WATCH: RefCell<Vec<(u32, SharedAttempt)>> = const { RefCell::new(Vec::new()) };
    /// The attempt in flight of each registered exchange.
    static CURRENT: RefCell<HashMap<u32, SharedAttempt>> = RefCell::new(HashMap::new());
    /// Envoy lets a filter trigger a retry after a body was seen (None: not known yet).
    static RETRY_FROM_BODY: Cell<Option<bool>> = const { Cell::new(None) };
}

pub fn set_config(cfg: Option<Rc<Config>>) {
    CONFIG.with(|c| *c.borrow_mut() = cfg);
}

pub fn config() -> Option<Rc<Config>> {
    CONFIG.with(|c| c.borrow().clone())
}

pub fn set_upstream_filter() {
    UPSTREAM_FILTER.with(|u| u.set(true));
}

/// Does the upstream (per-attempt) filter run in this VM?
pub fn upstream_filter() -> bool {
    UPSTREAM_FILTER.with(Cell::get)
}

pub fn register(key: u32, ex: SharedExchange) {
    EXCHANGES.with(|m| m.borrow_mut().insert(key, ex));
}

pub fn unregister(key: u32) {
    EXCHANGES.with(|m| m.borrow_mut().remove(&key));
}

pub fn lookup(key: u32) -> Option<SharedExchange> {
    EXCHANGES.with(|m| m.borrow().get(&key).cloned())
}

/// The attempt of exchange `key` now in flight.
pub fn set_current(key: u32, attempt: SharedAttempt) {
    CURRENT.with(|m| m.borrow_mut().insert(key, attempt));
}

/// Exchange `key`'s attempt `attempt` is over.
pub fn clear_current(key: u32, attempt: &SharedAttempt) {
    CURRENT.with(|m| {
        let mut m = m.borrow_mut();
        if m.get(&key).is_some_and(|a| Rc::ptr_eq(a, attempt)) {
            m.remove(&key);
        }
    });
}

/// The attempt of exchange `key` still in flight, if any.
pub fn current(key: u32) -> Option<SharedAttempt> {
    CURRENT.with(|m| m.borrow().get(&key).cloned())
}

pub fn watch_stall(context_id: u32, attempt: SharedAttempt) {
    STALL_WATCH.with(|w| {
        let mut w = w.borrow_mut();
        if !w.iter().any(|(id, _)| *id == context_id) {
            w.push((context_id, attempt));
        }
    });
}

pub fn unwatch_stall(context_id: u32) {
    STALL_WATCH.with(|w| w.borrow_mut().retain(|(id, _)| *id != context_id));
}

/// The watched attempts that stalled by `now_ms` (they leave the watch).
pub fn stalled(now_ms: u64) -> Vec<u32> {
    STALL_WATCH.with(|w| {
        let mut w = w.borrow_mut();
        let mut out = Vec::new();
        w.retain(|(id, a)| {
            let Ok(mut a) = a.try_borrow_mut() else { return true };
            if a.on_tick(now_ms) {
                out.push(*id);
                return false;
            }
            a.watching_stall()
        });
        out
    })
}

/// Can this Envoy retry an attempt whose body the filter has seen (see
/// [`crate::attempt::envoy_retries_after_body`])? Read once per VM from the node's build version.
pub fn retry_from_body() -> bool {
    if let Some(v) = RETRY_FROM_BODY.with(Cell::get) {
        return v;
    }
    let major = props::property_u64(&["xds", "node", "user_agent_build_version", "version", "major_number"]);
    let minor = props::property_u64(&["xds", "node", "user_agent_build_version", "version", "minor_number"]);
    let v = crate::attempt::envoy_retries_after_body(major, minor);
    RETRY_FROM_BODY.with(|c| c.set(Some(v)));
    v
}

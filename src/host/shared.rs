//! Provider state in proxy-wasm shared data, agreed by all Envoy workers: one small binary
//! value per provider (breaker + window, 168 bytes) under a prefixed key, read without
//! locking and changed through a bounded compare-and-swap loop.
//!
//! Successes of requests admitted by a closed breaker are the bulk of all outcomes and change
//! nothing but the window's counts, so each worker batches them and writes them at most every
//! `Config::success_flush_ms` (100 ms), or together with its next failure, or on the next tick
//! (every 100 ms): another worker's successes reach the shared window within 100 ms.

use super::{abi, metrics};
use crate::breaker::{Peek, ProviderState};
use crate::budget::BudgetState;
use crate::config::{BreakerSettings, RetryBudget};
use proxy_wasm::types::Status;
use std::cell::RefCell;

/// Attempts before an update is given up (and logged) under heavy contention.
pub const MAX_CAS_ATTEMPTS: usize = 8;

thread_local! {
    /// Per provider index: successes not yet written, when the first and the last were counted.
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

/// The admission check of every request: reads the value and decodes only its header.
pub fn peek(key: &str, now_ms: u64, s: &BreakerSettings) -> Peek {
    match abi::get_shared_data(key) {
        Ok((Some(bytes), _)) => ProviderState::peek_encoded(&bytes, now_ms, s),
        _ => Peek::Admit,
    }
}

/// A worker's unwritten closed-state successes of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub count: u32,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// Counts one closed-state success of provider `idx`; returns the batch to write when due.
pub fn batch_success(idx: usize, now_ms: u64, flush_ms: u64) -> Option<Pending> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() <= idx {
            p.resize(idx + 1, Pending::default());
        }
        let slot = p.get_mut(idx)?;
        if slot.count == 0 {
            slot.first_ms = now_ms;
        }
        slot.count = slot.count.saturating_add(1);
        slot.last_ms = now_ms;
        (now_ms.saturating_sub(slot.first_ms) >= flush_ms).then(|| std::mem::take(slot))
    })
}

/// Takes provider `idx`'s unwritten successes (to write them now).
pub fn take_pending(idx: usize) -> Pending {
    PENDING.with(|p| p.borrow_mut().get_mut(idx).map(std::mem::take).unwrap_or_default())
}

/// Puts back successes whose write was given up.
pub fn restore_pending(idx: usize, back: Pending) {
    PENDING.with(|p| {
        if let Some(slot) = p.borrow_mut().get_mut(idx) {
            if slot.count == 0 {
                slot.first_ms = back.first_ms;
            }
            slot.count = slot.count.saturating_add(back.count);
            slot.last_ms = slot.last_ms.max(back.last_ms);
        }
    })
}

/// Forgets every batch (the configuration, and so the provider indexes, changed).
pub fn reset_pending() {
    PENDING.with(|p| p.borrow_mut().clear());
}

/// Writes a batch of successes of provider `idx`.
pub fn flush_successes(idx: usize, key: &str, s: &BreakerSettings, now_ms: u64, batch: Pending) {
    if batch.count > 0 && update(key, s, |st| (st.record_successes(now_ms, batch.count, batch.last_ms), true)).is_none()
    {
        restore_pending(idx, batch);
    }
}

/// Creates the key if it does not exist yet, so that later updates always carry a CAS.
pub fn init(key: &str, s: &BreakerSettings) {
    if let Ok((Some(bytes), _)) = abi::get_shared_data(key) {
        if !bytes.is_empty() {
            return;
        }
    }
    let _ = abi::set_shared_data(key, &ProviderState::new(s).encode(), None);
}

/// Runs `f` on the provider's state and writes the result back with CAS, retrying on a lost
/// race up to [`MAX_CAS_ATTEMPTS`] times. `f` returns its result and whether it changed the
/// state (an unchanged state is not written). `None` when every attempt lost the race.
pub fn update<R>(key: &str, s: &BreakerSettings, mut f: impl FnMut(&mut ProviderState) -> (R, bool)) -> Option<R> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = abi::get_shared_data(key).unwrap_or((None, None));
        let mut state = match &bytes {
            Some(b) if !b.is_empty() => ProviderState::decode(b, s),
            _ => ProviderState::new(s),
        };
        let (result, changed) = f(&mut state);
        if !changed {
            return Some(result);
        }
        match abi::set_shared_data(key, &state.encode(), cas) {
            Ok(()) => {
                metrics::shared_update(attempt as u32, false);
                return Some(result);
            }
            Err(Status::CasMismatch) => continue,
            Err(e) => {
                log::warn!("cannot write shared data {key}: {e:?}");
                return None;
            }
        }
    }
    metrics::shared_update(MAX_CAS_ATTEMPTS as u32, true);
    log::warn!("shared data {key} still contended after {MAX_CAS_ATTEMPTS} attempts; one update dropped");
    None
}

/// The shared-data key of the retry budget.
pub const BUDGET_KEY: &str = "llm-failover/v1/retry-budget";

thread_local! {
    /// Requests this worker counted for the budget but has not written yet.
    static BUDGET_PENDING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts one request for the retry budget (written with the next replay or tick).
pub fn budget_count_request() {
    BUDGET_PENDING.with(|c| c.set(c.get().saturating_add(1)));
}

/// Takes one replay from the retry budget (writing this worker's counted requests with it).
pub fn budget_try_replay(b: &RetryBudget, now_ms: u64) -> bool {
    let pending = BUDGET_PENDING.with(|c| c.replace(0));
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = abi::get_shared_data(BUDGET_KEY).unwrap_or((None, None));
        let mut st = bytes.as_deref().map_or_else(|| BudgetState::new(b), |v| BudgetState::decode(v, b));
        let granted = st.try_replay(now_ms, pending, b);
        if !granted && pending == 0 {
            return false;
        }
        match abi::set_shared_data(BUDGET_KEY, &st.encode(), cas) {
            Ok(()) => return granted,
            Err(Status::CasMismatch) => continue,
            Err(_) => break,
        }
    }
    BUDGET_PENDING.with(|c| c.set(c.get().saturating_add(pending)));
    false
}

/// Writes this worker's counted requests (from the tick).
pub fn budget_flush(b: &RetryBudget, now_ms: u64) {
    let pending = BUDGET_PENDING.with(|c| c.replace(0));
    if pending == 0 {
        return;
    }
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = abi::get_shared_data(BUDGET_KEY).unwrap_or((None, None));
        let mut st = bytes.as_deref().map_or_else(|| BudgetState::new(b), |v| BudgetState::decode(v, b));
        st.count_requests(now_ms, pending);
        match abi::set_shared_data(BUDGET_KEY, &st.encode(), cas) {
            Ok(()) => return,
            Err(Status::CasMismatch) => continue,
            Err(_) => break,
        }
    }
    BUDGET_PENDING.with(|c| c.set(c.get().saturating_add(pending)));
}

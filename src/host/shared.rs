//! Provider state in proxy-wasm shared data, agreed by all Envoy workers: one small binary
//! value per provider (breaker + window, 168 bytes) under a prefixed key, read without
//! locking and changed through a bounded compare-and-swap loop.
//!
//! Successes of requests admitted by a closed breaker are the bulk of all outcomes and change
//! nothing but the window's counts, so each worker batches them and writes them at most every
//! `Config::success_flush_ms` (100 ms), or together with its next failure, or on the next tick
//! (every 100 ms): another worker's successes reach the shared window within 100 ms.

use super::metrics;
use crate::breaker::{Peek, ProviderState};
use crate::config::BreakerSettings;
use proxy_wasm::hostcalls;
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
    match hostcalls::get_shared_data(key) {
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
    if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(key) {
        if !bytes.is_empty() {
            return;
        }
    }
    let _ = hostcalls::set_shared_data(key, Some(&ProviderState::new(s).encode()), None);
}

/// Runs `f` on the provider's state and writes the result back with CAS, retrying on a lost
/// race up to [`MAX_CAS_ATTEMPTS`] times. `f` returns its result and whether it changed the
/// state (an unchanged state is not written). `None` when every attempt lost the race.
pub fn update<R>(key: &str, s: &BreakerSettings, mut f: impl FnMut(&mut ProviderState) -> (R, bool)) -> Option<R> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let mut state = match &bytes {
            Some(b) => ProviderState::decode(b, s),
            None => ProviderState::new(s),
        };
        let (result, changed) = f(&mut state);
        if !changed {
            return Some(result);
        }
        match hostcalls::set_shared_data(key, Some(&state.encode()), cas) {
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

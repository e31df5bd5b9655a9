//! Provider state in proxy-wasm shared data, agreed by all Envoy workers: one small binary
//! value per provider (breaker + window, ~160 bytes) under a prefixed key, read without
//! locking and changed through a bounded compare-and-swap loop.

use crate::breaker::ProviderState;
use crate::config::BreakerSettings;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Attempts before an update is given up (and logged) under heavy contention.
pub const MAX_CAS_ATTEMPTS: usize = 8;

/// The provider's current state (fresh if the key is missing or unreadable).
pub fn read(key: &str, s: &BreakerSettings) -> ProviderState {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), _)) => ProviderState::decode(&bytes, s),
        _ => ProviderState::new(s),
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
    for _ in 0..MAX_CAS_ATTEMPTS {
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
            Ok(()) => return Some(result),
            Err(Status::CasMismatch) => continue,
            Err(e) => {
                log::warn!("cannot write shared data {key}: {e:?}");
                return None;
            }
        }
    }
    log::warn!("shared data {key} still contended after {MAX_CAS_ATTEMPTS} attempts; one update dropped");
    None
}

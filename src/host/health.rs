//! The core's [`Health`] and [`Budget`] over proxy-wasm shared data: admission reads a
//! provider's value (one host call in the common case), outcomes are written through the CAS
//! loop of [`super::shared`] (closed-state successes batched per worker), transitions are
//! logged once, by the worker that made them, and move the breaker stats.

use super::{metrics, random_u32, shared};
use crate::breaker::{Admission, Change, Peek, Rejection, State};
use crate::classify::{Health as H, Outcome};
use crate::config::Config;
use crate::health::{Budget, Health};
use crate::telemetry;

/// The breakers of `cfg`'s providers, in shared data.
pub struct SharedHealth<'a> {
    pub cfg: &'a Config,
}

impl Health for SharedHealth<'_> {
    fn peek(&mut self, provider: usize, now_ms: u64) -> Peek {
        match self.cfg.providers.get(provider) {
            Some(p) => shared::peek(&p.state_key, now_ms, &self.cfg.breaker),
            None => Peek::Reject(Rejection::Open),
        }
    }

    fn claim(&mut self, provider: usize, now_ms: u64) -> Admission {
        let Some(p) = self.cfg.providers.get(provider) else { return Admission::Reject(Rejection::Open) };
        let s = &self.cfg.breaker;
        match shared::peek(&p.state_key, now_ms, s) {
            Peek::Admit => Admission::Admit,
            Peek::Reject(r) => Admission::Reject(r),
            Peek::NeedsClaim => {
                let claimed = shared::update(&p.state_key, s, |st| {
                    let (admission, change) = st.claim(now_ms, s);
                    let changed = change.is_some() || admission == Admission::Probe;
                    ((admission, change), changed)
                });
                match claimed {
                    Some((admission, change)) => {
                        if let Some(c) = change {
                            log_change(&p.name, &c);
                        }
                        admission
                    }
                    None => Admission::Reject(Rejection::ProbesBusy),
                }
            }
        }
    }

    fn record(&mut self, provider: usize, outcome: Outcome, probe: bool, now_ms: u64) {
        let Some(p) = self.cfg.providers.get(provider) else { return };
        let s = &self.cfg.breaker;
        let health = outcome.health(s.default_retry_after_ms, s.max_retry_after_ms);
        if health == H::Success && !probe {
            // Admitted by a closed breaker: only the window's count changes; batch it.
            if let Some(batch) = shared::batch_success(provider, now_ms, self.cfg.success_flush_ms()) {
                shared::flush_successes(provider, &p.state_key, s, now_ms, batch);
            }
            return;
        }
        if health == H::Neutral && !probe {
            return;
        }
        let random = random_u32();
        let pending = shared::take_pending(provider);
        let change = shared::update(&p.state_key, s, |st| {
            st.record_successes(now_ms, pending.count, pending.last_ms);
            (st.record(now_ms, health, probe, s, random), true)
        });
        match change {
            Some(Some(c)) => log_change(&p.name, &c),
            Some(None) => {}
            None => shared::restore_pending(provider, pending),
        }
    }

    fn abandon_probe(&mut self, provider: usize) {
        let Some(p) = self.cfg.providers.get(provider) else { return };
        let _ = shared::update(&p.state_key, &self.cfg.breaker, |st| {
            st.abandon_probe();
            ((), true)
        });
    }
}

/// The retry budget in shared data.
pub struct SharedBudget<'a> {
    pub cfg: &'a Config,
}

impl Budget for SharedBudget<'_> {
    fn count_request(&mut self, _now_ms: u64) {
        shared::budget_count_request();
    }

    fn try_replay(&mut self, now_ms: u64) -> bool {
        let ok = shared::budget_try_replay(&self.cfg.retry_budget, now_ms);
        if !ok {
            metrics::counter("llm_failover.retry_budget_denied".to_string(), 1);
        }
        ok
    }
}

fn state_value(s: State) -> i64 {
    match s {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

/// Logs a change once (by the worker that made it) and moves the breaker stats with it.
pub fn log_change(provider: &str, change: &Change) {
    if let Change::Transition { from, to, .. } = change {
        metrics::gauge_add(telemetry::breaker_state(provider), state_value(*to) - state_value(*from));
        metrics::counter(telemetry::breaker_transitions(provider, to.as_str()), 1);
    }
    match change {
        Change::Transition { from, to, reason, open_ms } => match open_ms {
            Some(ms) => log::info!(
                "provider {provider} breaker {} -> {} ({reason}); open for {ms} ms",
                from.as_str(),
                to.as_str()
            ),
            None => log::info!("provider {provider} breaker {} -> {} ({reason})", from.as_str(), to.as_str()),
        },
        Change::RateLimited { cooldown_ms } => {
            log::info!("provider {provider} answered 429; skipped for {cooldown_ms} ms")
        }
    }
}

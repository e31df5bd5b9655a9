//! The two services the request lifecycle asks of its host, as small traits: the providers'
//! breakers ([`Health`]) and the retry budget ([`Budget`]). The host implements them over
//! proxy-wasm shared data (all workers agree); [`MemHealth`] and [`MemBudget`] implement them in
//! memory over the very same breaker and budget state machines, for native tests and benches.

use crate::breaker::{Admission, Change, Peek, ProviderState};
use crate::budget::BudgetState;
use crate::classify::Outcome;
use crate::config::{BreakerSettings, RetryBudget};

/// The breakers of the configured providers, by provider index.
pub trait Health {
    /// A read-only look: admit, reject, or "admission would claim a probe".
    fn peek(&mut self, provider: usize, now_ms: u64) -> Peek;
    /// Admission that may change the state (open → half-open, a probe slot).
    fn claim(&mut self, provider: usize, now_ms: u64) -> Admission;
    /// Records one attempt's outcome (`probe`: it was admitted as a half-open probe).
    fn record(&mut self, provider: usize, outcome: Outcome, probe: bool, now_ms: u64);
    /// A claimed probe that will not be sent frees its slot.
    fn abandon_probe(&mut self, provider: usize);
}

/// The retry budget shared by all requests.
pub trait Budget {
    /// Counts one request that may be replayed.
    fn count_request(&mut self, now_ms: u64);
    /// Takes one replay from the budget; false when it is spent.
    fn try_replay(&mut self, now_ms: u64) -> bool;
}

/// Breakers in memory (one per provider), with the transitions they made.
#[derive(Debug, Clone)]
pub struct MemHealth {
    pub settings: BreakerSettings,
    pub states: Vec<ProviderState>,
    /// (provider, change) in order.
    pub changes: Vec<(usize, Change)>,
    /// Every recorded outcome: (provider, outcome, probe).
    pub recorded: Vec<(usize, Outcome, bool)>,
    /// Draws the jitter of open periods.
    pub random: u32,
}

impl MemHealth {
    pub fn new(providers: usize, settings: &BreakerSettings) -> Self {
        MemHealth {
            settings: settings.clone(),
            states: (0..providers).map(|_| ProviderState::new(settings)).collect(),
            changes: Vec::new(),
            recorded: Vec::new(),
            random: u32::MAX / 2,
        }
    }
}

impl Health for MemHealth {
    fn peek(&mut self, provider: usize, now_ms: u64) -> Peek {
        self.states.get(provider).map_or(Peek::Admit, |s| s.peek(now_ms, &self.settings))
    }

    fn claim(&mut self, provider: usize, now_ms: u64) -> Admission {
        let Some(s) = self.states.get_mut(provider) else { return Admission::Admit };
        let (a, change) = s.claim(now_ms, &self.settings);
        if let Some(c) = change {
            self.changes.push((provider, c));
        }
        a
    }

    fn record(&mut self, provider: usize, outcome: Outcome, probe: bool, now_ms: u64) {
        self.recorded.push((provider, outcome, probe));
        let health = outcome.health(self.settings.default_retry_after_ms, self.settings.max_retry_after_ms);
        let Some(s) = self.states.get_mut(provider) else { return };
        if let Some(c) = s.record(now_ms, health, probe, &self.settings, self.random) {
            self.changes.push((provider, c));
        }
    }

    fn abandon_probe(&mut self, provider: usize) {
        if let Some(s) = self.states.get_mut(provider) {
            s.abandon_probe();
        }
    }
}

/// The retry budget in memory.
#[derive(Debug, Clone)]
pub struct MemBudget {
    pub settings: RetryBudget,
    pub state: BudgetState,
    pub denied: u32,
}

impl MemBudget {
    pub fn new(settings: &RetryBudget) -> Self {
        MemBudget { settings: settings.clone(), state: BudgetState::new(settings), denied: 0 }
    }
}

impl Budget for MemBudget {
    fn count_request(&mut self, now_ms: u64) {
        self.state.count_requests(now_ms, 1);
    }

    fn try_replay(&mut self, now_ms: u64) -> bool {
        let ok = self.state.try_replay(now_ms, 0, &self.settings);
        if !ok {
            self.denied += 1;
        }
        ok
    }
}

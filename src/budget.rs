//! The retry budget: replays (attempts after a request's first) may not exceed a share of the
//! requests seen over a rolling window, plus a small floor per second, so that a failing provider
//! cannot multiply the load on the next one. Where a replay is denied the request gets the
//! degraded answer instead.
//!
//! The state is one rolling [`Window`] kept in shared data (all workers agree): its "successes"
//! count requests, its "failures" count replays. Requests are counted per worker and written in
//! batches (the host flushes them with its tick), replays are checked and counted at once under
//! compare-and-swap. Pure: the host runs [`BudgetState::try_replay`] in its CAS loop.

use crate::config::RetryBudget;
use crate::window::Window;

/// Buckets of the budget window.
pub const BUCKETS: u32 = 10;
const VERSION: u8 = 1;

/// The budget's shared state: requests and replays over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetState {
    window: Window,
}

impl BudgetState {
    pub fn new(b: &RetryBudget) -> Self {
        BudgetState { window: Window::new(b.window_ms, BUCKETS) }
    }

    /// Counts `n` requests at `now_ms`.
    pub fn count_requests(&mut self, now_ms: u64, n: u32) {
        if n > 0 {
            self.window.record_n(now_ms, true, n);
        }
    }

    /// (requests, replays) in the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> (u32, u32) {
        self.window.totals(now_ms)
    }

    /// Takes one replay from the budget if the window allows it; `unflushed` requests counted by
    /// this worker but not yet written are added first (they are written with the replay).
    pub fn try_replay(&mut self, now_ms: u64, unflushed: u32, b: &RetryBudget) -> bool {
        self.count_requests(now_ms, unflushed);
        let (requests, replays) = self.totals(now_ms);
        if u64::from(replays) >= b.allowed(u64::from(requests)) {
            return false;
        }
        self.window.record(now_ms, false);
        true
    }

    /// The binary value kept in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.window.encoded_len());
        out.push(VERSION);
        self.window.encode(&mut out);
        out
    }

    /// Decodes a shared-data value; anything truncated, foreign or of another shape is a new,
    /// empty budget (never trusted).
    pub fn decode(bytes: &[u8], b: &RetryBudget) -> Self {
        match bytes.split_first() {
            Some((&VERSION, rest)) => match Window::decode(rest) {
                Some((w, tail)) if tail.is_empty() && w.has_shape(b.window_ms, BUCKETS) => BudgetState { window: w },
                _ => BudgetState::new(b),
            },
            _ => BudgetState::new(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_s: f64) -> RetryBudget {
        RetryBudget { ratio, min_per_s, window_ms: 10_000 }
    }

    #[test]
    fn replays_stay_within_the_share_of_requests_plus_the_floor() {
        let b = budget(0.2, 0.1); // floor: 1 replay per 10 s window
        let mut st = BudgetState::new(&b);
        st.count_requests(1_000, 100);
        let granted = (0..100).filter(|_| st.try_replay(1_000, 0, &b)).count();
        assert_eq!(granted, 21, "20 % of 100 requests plus a floor of 1");
        // More requests make room for more replays.
        st.count_requests(2_000, 10);
        assert!(st.try_replay(2_000, 0, &b));
        assert!(st.try_replay(2_000, 0, &b));
        assert!(!st.try_replay(2_000, 0, &b));
    }

    #[test]
    fn the_window_rolls_and_the_floor_lets_a_quiet_system_retry() {
        let b = budget(0.2, 0.2);
        let mut st = BudgetState::new(&b);
        assert!(st.try_replay(0, 0, &b));
        assert!(st.try_replay(0, 0, &b));
        assert!(!st.try_replay(0, 0, &b), "floor of 2 per window spent");
        // 11 s later the old replays are out of the window.
        assert!(st.try_replay(11_000, 0, &b));
    }

    #[test]
    fn unflushed_requests_count_before_the_check() {
        let b = budget(0.5, 0.0);
        let mut st = BudgetState::new(&b);
        assert!(!st.try_replay(500, 0, &b));
        assert!(st.try_replay(500, 4, &b));
        assert_eq!(st.totals(500), (4, 1));
    }

    #[test]
    fn codec_round_trips_and_refuses_foreign_values() {
        let b = budget(0.2, 1.0);
        let mut st = BudgetState::new(&b);
        st.count_requests(1234, 7);
        assert!(st.try_replay(1234, 0, &b));
        let bytes = st.encode();
        assert_eq!(BudgetState::decode(&bytes, &b), st);
        for bad in [&b""[..], &[9u8, 1, 2][..], &bytes[..bytes.len() - 1]] {
            assert_eq!(BudgetState::decode(bad, &b).totals(1234), (0, 0));
        }
        let other = RetryBudget { window_ms: 20_000, ..b.clone() };
        assert_eq!(BudgetState::decode(&bytes, &other).totals(1234), (0, 0));
    }
}

//! The circuit breaker of one provider, as a state machine over [`ProviderState`] (breaker
//! fields plus the rolling [`Window`]), and its compact binary encoding for shared data.
//!
//! Closed → Open when the window's failure ratio reaches the threshold with enough requests,
//! or after N consecutive failures. Open → HalfOpen when the (backed-off, jittered) cooldown has
//! elapsed and a request asks. HalfOpen admits a bounded number of probes; enough successful
//! probes close it, a failed probe re-opens it with a longer cooldown. A 429 puts the provider
//! on a cooldown of its own without counting as a failure.
//!
//! Every function is pure: the host layer runs them inside a CAS loop over shared data, so a
//! transition happens (and is logged) exactly once, by the worker whose write won.

use crate::classify::Health;
use crate::config::BreakerSettings;
use crate::window::{take_u16, take_u64, Window};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
    fn from_u8(v: u8) -> Option<State> {
        match v {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }
}

/// Why a state changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    FailureRatio { failures: u32, total: u32, threshold: f64 },
    ConsecutiveFailures(u32),
    CooldownElapsed,
    ProbeFailed,
    ProbesSucceeded(u32),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailureRatio { failures, total, threshold } => {
                write!(f, "{failures} of {total} requests failed in the window (threshold {threshold})")
            }
            Reason::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Reason::CooldownElapsed => write!(f, "open period elapsed, admitting probes"),
            Reason::ProbeFailed => write!(f, "a half-open probe failed"),
            Reason::ProbesSucceeded(n) => write!(f, "{n} half-open probes succeeded"),
        }
    }
}

/// A change worth logging (once, by the worker that made it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Transition {
        from: State,
        to: State,
        reason: Reason,
        open_ms: Option<u64>,
    },
    /// A 429 started a cooldown (not logged again while one is running).
    RateLimited {
        cooldown_ms: u64,
    },
}

/// What the breaker says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead, nothing to record.
    Admit,
    /// Half-open: go ahead as one of the limited probes (its outcome must be reported).
    Probe,
    Reject(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Open,
    ProbesBusy,
    RateLimited,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Open => "open",
            Rejection::ProbesBusy => "probes_busy",
            Rejection::RateLimited => "rate_limited",
        }
    }
}

/// A read-only look, enough for the common case without writing shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    Admit,
    /// Admission would change the state (open→half-open, claim a probe): use [`ProviderState::claim`].
    NeedsClaim,
    Reject(Rejection),
}

const VERSION: u8 = 2;
const HEADER_BYTES: usize = 42;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderState {
    pub state: State,
    /// Opens since the breaker last closed; the exponent of the backoff.
    pub trips: u8,
    pub consecutive_failures: u16,
    pub probes_in_flight: u16,
    pub probe_successes: u16,
    pub open_until_ms: u64,
    /// After this, probe slots still held are taken as abandoned.
    pub probe_deadline_ms: u64,
    pub rate_limited_until_ms: u64,
    /// When the last failure was recorded: a batch of successes older than that must not
    /// reset the consecutive-failure count.
    pub last_failure_ms: u64,
    pub window: Window,
}

impl ProviderState {
    pub fn new(s: &BreakerSettings) -> Self {
        ProviderState {
            state: State::Closed,
            trips: 0,
            consecutive_failures: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            open_until_ms: 0,
            probe_deadline_ms: 0,
            rate_limited_until_ms: 0,
            last_failure_ms: 0,
            window: Window::new(s.window_ms, s.buckets),
        }
    }

    /// Read-only admission check.
    pub fn peek(&self, now_ms: u64, s: &BreakerSettings) -> Peek {
        Head {
            state: self.state,
            probes_in_flight: self.probes_in_flight,
            open_until_ms: self.open_until_ms,
            probe_deadline_ms: self.probe_deadline_ms,
            rate_limited_until_ms: self.rate_limited_until_ms,
            last_failure_ms: self.last_failure_ms,
        }
        .peek(now_ms, s)
    }

    /// [`ProviderState::peek`] straight from the encoded bytes, reading only the fixed header
    /// (no allocation): the admission check every request makes. Unreadable bytes admit, as a
    /// fresh (closed) breaker would.
    pub fn peek_encoded(bytes: &[u8], now_ms: u64, s: &BreakerSettings) -> Peek {
        match Head::decode(bytes) {
            Some((head, _)) => head.peek(now_ms, s),
            None => Peek::Admit,
        }
    }

    /// Records `n` successes at once (a worker's batch of closed-state successes), the latest
    /// of which happened at `latest_ms`. They end a run of consecutive failures only if they
    /// came after the last failure (another worker may flush a batch late).
    pub fn record_successes(&mut self, now_ms: u64, n: u32, latest_ms: u64) {
        if n > 0 {
            self.window.record_n(now_ms, true, n);
            if latest_ms > self.last_failure_ms {
                self.consecutive_failures = 0;
            }
        }
    }

    /// Admission that may change state: moves open→half-open when the cooldown is over and
    /// claims a probe slot. Run it in a CAS loop.
    pub fn claim(&mut self, now_ms: u64, s: &BreakerSettings) -> (Admission, Option<Change>) {
        let mut change = None;
        match self.peek(now_ms, s) {
            Peek::Admit => return (Admission::Admit, None),
            Peek::Reject(r) => return (Admission::Reject(r), None),
            Peek::NeedsClaim => {}
        }
        if self.state == State::Open {
            self.state = State::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
            change = Some(Change::Transition {
                from: State::Open,
                to: State::HalfOpen,
                reason: Reason::CooldownElapsed,
                open_ms: None,
            });
        }
        if self.probes_in_flight > 0 && now_ms >= self.probe_deadline_ms {
            self.probes_in_flight = 0; // abandoned probes
        }
        if u32::from(self.probes_in_flight) >= s.half_open_probes {
            return (Admission::Reject(Rejection::ProbesBusy), change);
        }
        self.probes_in_flight += 1;
        self.probe_deadline_ms = now_ms.saturating_add(s.probe_timeout_ms);
        (Admission::Probe, change)
    }

    fn release_probe(&mut self) {
        self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
    }

    /// Records the outcome of one admitted request. `probe` says whether it was admitted as a
    /// half-open probe; `random` (any u32) draws the jitter of a new open period.
    pub fn record(
        &mut self,
        now_ms: u64,
        health: Health,
        probe: bool,
        s: &BreakerSettings,
        random: u32,
    ) -> Option<Change> {
        let probe = probe && self.state == State::HalfOpen;
        match health {
            Health::Neutral => {
                if probe {
                    self.release_probe();
                }
                None
            }
            Health::RateLimited { cooldown_ms } => {
                if probe {
                    self.release_probe();
                }
                let was_limited = now_ms < self.rate_limited_until_ms;
                let until = now_ms.saturating_add(cooldown_ms);
                if until > self.rate_limited_until_ms {
                    self.rate_limited_until_ms = until;
                }
                (!was_limited).then_some(Change::RateLimited { cooldown_ms })
            }
            Health::Success => {
                self.window.record(now_ms, true);
                self.consecutive_failures = 0;
                if !probe {
                    return None;
                }
                self.release_probe();
                self.probe_successes = self.probe_successes.saturating_add(1);
                if u32::from(self.probe_successes) < s.close_after_successes {
                    return None;
                }
                let n = u32::from(self.probe_successes);
                self.state = State::Closed;
                self.trips = 0;
                self.probes_in_flight = 0;
                self.probe_successes = 0;
                self.window.clear();
                Some(Change::Transition {
                    from: State::HalfOpen,
                    to: State::Closed,
                    reason: Reason::ProbesSucceeded(n),
                    open_ms: None,
                })
            }
            Health::Failure => {
                self.window.record(now_ms, false);
                self.last_failure_ms = self.last_failure_ms.max(now_ms);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                match self.state {
                    State::Closed => {
                        let (ok, failed) = self.window.totals(now_ms);
                        let total = ok.saturating_add(failed);
                        let reason =
                            if total >= s.min_requests && f64::from(failed) >= s.failure_ratio * f64::from(total) {
                                Reason::FailureRatio { failures: failed, total, threshold: s.failure_ratio }
                            } else if s.consecutive_failures > 0
                                && u32::from(self.consecutive_failures) >= s.consecutive_failures
                            {
                                Reason::ConsecutiveFailures(u32::from(self.consecutive_failures))
                            } else {
                                return None;
                            };
                        Some(self.open(now_ms, reason, s, random))
                    }
                    State::HalfOpen if probe => Some(self.open(now_ms, Reason::ProbeFailed, s, random)),
                    _ => None,
                }
            }
        }
    }

    /// A probe that ended without a verdict (client gone, filter reset) frees its slot.
    pub fn abandon_probe(&mut self) {
        if self.state == State::HalfOpen {
            self.release_probe();
        }
    }

    fn open(&mut self, now_ms: u64, reason: Reason, s: &BreakerSettings, random: u32) -> Change {
        let from = self.state;
        self.trips = self.trips.saturating_add(1);
        let ms = open_duration_ms(self.trips, s, random);
        self.state = State::Open;
        self.open_until_ms = now_ms.saturating_add(ms);
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.consecutive_failures = 0;
        Change::Transition { from, to: State::Open, reason, open_ms: Some(ms) }
    }

    /// Binary form: version, state, trips, 0, consecutive (u16), probes (u16), probe successes
    /// (u16), open_until, probe_deadline, rate_limited_until, last_failure (u64 each), then the
    /// window.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.window.encoded_len());
        out.extend_from_slice(&[VERSION, self.state.to_u8(), self.trips, 0]);
        out.extend_from_slice(&self.consecutive_failures.to_le_bytes());
        out.extend_from_slice(&self.probes_in_flight.to_le_bytes());
        out.extend_from_slice(&self.probe_successes.to_le_bytes());
        out.extend_from_slice(&self.open_until_ms.to_le_bytes());
        out.extend_from_slice(&self.probe_deadline_ms.to_le_bytes());
        out.extend_from_slice(&self.rate_limited_until_ms.to_le_bytes());
        out.extend_from_slice(&self.last_failure_ms.to_le_bytes());
        self.window.encode(&mut out);
        out
    }

    /// Reads the binary form. Empty, foreign or malformed bytes give a fresh state; a window of
    /// another shape (the config changed) is replaced while the breaker state is kept.
    pub fn decode(bytes: &[u8], s: &BreakerSettings) -> Self {
        Self::try_decode(bytes, s).unwrap_or_else(|| ProviderState::new(s))
    }

    fn try_decode(bytes: &[u8], s: &BreakerSettings) -> Option<Self> {
        let (head, rest) = Head::decode(bytes)?;
        let (trips, consecutive_failures, probe_successes) = head_extra(bytes)?;
        let window = match Window::decode(rest) {
            Some((w, _)) if w.has_shape(s.window_ms, s.buckets) => w,
            _ => Window::new(s.window_ms, s.buckets),
        };
        Some(ProviderState {
            state: head.state,
            trips,
            consecutive_failures,
            probes_in_flight: head.probes_in_flight,
            probe_successes,
            open_until_ms: head.open_until_ms,
            probe_deadline_ms: head.probe_deadline_ms,
            rate_limited_until_ms: head.rate_limited_until_ms,
            last_failure_ms: head.last_failure_ms,
            window,
        })
    }
}

/// The fields admission needs, read from the fixed-size header of the encoding.
struct Head {
    state: State,
    probes_in_flight: u16,
    open_until_ms: u64,
    probe_deadline_ms: u64,
    rate_limited_until_ms: u64,
    last_failure_ms: u64,
}

impl Head {
    fn decode(bytes: &[u8]) -> Option<(Head, &[u8])> {
        let (head, rest) = bytes.split_first_chunk::<4>()?;
        let [version, state, _trips, _] = *head;
        if version != VERSION {
            return None;
        }
        let state = State::from_u8(state)?;
        let (_consecutive, rest) = take_u16(rest)?;
        let (probes_in_flight, rest) = take_u16(rest)?;
        let (_probe_successes, rest) = take_u16(rest)?;
        let (open_until_ms, rest) = take_u64(rest)?;
        let (probe_deadline_ms, rest) = take_u64(rest)?;
        let (rate_limited_until_ms, rest) = take_u64(rest)?;
        let (last_failure_ms, rest) = take_u64(rest)?;
        let head =
            Head { state, probes_in_flight, open_until_ms, probe_deadline_ms, rate_limited_until_ms, last_failure_ms };
        Some((head, rest))
    }

    fn peek(&self, now_ms: u64, s: &BreakerSettings) -> Peek {
        if now_ms < self.rate_limited_until_ms {
            return Peek::Reject(Rejection::RateLimited);
        }
        match self.state {
            State::Closed => Peek::Admit,
            State::Open if now_ms < self.open_until_ms => Peek::Reject(Rejection::Open),
            State::Open => Peek::NeedsClaim,
            State::HalfOpen => {
                if u32::from(self.probes_in_flight) < s.half_open_probes || now_ms >= self.probe_deadline_ms {
                    Peek::NeedsClaim
                } else {
                    Peek::Reject(Rejection::ProbesBusy)
                }
            }
        }
    }
}

/// trips, consecutive failures and probe successes, which only updates need.
fn head_extra(bytes: &[u8]) -> Option<(u8, u16, u16)> {
    let trips = *bytes.get(2)?;
    let (consecutive, rest) = take_u16(bytes.get(4..)?)?;
    let (_probes, rest) = take_u16(rest)?;
    let (successes, _) = take_u16(rest)?;
    Some((trips, consecutive, successes))
}

/// Open period for the `trips`-th consecutive open: `open_ms × multiplier^(trips-1)`, spread by
/// ±jitter with `random`, capped at `max_open_ms`.
pub fn open_duration_ms(trips: u8, s: &BreakerSettings, random: u32) -> u64 {
    let exp = i32::from(trips.saturating_sub(1)).min(64);
    let base = (s.open_ms as f64) * s.backoff_multiplier.powi(exp);
    let unit = f64::from(random) / f64::from(u32::MAX); // 0..=1
    let factor = 1.0 + s.jitter * (2.0 * unit - 1.0);
    let ms = (base.min(s.max_open_ms as f64) * factor).round();
    (ms as u64).clamp(1, s.max_open_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window_ms: 10_000,
            buckets: 10,
            min_requests: 4,
            failure_ratio: 0.5,
            consecutive_failures: 3,
            open_ms: 1_000,
            max_open_ms: 8_000,
            backoff_multiplier: 2.0,
            jitter: 0.0,
            half_open_probes: 1,
            close_after_successes: 2,
            probe_timeout_ms: 5_000,
            default_retry_after_ms: 1_000,
            max_retry_after_ms: 10_000,
        }
    }

    const T: u64 = 1_800_000_000_000;
    const HALF: u32 = u32::MAX / 2;

    fn to(c: Option<Change>) -> Option<State> {
        match c {
            Some(Change::Transition { to, .. }) => Some(to),
            _ => None,
        }
    }

    #[test]
    fn consecutive_failures_open_the_breaker() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        assert_eq!(p.record(T, Health::Failure, false, &s, HALF), None);
        assert_eq!(p.record(T, Health::Failure, false, &s, HALF), None);
        let c = p.record(T, Health::Failure, false, &s, HALF);
        assert_eq!(
            c,
            Some(Change::Transition {
                from: State::Closed,
                to: State::Open,
                reason: Reason::ConsecutiveFailures(3),
                open_ms: Some(1000)
            })
        );
        assert_eq!(p.peek(T + 999, &s), Peek::Reject(Rejection::Open));
        assert_eq!(p.peek(T + 1000, &s), Peek::NeedsClaim);
    }

    #[test]
    fn failure_ratio_opens_with_enough_requests() {
        let mut s = settings();
        s.consecutive_failures = 0;
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Success, false, &s, HALF);
        }
        // 2 failures of 5: below 0.5.
        assert_eq!(p.record(T, Health::Failure, false, &s, HALF), None);
        assert_eq!(p.record(T, Health::Failure, false, &s, HALF), None);
        // 3 of 6 reaches it.
        let c = p.record(T, Health::Failure, false, &s, HALF);
        assert!(matches!(
            c,
            Some(Change::Transition { reason: Reason::FailureRatio { failures: 3, total: 6, .. }, .. })
        ));
    }

    #[test]
    fn too_few_requests_do_not_open_by_ratio() {
        let mut s = settings();
        s.consecutive_failures = 0;
        s.min_requests = 10;
        let mut p = ProviderState::new(&s);
        for _ in 0..9 {
            assert_eq!(p.record(T, Health::Failure, false, &s, HALF), None);
        }
        assert_eq!(to(p.record(T, Health::Failure, false, &s, HALF)), Some(State::Open));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut s = settings();
        s.consecutive_failures = 0;
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        for _ in 0..4 {
            p.record(T + 11_000, Health::Success, false, &s, HALF);
        }
        assert_eq!(p.record(T + 11_000, Health::Failure, false, &s, HALF), None);
        assert_eq!(p.state, State::Closed);
    }

    #[test]
    fn neutral_and_rate_limited_do_not_open_it() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        for _ in 0..100 {
            assert_eq!(p.record(T, Health::Neutral, false, &s, HALF), None);
        }
        assert_eq!(p.state, State::Closed);
        let c = p.record(T, Health::RateLimited { cooldown_ms: 2_000 }, false, &s, HALF);
        assert_eq!(c, Some(Change::RateLimited { cooldown_ms: 2_000 }));
        // A second 429 during the cooldown extends it silently.
        assert_eq!(p.record(T + 10, Health::RateLimited { cooldown_ms: 2_000 }, false, &s, HALF), None);
        assert_eq!(p.state, State::Closed);
        assert_eq!(p.peek(T + 1_500, &s), Peek::Reject(Rejection::RateLimited));
        assert_eq!(p.peek(T + 2_010, &s), Peek::Admit);
    }

    #[test]
    fn half_open_limits_probes_and_closes_after_successes() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        let t = T + 1_000;
        let (a, c) = p.claim(t, &s);
        assert_eq!(a, Admission::Probe);
        assert_eq!(to(c), Some(State::HalfOpen));
        // Only one probe at a time.
        assert_eq!(p.peek(t, &s), Peek::Reject(Rejection::ProbesBusy));
        assert_eq!(p.claim(t, &s).0, Admission::Reject(Rejection::ProbesBusy));
        assert_eq!(p.record(t + 5, Health::Success, true, &s, HALF), None);
        assert_eq!(p.claim(t + 6, &s).0, Admission::Probe);
        let c = p.record(t + 10, Health::Success, true, &s, HALF);
        assert_eq!(
            c,
            Some(Change::Transition {
                from: State::HalfOpen,
                to: State::Closed,
                reason: Reason::ProbesSucceeded(2),
                open_ms: None
            })
        );
        assert_eq!(p.peek(t + 11, &s), Peek::Admit);
        assert_eq!(p.window.totals(t + 11), (0, 0));
        assert_eq!(p.trips, 0);
    }

    #[test]
    fn failed_probe_reopens_with_backoff_up_to_the_cap() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        let mut t = T;
        let mut periods = vec![];
        for _ in 0..6 {
            t = p.open_until_ms;
            assert_eq!(p.claim(t, &s).0, Admission::Probe);
            match p.record(t, Health::Failure, true, &s, HALF) {
                Some(Change::Transition {
                    to: State::Open, reason: Reason::ProbeFailed, open_ms: Some(ms), ..
                }) => periods.push(ms),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(periods, vec![2_000, 4_000, 8_000, 8_000, 8_000, 8_000]);
        assert!(p.open_until_ms > t);
    }

    #[test]
    fn non_probe_outcomes_in_half_open_do_not_flip_it() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        p.claim(T + 1_000, &s);
        assert_eq!(p.record(T + 1_001, Health::Failure, false, &s, HALF), None);
        assert_eq!(p.record(T + 1_001, Health::Success, false, &s, HALF), None);
        assert_eq!(p.state, State::HalfOpen);
        assert_eq!(p.probes_in_flight, 1);
    }

    #[test]
    fn abandoned_probe_slots_free_up() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        let t = T + 1_000;
        assert_eq!(p.claim(t, &s).0, Admission::Probe);
        // Explicitly abandoned:
        p.abandon_probe();
        assert_eq!(p.claim(t, &s).0, Admission::Probe);
        // Or never reported: the slot frees after probe_timeout_ms.
        assert_eq!(p.claim(t + 4_999, &s).0, Admission::Reject(Rejection::ProbesBusy));
        assert_eq!(p.claim(t + 5_000, &s).0, Admission::Probe);
        // A neutral probe outcome frees the slot too.
        p.record(t + 5_001, Health::Neutral, true, &s, HALF);
        assert_eq!(p.probes_in_flight, 0);
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let mut s = settings();
        s.jitter = 0.2;
        assert_eq!(open_duration_ms(1, &s, 0), 800);
        assert_eq!(open_duration_ms(1, &s, u32::MAX), 1_200);
        assert_eq!(open_duration_ms(1, &s, HALF), 1_000);
        // Capped even with jitter.
        assert_eq!(open_duration_ms(10, &s, u32::MAX), 8_000);
        assert_eq!(open_duration_ms(255, &s, 0), 6_400);
    }

    #[test]
    fn peek_from_bytes_agrees_with_peek() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        let check =
            |p: &ProviderState, t: u64| assert_eq!(ProviderState::peek_encoded(&p.encode(), t, &s), p.peek(t, &s));
        check(&p, T);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        check(&p, T + 10);
        check(&p, T + 1_000);
        p.claim(T + 1_000, &s);
        check(&p, T + 1_001);
        check(&p, T + 7_000);
        p.record(T, Health::RateLimited { cooldown_ms: 50_000 }, false, &s, HALF);
        check(&p, T + 7_000);
        assert_eq!(ProviderState::peek_encoded(b"junk", T, &s), Peek::Admit);
    }

    #[test]
    fn batched_successes_count_and_reset_consecutive_failures() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        p.record(T, Health::Failure, false, &s, HALF);
        p.record(T, Health::Failure, false, &s, HALF);
        p.record_successes(T + 1, 40, T + 1);
        assert_eq!(p.window.totals(T + 1), (40, 2));
        assert_eq!(p.record(T + 2, Health::Failure, false, &s, HALF), None);
        assert_eq!(p.consecutive_failures, 1);
    }

    #[test]
    fn a_late_batch_of_older_successes_does_not_break_a_failure_run() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        p.record(T + 10, Health::Failure, false, &s, HALF);
        p.record(T + 20, Health::Failure, false, &s, HALF);
        // Another worker flushes successes that happened before those failures.
        p.record_successes(T + 30, 5, T + 5);
        assert_eq!(p.consecutive_failures, 2);
        assert!(matches!(
            p.record(T + 40, Health::Failure, false, &s, HALF),
            Some(Change::Transition { to: State::Open, .. })
        ));
    }

    #[test]
    fn encoding_roundtrip_and_size() {
        let s = settings();
        let mut p = ProviderState::new(&s);
        for i in 0..3 {
            p.record(T + i, Health::Failure, false, &s, HALF);
        }
        p.record(T, Health::RateLimited { cooldown_ms: 5 }, false, &s, HALF);
        let bytes = p.encode();
        assert_eq!(bytes.len(), 42 + 6 + 10 * 12);
        assert_eq!(ProviderState::decode(&bytes, &s), p);
    }

    #[test]
    fn decode_of_garbage_or_other_shape_is_safe() {
        let s = settings();
        assert_eq!(ProviderState::decode(b"", &s), ProviderState::new(&s));
        assert_eq!(ProviderState::decode(b"\x09garbage", &s), ProviderState::new(&s));
        let mut p = ProviderState::new(&s);
        for _ in 0..3 {
            p.record(T, Health::Failure, false, &s, HALF);
        }
        let bytes = p.encode();
        for n in 0..bytes.len() {
            let _ = ProviderState::decode(&bytes[..n], &s);
        }
        let mut other = s.clone();
        other.buckets = 5;
        let q = ProviderState::decode(&bytes, &other);
        assert_eq!(q.state, State::Open);
        assert_eq!(q.window, Window::new(10_000, 5));
    }
}

//! Classification of an upstream outcome: what one response says about its provider's health.
//!
//! Pure functions over what the host observed: the HTTP status, Envoy's
//! `response.code_details` (which tells an upstream answer from a reply Envoy made itself after
//! a timeout, reset or connection failure), `response.flags`, `Retry-After`, and the verdict of
//! the stream monitor for responses that began with 200. This is where a 529 becomes
//! [`Outcome::Overloaded`] and where a 400 is kept away from the breaker.

/// What happened to one attempt at a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer that ended well (for streams: ended with the API's terminal event).
    Success,
    /// A 5xx answered by the provider (other than 529).
    ServerError,
    /// 529 "overloaded" (Anthropic) or an overload error inside the stream.
    Overloaded,
    /// 429: the provider asks us to slow down; not a sign it is broken.
    RateLimited { retry_after_ms: Option<u64> },
    /// Envoy gave up waiting (route, per-try or idle timeout).
    Timeout,
    /// Envoy could not connect, or the cluster had no healthy host.
    ConnectFailure,
    /// The upstream reset or closed the connection before answering.
    Reset,
    /// A 200 stream that carried an error event.
    StreamError,
    /// A 200 response that ended (or was cut) without its terminal event.
    StreamTruncated,
    /// No content (a text or tool delta, or the JSON answer) within the first-token deadline.
    FirstTokenTimeout,
    /// A stream that went silent for longer than the stall deadline after its first content.
    Stalled,
    /// A 2xx answer that is not the API's answer (not JSON, not an answer object).
    InvalidAnswer,
    /// 4xx other than 429: the request's fault, says nothing about the provider.
    ClientError,
    /// The client went away before the answer was complete.
    ClientCancelled,
    /// Envoy refused locally for reasons of its own config (no cluster, overflow...).
    LocalError,
}

/// What an outcome means for the provider's window and breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Success,
    Failure,
    /// Cool the provider down for this long; neither success nor failure.
    RateLimited {
        cooldown_ms: u64,
    },
    /// Counts for nothing.
    Neutral,
}

impl Outcome {
    /// Stable lower-case name, for logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ServerError => "server_error",
            Outcome::Overloaded => "overloaded",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Timeout => "timeout",
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Reset => "reset",
            Outcome::StreamError => "stream_error",
            Outcome::StreamTruncated => "stream_truncated",
            Outcome::FirstTokenTimeout => "first_token_timeout",
            Outcome::Stalled => "stalled",
            Outcome::InvalidAnswer => "invalid_answer",
            Outcome::ClientError => "client_error",
            Outcome::ClientCancelled => "client_cancelled",
            Outcome::LocalError => "local_error",
        }
    }

    /// The health signal, with the 429 cooldown bounded by the configured default and cap.
    pub fn health(self, default_retry_after_ms: u64, max_retry_after_ms: u64) -> Health {
        match self {
            Outcome::Success => Health::Success,
            Outcome::ServerError
            | Outcome::Overloaded
            | Outcome::Timeout
            | Outcome::ConnectFailure
            | Outcome::Reset
            | Outcome::StreamError
            | Outcome::StreamTruncated
            | Outcome::FirstTokenTimeout
            | Outcome::Stalled
            | Outcome::InvalidAnswer => Health::Failure,
            Outcome::RateLimited { retry_after_ms } => Health::RateLimited {
                cooldown_ms: retry_after_ms.unwrap_or(default_retry_after_ms).min(max_retry_after_ms),
            },
            Outcome::ClientError | Outcome::ClientCancelled | Outcome::LocalError => Health::Neutral,
        }
    }

    /// Is this an answer the client should not see raw (a degraded answer serves it better)?
    pub fn is_provider_failure(self) -> bool {
        !matches!(self, Outcome::Success | Outcome::ClientError | Outcome::ClientCancelled)
    }
}

/// Classifies a response from its headers: status, Envoy's code details, and the
/// `retry-after-ms` / `retry-after` values. A 2xx is provisionally [`Outcome::Success`];
/// [`classify_end`] refines it when the body is done.
pub fn classify_headers(
    status: u16,
    code_details: Option<&str>,
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
) -> Outcome {
    if let Some(details) = code_details {
        if let Some(local) = classify_local_reply(details) {
            return local;
        }
    }
    match status {
        200..=299 => Outcome::Success,
        429 => Outcome::RateLimited { retry_after_ms: parse_retry_after(retry_after_ms, retry_after) },
        529 => Outcome::Overloaded,
        408 => Outcome::Timeout,
        500..=599 => Outcome::ServerError,
        400..=499 => Outcome::ClientError,
        // 1xx/3xx: nothing an LLM API answers; neither good nor bad.
        _ => Outcome::LocalError,
    }
}

/// Envoy's own replies, recognised by `response.code_details`. `None` means the status came
/// from the upstream (`via_upstream`) or the details say nothing we know.
fn classify_local_reply(details: &str) -> Option<Outcome> {
    if details == "via_upstream" {
        return None;
    }
    if let Some(rest) = details.strip_prefix("upstream_reset_before_response_started") {
        return Some(if is_connect_failure(rest) {
            Outcome::ConnectFailure
        } else if rest.contains("overflow") {
            Outcome::LocalError
        } else {
            Outcome::Reset
        });
    }
    if details.starts_with("upstream_reset_after_response_started") {
        return Some(Outcome::StreamTruncated);
    }
    if details.contains("timeout") {
        // upstream_response_timeout, upstream_per_try_timeout, stream_idle_timeout,
        // upstream_per_try_idle_timeout; but not the client's own overall timeout.
        if details.starts_with("request_overall_timeout") || details.starts_with("downstream") {
            return Some(Outcome::ClientCancelled);
        }
        return Some(Outcome::Timeout);
    }
    if details.starts_with("no_healthy_upstream") {
        return Some(Outcome::ConnectFailure);
    }
    if details.starts_with("downstream_") {
        return Some(Outcome::ClientCancelled);
    }
    if details.starts_with("cluster_not_found")
        || details.starts_with("route_not_found")
        || details.starts_with("maintenance_mode")
    {
        return Some(Outcome::LocalError);
    }
    None
}

/// Do Envoy's code details say it could not connect to the upstream?
pub fn is_connect_failure(details: &str) -> bool {
    details.contains("connection_failure")
        || details.contains("connect_error")
        || details.contains("connection_timeout")
}

/// `retry-after-ms` (OpenAI style, milliseconds) wins over `retry-after` (seconds, possibly
/// fractional). An HTTP-date or garbage yields `None`: the configured default applies.
pub fn parse_retry_after(retry_after_ms: Option<&str>, retry_after: Option<&str>) -> Option<u64> {
    let secs_to_ms = |v: f64| (v * 1000.0).ceil() as u64;
    let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    if let Some(ms) = retry_after_ms.and_then(parse) {
        return Some(ms.ceil() as u64);
    }
    retry_after.and_then(parse).map(secs_to_ms)
}

/// How a monitored 2xx stream ended, from the API's stream monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamVerdict {
    /// Not a stream, or not monitored.
    NotStream,
    /// The terminal event arrived.
    Complete,
    /// An error event arrived; `overloaded` when it said so.
    Error { overloaded: bool },
    /// Ended without the terminal event (or with bytes that are not the API's stream).
    Truncated,
}

/// Response flag bits of Envoy's StreamInfo that matter here.
pub mod flags {
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const STREAM_IDLE_TIMEOUT: u64 = 0x10000;
}

/// The final outcome once the response is over (or was cut): refines a 2xx from the headers
/// with the stream monitor's verdict, whether the body reached its end, and Envoy's flags.
pub fn classify_end(from_headers: Outcome, stream: StreamVerdict, body_ended: bool, response_flags: u64) -> Outcome {
    if from_headers != Outcome::Success {
        return from_headers;
    }
    match stream {
        StreamVerdict::Error { overloaded: true } => return Outcome::Overloaded,
        StreamVerdict::Error { overloaded: false } => return Outcome::StreamError,
        _ => {}
    }
    if !body_ended || stream == StreamVerdict::Truncated {
        if response_flags & flags::DOWNSTREAM_CONNECTION_TERMINATION != 0 {
            return Outcome::ClientCancelled;
        }
        if response_flags & (flags::STREAM_IDLE_TIMEOUT | flags::UPSTREAM_REQUEST_TIMEOUT) != 0 {
            return Outcome::Timeout;
        }
        return Outcome::StreamTruncated;
    }
    Outcome::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(status: u16) -> Outcome {
        classify_headers(status, Some("via_upstream"), None, None)
    }

    #[test]
    fn upstream_statuses() {
        assert_eq!(up(200), Outcome::Success);
        assert_eq!(up(500), Outcome::ServerError);
        assert_eq!(up(502), Outcome::ServerError);
        assert_eq!(up(503), Outcome::ServerError);
        assert_eq!(up(529), Outcome::Overloaded);
        assert_eq!(up(408), Outcome::Timeout);
    }

    #[test]
    fn client_errors_never_touch_the_breaker() {
        for s in [400, 401, 403, 404, 413, 422] {
            assert_eq!(up(s), Outcome::ClientError, "{s}");
            assert_eq!(up(s).health(5000, 60000), Health::Neutral, "{s}");
            assert!(!up(s).is_provider_failure());
        }
    }

    #[test]
    fn rate_limit_is_a_cooldown_not_a_failure() {
        let o = classify_headers(429, Some("via_upstream"), None, Some("7"));
        assert_eq!(o, Outcome::RateLimited { retry_after_ms: Some(7000) });
        assert_eq!(o.health(5000, 60000), Health::RateLimited { cooldown_ms: 7000 });
        let o = classify_headers(429, None, Some("1500"), Some("7"));
        assert_eq!(o.health(5000, 60000), Health::RateLimited { cooldown_ms: 1500 });
        let o = classify_headers(429, None, None, Some("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(o.health(5000, 60000), Health::RateLimited { cooldown_ms: 5000 });
        let o = classify_headers(429, None, None, Some("86400"));
        assert_eq!(o.health(5000, 60000), Health::RateLimited { cooldown_ms: 60000 });
        assert_eq!(parse_retry_after(None, Some("0.25")), Some(250));
        assert_eq!(parse_retry_after(None, Some("-3")), None);
    }

    #[test]
    fn envoy_local_replies_by_code_details() {
        let c = |d: &str| classify_headers(503, Some(d), None, None);
        assert_eq!(c("upstream_reset_before_response_started{connection_failure}"), Outcome::ConnectFailure);
        assert_eq!(
            c("upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}"),
            Outcome::ConnectFailure
        );
        assert_eq!(c("upstream_reset_before_response_started{connection_termination}"), Outcome::Reset);
        assert_eq!(c("upstream_reset_before_response_started{remote_reset}"), Outcome::Reset);
        assert_eq!(c("upstream_reset_before_response_started{overflow}"), Outcome::LocalError);
        assert_eq!(classify_headers(504, Some("upstream_response_timeout"), None, None), Outcome::Timeout);
        assert_eq!(c("stream_idle_timeout"), Outcome::Timeout);
        assert_eq!(c("upstream_per_try_timeout"), Outcome::Timeout);
        assert_eq!(c("no_healthy_upstream"), Outcome::ConnectFailure);
        assert_eq!(c("cluster_not_found"), Outcome::LocalError);
        assert_eq!(c("request_overall_timeout"), Outcome::ClientCancelled);
        // An upstream 503 is the provider's own answer.
        assert_eq!(c("via_upstream"), Outcome::ServerError);
        // Unknown details fall back to the status.
        assert_eq!(c("something_new"), Outcome::ServerError);
    }

    #[test]
    fn streams_refine_a_200() {
        let ok = Outcome::Success;
        assert_eq!(classify_end(ok, StreamVerdict::Complete, true, 0), Outcome::Success);
        assert_eq!(classify_end(ok, StreamVerdict::NotStream, true, 0), Outcome::Success);
        assert_eq!(classify_end(ok, StreamVerdict::Error { overloaded: true }, true, 0), Outcome::Overloaded);
        assert_eq!(classify_end(ok, StreamVerdict::Error { overloaded: false }, true, 0), Outcome::StreamError);
        assert_eq!(classify_end(ok, StreamVerdict::Truncated, true, 0), Outcome::StreamTruncated);
        assert_eq!(
            classify_end(ok, StreamVerdict::NotStream, false, flags::UPSTREAM_CONNECTION_TERMINATION),
            Outcome::StreamTruncated
        );
        assert_eq!(
            classify_end(ok, StreamVerdict::Truncated, false, flags::DOWNSTREAM_CONNECTION_TERMINATION),
            Outcome::ClientCancelled
        );
        assert_eq!(classify_end(ok, StreamVerdict::Truncated, false, flags::STREAM_IDLE_TIMEOUT), Outcome::Timeout);
        // A failure from the headers stays what it was.
        assert_eq!(classify_end(Outcome::ServerError, StreamVerdict::Complete, true, 0), Outcome::ServerError);
    }

    #[test]
    fn failures_and_their_health() {
        for o in [
            Outcome::ServerError,
            Outcome::Overloaded,
            Outcome::Timeout,
            Outcome::ConnectFailure,
            Outcome::Reset,
            Outcome::StreamError,
            Outcome::StreamTruncated,
        ] {
            assert_eq!(o.health(1, 2), Health::Failure, "{}", o.as_str());
            assert!(o.is_provider_failure());
        }
        assert_eq!(Outcome::Success.health(1, 2), Health::Success);
        assert_eq!(Outcome::LocalError.health(1, 2), Health::Neutral);
    }
}

//! One attempt at one provider, on the way back: what its answer says about the provider, what
//! the client must get of it, and whether the request must move on to the next provider.
//!
//! A sans-IO state machine: the host feeds it the attempt's response headers, body chunks, timer
//! ticks and end, and does what each step says (pass, hold, replace, let Envoy retry, answer
//! degraded, reset). With in-request failover (the upstream filter) an attempt *holds* the
//! answer until its first content (a text or tool delta, or the whole JSON answer): until then
//! nothing has reached the client, so a failure (a failure status, an error as the first event, a
//! stream that ends or stalls before any content, the first-token deadline) moves the request to
//! the next attempt. After the first content the stream flows through, translated event by event
//! when the client speaks another format, and a stream that ends before its terminal event ends
//! for the client with a well-formed error event in its format (never a clean close that looks
//! like a complete answer); a stall past the stall deadline resets the client's stream.

use crate::classify::{classify_end, classify_headers, flags, Outcome, StreamVerdict};
use crate::config::{Api, ClientApi};
use crate::degraded::DegradedReason;
use crate::plan::HeaderEdits;
use crate::response_rewrite::{translate_json, write_truncation_error, StreamPipeline};
use crate::translate::response;
use crate::usage::UsageScanner;

/// The response header by which an attempt asks Envoy to retry (listed in the route's
/// `retry_policy.retriable_headers`).
pub const RETRY_HEADER: &str = "x-llm-failover-retry";

/// An AWS event-stream answer (Bedrock's streams).
pub fn is_event_stream(content_type: &str) -> bool {
    content_type.starts_with("application/vnd.amazon.eventstream")
}

/// A streamed answer: SSE, or an AWS event stream.
pub fn is_stream(content_type: &str) -> bool {
    content_type.starts_with("text/event-stream") || is_event_stream(content_type)
}

/// The bytes of a JSON answer's chunk scanned for its usage (its end): a passed-through
/// answer longer than this is not copied into the VM whole.
pub const JSON_USAGE_TAIL: usize = 4096;

/// What an attempt is, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptSetup {
    /// 1 for the request's first attempt.
    pub number: u32,
    /// Index into the configured providers, its name and API.
    pub provider: usize,
    pub provider_name: String,
    pub api: Api,
    /// Position of the provider in the chain.
    pub position: usize,
    /// Admitted as a half-open probe.
    pub probe: bool,
    pub client: ClientApi,
    /// The client asked for a stream.
    pub stream: bool,
    /// The model the host is asked for (the client's, or the mapped one), if valid.
    pub model: Option<String>,
    /// An OpenAI client asked for the usage chunk.
    pub include_usage: bool,
    /// Another attempt may follow if this one fails before its first content.
    pub can_retry: bool,
    /// Envoy lets a filter trigger a retry after the body began (not on Envoy 1.36: it crashes).
    pub retry_from_body: bool,
    /// Hold the answer until its first content (in-request failover).
    pub hold: bool,
    /// The first-content deadline of this attempt (Envoy's per-try timeout enforces it).
    pub deadline_ms: Option<u64>,
    /// The longest silence allowed after the first content.
    pub stall_ms: Option<u64>,
    /// `x-llm-attempts` on the answer.
    pub announce_attempts: bool,
    /// Keep up to this many bytes of a stream for a continuation (None: no continuation).
    pub keep_for_continuation: Option<usize>,
    pub start_ms: u64,
    /// Seeds ids and timestamps of translated answers.
    pub created_s: u64,
    pub id_suffix: u64,
}

/// The response headers the attempt reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub content_type: &'a str,
    /// The body is compressed: it cannot be watched, only passed.
    pub encoded: bool,
    pub retry_after_ms: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    /// Envoy's `response.code_details` (only where the host can read it: downstream).
    pub details: Option<&'a str>,
}

/// The response headers an attempt reads, each looked up once, and which of them it needs:
/// `Retry-After` only for a 429, Envoy's code details only for an answer that is not a 2xx.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    pub status: u16,
    pub content_type: String,
    pub encoded: bool,
    pub retry_after_ms: Option<String>,
    pub retry_after: Option<String>,
    pub details: Option<String>,
}

impl ResponseHeaders {
    /// `header` looks a response header up; `details` reads Envoy's `response.code_details`
    /// (downstream only: an upstream filter passes `|| None`).
    pub fn read(header: &dyn Fn(&str) -> Option<String>, details: &dyn Fn() -> Option<String>) -> Self {
        let status = header(":status").and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(0);
        let ok = (200..300).contains(&status);
        let (retry_after_ms, retry_after) =
            if status == 429 { (header("retry-after-ms"), header("retry-after")) } else { (None, None) };
        ResponseHeaders {
            status,
            content_type: header("content-type").unwrap_or_default(),
            encoded: ok && header("content-encoding").is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")),
            retry_after_ms,
            retry_after,
            details: if ok { None } else { details() },
        }
    }

    pub fn head(&self) -> ResponseHead<'_> {
        ResponseHead {
            status: self.status,
            content_type: &self.content_type,
            encoded: self.encoded,
            retry_after_ms: self.retry_after_ms.as_deref(),
            retry_after: self.retry_after.as_deref(),
            details: self.details.as_deref(),
        }
    }
}

/// Can this Envoy retry an attempt whose body a filter has seen? Envoy 1.36 crashes when an
/// upstream filter triggers such a retry (seen in a probe: a segfault on 1.36.4, none on 1.37.0,
/// 1.39.3 and 1.40.0). Unknown versions are treated as unable.
pub fn envoy_retries_after_body(major: Option<u64>, minor: Option<u64>) -> bool {
    match (major, minor) {
        (Some(1), Some(m)) => m >= 37,
        (Some(m), _) => m > 1,
        _ => false,
    }
}

/// What to do with the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadStep {
    /// Let them go on, with these edits.
    Continue(HeaderEdits),
    /// Keep them (and the body) until a [`BodyStep`] releases them.
    Hold,
    /// Failed before anything reached the client: let Envoy retry (these edits add the marker).
    Retry(HeaderEdits),
}

/// What to do with the body so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    /// Let it go on: edit the held headers, and replace what the host gave (the whole buffered
    /// body after a hold, else this chunk) with `body` when set.
    Continue { headers: HeaderEdits, body: Option<Vec<u8>> },
    /// Keep buffering.
    Hold,
    /// Failed before anything reached the client: edit the held headers to make Envoy retry.
    Retry(HeaderEdits),
    /// Failed before anything reached the client and no attempt follows: answer degraded.
    Degrade(DegradedReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHeaders,
    /// A failure status: retried by Envoy, or passed on for the downstream to answer.
    Failed,
    /// A 4xx or a non-2xx answer passed to the client (buffered when it must be rewritten).
    PassingError {
        rewrite: bool,
    },
    /// A 2xx answer passed as it comes (JSON usage scanned).
    PassingJson,
    /// A compressed answer: passed blind.
    PassingBlind,
    /// A 2xx JSON answer buffered whole (held or translated).
    BufferingJson,
    /// A stream held until its first content.
    HoldingStream,
    /// Failed in the held body on Envoy 1.36: keep holding until the per-try timeout moves on.
    AwaitingTimeout,
    /// Released: flowing to the client.
    Streaming,
    /// Reset for a stall.
    Stalled,
    /// Broke after its first content, kept for a continuation: nothing more reaches the client.
    Cut,
    Done,
}

/// One attempt.
#[derive(Debug)]
pub struct Attempt {
    pub setup: AttemptSetup,
    phase: Phase,
    status: u16,
    /// Edits for the held headers, applied when they are released.
    pending: HeaderEdits,
    pipeline: Option<StreamPipeline>,
    usage: Option<UsageScanner>,
    /// Bytes of the buffered body already fed to the pipeline.
    fed: usize,
    /// What the client gets of the held body.
    held_out: Vec<u8>,
    outcome: Option<Outcome>,
    body_ended: bool,
    pub first_byte_ms: Option<u64>,
    pub first_content_ms: Option<u64>,
    last_activity_ms: u64,
    /// Non-empty chunks so far, and as the last tick saw them: a streaming attempt's activity is
    /// timed by the ticks, so no chunk needs a clock read of its own.
    activity: u64,
    ticked_activity: u64,
    /// The break of a kept stream, until the host takes it.
    cut: Option<StreamCut>,
}

/// A stream that broke after its first content, kept for a continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCut {
    /// The client-format bytes the client got (None: more than the limit).
    pub sent: Option<Vec<u8>>,
    /// The error event the client would have got at the break.
    pub tail: Vec<u8>,
    pub provider: usize,
    pub position: usize,
    pub include_usage: bool,
}

/// What an attempt did, once it is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptSummary {
    pub number: u32,
    pub provider: usize,
    pub position: usize,
    pub probe: bool,
    pub outcome: Outcome,
    pub model: Option<String>,
    pub first_content_ms: Option<u64>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Its answer (or part of it) reached the client.
    pub answered: bool,
    /// The answer was a stream (time to first token means something).
    pub streamed: bool,
}

impl Attempt {
    pub fn new(setup: AttemptSetup) -> Self {
        let start = setup.start_ms;
        Attempt {
            setup,
            phase: Phase::AwaitHeaders,
            status: 0,
            pending: HeaderEdits::new(),
            pipeline: None,
            usage: None,
            fed: 0,
            held_out: Vec::new(),
            outcome: None,
            body_ended: false,
            first_byte_ms: None,
            first_content_ms: None,
            last_activity_ms: start,
            activity: 0,
            ticked_activity: 0,
            cut: None,
        }
    }

    /// The break of a kept stream (once): the host hands it to the exchange.
    pub fn take_cut(&mut self) -> Option<StreamCut> {
        self.cut.take()
    }

    /// After a feed: did the kept stream just break?
    fn check_cut(&mut self) {
        if self.phase == Phase::Cut {
            return;
        }
        let Some(p) = self.pipeline.as_ref() else { return };
        let Some((sent, tail)) = p.cut() else { return };
        let outcome = match p.verdict() {
            StreamVerdict::Complete => Outcome::StreamTruncated,
            v => stream_outcome(v),
        };
        self.cut = Some(StreamCut {
            sent: sent.map(<[u8]>::to_vec),
            tail: tail.to_vec(),
            provider: self.setup.provider,
            position: self.setup.position,
            include_usage: self.setup.include_usage,
        });
        self.outcome = Some(outcome);
        self.phase = Phase::Cut;
    }

    /// The headers that name who answered.
    fn identity(&self) -> HeaderEdits {
        let mut e = vec![("x-llm-provider".to_string(), Some(self.setup.provider_name.clone()))];
        if let Some(m) = &self.setup.model {
            e.push(("x-llm-model".to_string(), Some(m.clone())));
        }
        if self.setup.announce_attempts {
            e.push(("x-llm-attempts".to_string(), Some(self.setup.number.to_string())));
        }
        e
    }

    fn retry_edits(&self, set_status: bool) -> HeaderEdits {
        let mut e = vec![(RETRY_HEADER.to_string(), Some(self.setup.number.to_string()))];
        if set_status {
            e.push((":status".to_string(), Some("503".to_string())));
        }
        e
    }

    /// The attempt's response headers.
    pub fn on_response_headers(&mut self, head: &ResponseHead<'_>, now_ms: u64) -> HeadStep {
        self.status = head.status;
        self.first_byte_ms = Some(now_ms);
        self.last_activity_ms = now_ms;
        let outcome = classify_headers(head.status, head.details, head.retry_after_ms, head.retry_after);
        let success = (200..300).contains(&head.status) && outcome == Outcome::Success;
        if !success && outcome != Outcome::ClientError {
            self.outcome = Some(outcome);
            self.phase = Phase::Failed;
            if self.setup.can_retry && outcome.is_provider_failure() {
                return HeadStep::Retry(self.retry_edits(false));
            }
            return HeadStep::Continue(HeaderEdits::new());
        }
        let mut edits = self.identity();
        if !success {
            // A client error: the client gets it, in its own format and as JSON.
            self.outcome = Some(Outcome::ClientError);
            let json = head.content_type.starts_with("application/json");
            let rewrite = self.setup.api.format() != self.setup.client
                || matches!(self.setup.api, Api::Bedrock | Api::Vertex)
                || !json;
            if rewrite {
                edits.push(("content-length".to_string(), None));
                edits.push(("content-type".to_string(), Some("application/json".to_string())));
            }
            self.phase = Phase::PassingError { rewrite };
            return HeadStep::Continue(edits);
        }
        if head.encoded {
            self.outcome = Some(Outcome::Success);
            self.phase = Phase::PassingBlind;
            self.first_content_ms = Some(now_ms);
            return HeadStep::Continue(edits);
        }
        let event_stream = is_event_stream(head.content_type);
        if event_stream || is_stream(head.content_type) {
            let p = StreamPipeline::new(
                self.setup.api,
                event_stream,
                self.setup.client,
                self.setup.include_usage,
                self.setup.created_s,
                self.setup.id_suffix,
            );
            edits.push(("content-length".to_string(), None));
            if event_stream {
                edits.push(("content-type".to_string(), Some("text/event-stream; charset=utf-8".to_string())));
            }
            let mut p = p;
            if let Some(limit) = self.setup.keep_for_continuation {
                p.keep_for_continuation(limit);
            }
            self.pipeline = Some(p);
            if self.setup.hold {
                self.phase = Phase::HoldingStream;
                self.pending = edits;
                return HeadStep::Hold;
            }
            self.phase = Phase::Streaming;
            self.first_content_ms = Some(now_ms);
            return HeadStep::Continue(edits);
        }
        self.usage = Some(UsageScanner::new());
        let translate = self.setup.api.format() != self.setup.client;
        if self.setup.hold || translate {
            edits.push(("content-length".to_string(), None));
            self.phase = Phase::BufferingJson;
            if self.setup.hold {
                self.pending = edits;
                return HeadStep::Hold;
            }
            return HeadStep::Continue(edits);
        }
        self.phase = Phase::PassingJson;
        self.first_content_ms = Some(now_ms);
        HeadStep::Continue(edits)
    }

    /// A failure seen in a held answer (nothing reached the client).
    fn fail_held(&mut self, outcome: Outcome) -> BodyStep {
        self.outcome = Some(outcome);
        if self.setup.can_retry && self.setup.retry_from_body {
            self.phase = Phase::Failed;
            return BodyStep::Retry(self.retry_edits(true));
        }
        if self.setup.can_retry && self.setup.deadline_ms.is_some() {
            // Envoy 1.36 cannot retry here without crashing; its per-try timeout will.
            self.phase = Phase::AwaitingTimeout;
            return BodyStep::Hold;
        }
        self.phase = Phase::Done;
        BodyStep::Degrade(DegradedReason::UpstreamFailure)
    }

    /// Where the host must read the body from for [`Attempt::on_response_body`] (an offset into
    /// what Envoy buffered), or None when this attempt does not look at the body now (so the
    /// host reads nothing).
    /// `size`: the bytes Envoy holds for this callback.
    pub fn reads_body_from(&mut self, size: usize, end: bool) -> Option<usize> {
        match self.phase {
            // Every API puts `usage` at the end of a JSON answer: only a chunk's last bytes are
            // read and scanned (the rest passes untouched).
            Phase::PassingJson => {
                let from = size.saturating_sub(JSON_USAGE_TAIL);
                if from > 0 {
                    if let Some(u) = self.usage.as_mut() {
                        u.gap();
                    }
                }
                Some(from)
            }
            Phase::Streaming => Some(0),
            // Only what came since the last look: the rest was fed already.
            Phase::HoldingStream => Some(self.fed),
            Phase::BufferingJson | Phase::PassingError { rewrite: true } => end.then_some(0),
            _ => None,
        }
    }

    /// The body so far, read from [`Attempt::reads_body_from`] (empty when that said None):
    /// while buffering the whole buffered body, while holding a stream what came since the last
    /// call, else this chunk. `end`: the body is complete.
    pub fn on_response_body(&mut self, data: &[u8], end: bool, now_ms: u64) -> BodyStep {
        let pass = BodyStep::Continue { headers: HeaderEdits::new(), body: None };
        if !data.is_empty() {
            self.activity += 1;
            if now_ms > 0 {
                self.last_activity_ms = now_ms;
            }
        }
        if end {
            self.body_ended = true;
        }
        match self.phase {
            Phase::AwaitHeaders | Phase::Failed | Phase::PassingBlind | Phase::Stalled | Phase::Done => pass,
            // Nothing after a break reaches the client.
            Phase::Cut => BodyStep::Continue { headers: HeaderEdits::new(), body: Some(Vec::new()) },
            Phase::AwaitingTimeout => BodyStep::Hold,
            Phase::PassingJson => {
                if let Some(u) = self.usage.as_mut() {
                    u.feed(data);
                }
                if end {
                    self.outcome = Some(Outcome::Success);
                }
                pass
            }
            Phase::PassingError { rewrite } => {
                if !rewrite {
                    return pass;
                }
                if !end {
                    return BodyStep::Hold;
                }
                BodyStep::Continue { headers: HeaderEdits::new(), body: Some(self.client_error_body(data)) }
            }
            Phase::BufferingJson => {
                if !end {
                    return BodyStep::Hold;
                }
                let held = self.setup.hold;
                if !is_answer(data) {
                    if held {
                        return self.fail_held(Outcome::InvalidAnswer);
                    }
                    self.outcome = Some(Outcome::InvalidAnswer);
                    return pass;
                }
                if let Some(u) = self.usage.as_mut() {
                    u.feed(data);
                }
                self.outcome = Some(Outcome::Success);
                self.first_content_ms = Some(now_ms);
                let body = translate_json(self.setup.api, self.setup.client, self.status, data, self.setup.created_s);
                let headers = std::mem::take(&mut self.pending);
                self.phase = Phase::Done;
                BodyStep::Continue { headers, body }
            }
            Phase::HoldingStream => {
                let new = data;
                self.fed = self.fed.saturating_add(data.len());
                let Some(p) = self.pipeline.as_mut() else { return pass };
                match p.feed(new, end) {
                    Some(out) => self.held_out.extend_from_slice(out),
                    None => self.held_out.extend_from_slice(new),
                }
                if !p.content_started() && p.failed() {
                    let outcome = stream_outcome(p.verdict());
                    return self.fail_held(outcome);
                }
                if p.content_started() {
                    self.first_content_ms = Some(now_ms);
                    self.phase = Phase::Streaming;
                    if end {
                        self.outcome = Some(stream_outcome(p.verdict()));
                    }
                    self.check_cut();
                    let headers = std::mem::take(&mut self.pending);
                    return BodyStep::Continue { headers, body: Some(std::mem::take(&mut self.held_out)) };
                }
                if end {
                    return self.fail_held(Outcome::StreamTruncated);
                }
                BodyStep::Hold
            }
            Phase::Streaming => {
                let Some(p) = self.pipeline.as_mut() else { return pass };
                let body = p.feed(data, end).map(<[u8]>::to_vec);
                if end {
                    self.outcome = Some(stream_outcome(p.verdict()));
                }
                self.check_cut();
                BodyStep::Continue { headers: HeaderEdits::new(), body }
            }
        }
    }

    /// A client error's body in the client's format (and as JSON, whatever the host sent).
    fn client_error_body(&self, data: &[u8]) -> Vec<u8> {
        let json = serde_json::from_slice::<serde_json::Value>(data).is_ok();
        if json {
            if let Some(b) = translate_json(self.setup.api, self.setup.client, self.status, data, self.setup.created_s)
            {
                return b;
            }
            return data.to_vec();
        }
        let message =
            format!("provider {} answered HTTP {} without a JSON body", self.setup.provider_name, self.status);
        let kind = response::anthropic_type_for_status(self.status);
        match self.setup.client {
            ClientApi::Anthropic => response::anthropic_error_body(kind, &message),
            ClientApi::OpenAi => response::openai_error_body(kind, self.status, &message),
        }
    }

    /// A timer tick: true when the stream has stalled past the stall deadline (the host resets
    /// the client's stream; the outcome is [`Outcome::Stalled`]).
    pub fn on_tick(&mut self, now_ms: u64) -> bool {
        let (Phase::Streaming, Some(stall)) = (self.phase, self.setup.stall_ms) else { return false };
        if self.body_ended || self.pipeline.as_ref().is_some_and(StreamPipeline::terminal_seen) {
            return false;
        }
        if self.activity != self.ticked_activity {
            // Chunks came since the last tick: active until now (within a tick).
            self.ticked_activity = self.activity;
            self.last_activity_ms = self.last_activity_ms.max(now_ms);
            return false;
        }
        if now_ms.saturating_sub(self.last_activity_ms) < stall {
            return false;
        }
        self.phase = Phase::Stalled;
        self.outcome = Some(Outcome::Stalled);
        true
    }

    /// Is the stream being watched for stalls?
    pub fn watching_stall(&self) -> bool {
        self.phase == Phase::Streaming && self.setup.stall_ms.is_some()
    }

    /// The attempt is over (`response_flags`: Envoy's flags of the request, if known;
    /// `transport_failure`: Envoy could not connect). Returns what it did.
    pub fn finish(&mut self, now_ms: u64, response_flags: u64, transport_failure: bool) -> AttemptSummary {
        let summary = self.summary(now_ms, response_flags, transport_failure);
        self.outcome = Some(summary.outcome);
        self.phase = Phase::Done;
        summary
    }

    /// What the attempt did, were it over now (the access log may be written a few
    /// milliseconds before the attempt's own end is reported).
    pub fn summary(&self, now_ms: u64, response_flags: u64, transport_failure: bool) -> AttemptSummary {
        let elapsed = now_ms.saturating_sub(self.setup.start_ms);
        // Envoy's per-try timer starts a little before this attempt's first callback; on a busy
        // worker that can be tens of ms (a full suite on 2 cores saw > 5 ms): 5 % of the deadline.
        let past_deadline = self.setup.deadline_ms.is_some_and(|d| elapsed.saturating_add((d / 20).max(5)) >= d);
        let client_gone = response_flags & flags::DOWNSTREAM_CONNECTION_TERMINATION != 0;
        let outcome = match (self.phase, self.outcome) {
            (Phase::Stalled, _) => Outcome::Stalled,
            (Phase::Cut, Some(o)) => o,
            (Phase::Streaming, _) => {
                let p = self.pipeline.as_ref();
                if p.is_some_and(StreamPipeline::terminal_seen) && !p.is_some_and(StreamPipeline::failed) {
                    // The answer is complete for the client, whoever closed first.
                    Outcome::Success
                } else if let Some(o) = self.outcome {
                    o
                } else {
                    let verdict = p.map_or(StreamVerdict::Truncated, StreamPipeline::verdict);
                    classify_end(Outcome::Success, verdict, self.body_ended, response_flags)
                }
            }
            (_, Some(o)) if self.body_ended || !matches!(o, Outcome::Success) => o,
            (Phase::AwaitHeaders, _) if transport_failure => Outcome::ConnectFailure,
            (Phase::AwaitHeaders | Phase::HoldingStream | Phase::BufferingJson, _) if past_deadline => {
                Outcome::FirstTokenTimeout
            }
            _ if client_gone => Outcome::ClientCancelled,
            (Phase::AwaitHeaders, _) => Outcome::Reset,
            (_, Some(o)) => o,
            _ => Outcome::StreamTruncated,
        };
        let (input_tokens, output_tokens) = match (&self.pipeline, &self.usage) {
            (Some(p), _) => p.usage(),
            (None, Some(u)) => (u.input_tokens(), u.output_tokens()),
            _ => (None, None),
        };
        AttemptSummary {
            number: self.setup.number,
            provider: self.setup.provider,
            position: self.setup.position,
            probe: self.setup.probe,
            outcome,
            model: self.setup.model.clone(),
            first_content_ms: self.first_content_ms,
            start_ms: self.setup.start_ms,
            end_ms: now_ms,
            input_tokens,
            output_tokens,
            answered: self.first_content_ms.is_some() || outcome == Outcome::ClientError,
            streamed: self.pipeline.is_some(),
        }
    }

    /// Does [`Attempt::on_response_body`] use the time for this chunk (`end`: the last)? When not,
    /// the host need not read the clock and passes 0.
    pub fn reads_clock(&self, end: bool) -> bool {
        match self.phase {
            Phase::HoldingStream => true,
            // A stall is timed by the ticks ([`Attempt::on_tick`]).
            Phase::BufferingJson => end,
            _ => false,
        }
    }

    /// Is the outcome decided whatever Envoy says of the request's end (its response flags,
    /// a transport failure)? Then the host need not read them.
    pub fn settled(&self) -> bool {
        (self.body_ended && self.outcome.is_some())
            || (self.phase == Phase::Streaming
                && self.pipeline.as_ref().is_some_and(|p| p.terminal_seen() && !p.failed()))
    }

    /// The outcome so far (None while undecided).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The error event to end a client's stream with (the attempt failed after its first
    /// content), in the client's format.
    pub fn truncation_event(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_truncation_error(self.setup.client, &mut out);
        out
    }
}

/// The outcome of a stream from its monitor's verdict.
fn stream_outcome(v: StreamVerdict) -> Outcome {
    match v {
        StreamVerdict::Complete | StreamVerdict::NotStream => Outcome::Success,
        StreamVerdict::Error { overloaded: true } => Outcome::Overloaded,
        StreamVerdict::Error { overloaded: false } => Outcome::StreamError,
        StreamVerdict::Truncated => Outcome::StreamTruncated,
    }
}

/// The top-level keys that tell an answer from an error, read without building the tree.
#[derive(serde::Deserialize)]
struct AnswerTop<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// Is this body a JSON answer object (well-formed, not an error, not something else)?
fn is_answer(body: &[u8]) -> bool {
    if !body.trim_ascii_start().starts_with(b"{") {
        return false;
    }
    match serde_json::from_slice::<AnswerTop<'_>>(body) {
        Ok(top) => top.kind.as_deref() != Some("error") && top.error.is_none(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n";
    const BLOCK: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    const DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
    const END: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    const ERROR: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

    fn setup(can_retry: bool, hold: bool) -> AttemptSetup {
        AttemptSetup {
            number: 1,
            provider: 0,
            provider_name: "primary".into(),
            api: Api::Anthropic,
            position: 0,
            probe: false,
            client: ClientApi::Anthropic,
            stream: true,
            model: Some("m".into()),
            include_usage: false,
            can_retry,
            retry_from_body: true,
            hold,
            deadline_ms: Some(1000),
            stall_ms: Some(500),
            announce_attempts: true,
            keep_for_continuation: None,
            start_ms: 0,
            created_s: 0,
            id_suffix: 1,
        }
    }

    fn sse() -> ResponseHead<'static> {
        ResponseHead { status: 200, content_type: "text/event-stream", ..Default::default() }
    }

    #[test]
    fn a_held_stream_is_released_at_its_first_content_delta_with_everything_before_it() {
        let mut a = Attempt::new(setup(true, true));
        assert_eq!(a.on_response_headers(&sse(), 10), HeadStep::Hold);
        // message_start and ping: no content yet.
        assert_eq!(a.on_response_body(START.as_bytes(), false, 20), BodyStep::Hold);
        assert_eq!(a.reads_body_from(2 * START.len(), false), Some(START.len()), "only what is new");
        let buffered = format!("{START}{BLOCK}{DELTA}");
        match a.on_response_body(format!("{BLOCK}{DELTA}").as_bytes(), false, 30) {
            BodyStep::Continue { headers, body } => {
                assert!(headers.contains(&("x-llm-provider".into(), Some("primary".into()))));
                assert!(headers.contains(&("x-llm-attempts".into(), Some("1".into()))));
                assert_eq!(body.unwrap(), buffered.as_bytes(), "the client gets every held byte, once");
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(a.first_content_ms, Some(30));
        // Then chunks flow as they come.
        assert_eq!(a.on_response_body(END.as_bytes(), true, 40), BodyStep::Continue { headers: vec![], body: None });
        assert!(a.settled());
        let s = a.finish(41, 0, false);
        assert_eq!(s.outcome, Outcome::Success);
        assert_eq!((s.input_tokens, s.output_tokens), (Some(12), Some(5)));
    }

    #[test]
    fn an_error_as_the_first_event_moves_on_or_waits_for_the_deadline_or_degrades() {
        let body = format!("{START}{ERROR}");
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        match a.on_response_body(body.as_bytes(), true, 20) {
            BodyStep::Retry(e) => {
                assert!(e.contains(&(":status".into(), Some("503".into()))));
                assert!(e.iter().any(|(k, _)| k == RETRY_HEADER));
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(a.finish(21, 0, false).outcome, Outcome::Overloaded);
        // Envoy 1.36: hold until the per-try timeout.
        let mut a = Attempt::new(AttemptSetup { retry_from_body: false, ..setup(true, true) });
        a.on_response_headers(&sse(), 10);
        assert_eq!(a.on_response_body(body.as_bytes(), true, 20), BodyStep::Hold);
        assert_eq!(a.finish(1000, 0, false).outcome, Outcome::Overloaded);
        // The last attempt: a degraded answer rather than a raw error.
        let mut a = Attempt::new(setup(false, true));
        a.on_response_headers(&sse(), 10);
        assert_eq!(a.on_response_body(body.as_bytes(), true, 20), BodyStep::Degrade(DegradedReason::UpstreamFailure));
    }

    #[test]
    fn failure_statuses_retry_at_the_headers_and_client_errors_pass() {
        for status in [500u16, 503, 529, 429, 408] {
            let mut a = Attempt::new(setup(true, true));
            let head = ResponseHead { status, content_type: "application/json", ..Default::default() };
            assert!(matches!(a.on_response_headers(&head, 5), HeadStep::Retry(_)), "{status}");
        }
        let mut a = Attempt::new(setup(false, true));
        let head = ResponseHead { status: 529, content_type: "application/json", ..Default::default() };
        assert_eq!(a.on_response_headers(&head, 5), HeadStep::Continue(vec![]), "last attempt: passed on");
        assert_eq!(a.finish(6, 0, false).outcome, Outcome::Overloaded);
        let mut a = Attempt::new(setup(true, true));
        let head = ResponseHead { status: 400, content_type: "application/json", ..Default::default() };
        assert!(matches!(a.on_response_headers(&head, 5), HeadStep::Continue(_)));
        assert_eq!(a.finish(6, 0, false).outcome, Outcome::ClientError);
    }

    #[test]
    fn an_html_error_page_reaches_the_client_as_json_in_its_format() {
        let mut a = Attempt::new(setup(true, true));
        let head = ResponseHead { status: 414, content_type: "text/html", ..Default::default() };
        let HeadStep::Continue(e) = a.on_response_headers(&head, 5) else { panic!() };
        assert!(e.contains(&("content-type".into(), Some("application/json".into()))));
        assert_eq!(a.on_response_body(b"<html>", false, 6), BodyStep::Hold);
        let BodyStep::Continue { body: Some(b), .. } = a.on_response_body(b"<html>too long</html>", true, 7) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "error");
        assert!(!String::from_utf8_lossy(&b).contains("<html>"));
    }

    #[test]
    fn a_stream_that_ends_before_content_is_a_failure_before_the_first_byte() {
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        assert!(matches!(a.on_response_body(START.as_bytes(), true, 20), BodyStep::Retry(_)));
        assert_eq!(a.finish(21, 0, false).outcome, Outcome::StreamTruncated);
    }

    #[test]
    fn a_stream_cut_after_content_ends_with_an_error_event_never_clean() {
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        let body = format!("{START}{BLOCK}{DELTA}");
        assert!(matches!(a.on_response_body(body.as_bytes(), false, 20), BodyStep::Continue { .. }));
        let BodyStep::Continue { body: Some(tail), .. } = a.on_response_body(b"", true, 30) else { panic!() };
        let tail = String::from_utf8(tail).unwrap();
        assert!(tail.starts_with("event: error\n"), "{tail}");
        assert_eq!(a.finish(31, 0, false).outcome, Outcome::StreamTruncated);
    }

    #[test]
    fn a_complete_stream_whose_client_left_first_is_a_success() {
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        let body = format!("{START}{BLOCK}{DELTA}{END}");
        a.on_response_body(body.as_bytes(), false, 20);
        let s = a.finish(25, flags::DOWNSTREAM_CONNECTION_TERMINATION, false);
        assert_eq!(s.outcome, Outcome::Success);
        // Without the terminal event it is the client's cancellation.
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        a.on_response_body(format!("{START}{BLOCK}{DELTA}").as_bytes(), false, 20);
        assert_eq!(a.finish(25, flags::DOWNSTREAM_CONNECTION_TERMINATION, false).outcome, Outcome::ClientCancelled);
    }

    #[test]
    fn a_stall_after_content_is_detected_on_the_tick() {
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        a.on_response_body(format!("{START}{BLOCK}{DELTA}").as_bytes(), false, 20);
        // Chunks came before this tick: the silence counts from it.
        assert!(!a.on_tick(300));
        assert!(!a.on_tick(700));
        assert!(a.on_tick(801));
        assert_eq!(a.finish(600, 0, false).outcome, Outcome::Stalled);
    }

    #[test]
    fn no_answer_within_the_deadline_is_a_first_token_timeout() {
        let mut a = Attempt::new(setup(true, true));
        assert_eq!(a.finish(1000, 0, false).outcome, Outcome::FirstTokenTimeout);
        let mut a = Attempt::new(setup(true, true));
        a.on_response_headers(&sse(), 10);
        a.on_response_body(START.as_bytes(), false, 20);
        assert_eq!(a.finish(1001, 0, false).outcome, Outcome::FirstTokenTimeout);
        let mut a = Attempt::new(setup(true, true));
        assert_eq!(a.finish(50, 0, true).outcome, Outcome::ConnectFailure);
        let mut a = Attempt::new(setup(true, true));
        assert_eq!(a.finish(50, 0, false).outcome, Outcome::Reset);
    }

    #[test]
    fn json_answers_are_held_whole_and_garbage_is_a_failure() {
        let head = ResponseHead { status: 200, content_type: "application/json", ..Default::default() };
        let mut a = Attempt::new(AttemptSetup { stream: false, ..setup(true, true) });
        assert_eq!(a.on_response_headers(&head, 5), HeadStep::Hold);
        assert_eq!(a.on_response_body(b"{\"type\":\"mess", false, 6), BodyStep::Hold);
        let body = br#"{"type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":4}}"#;
        let BodyStep::Continue { headers, body: None } = a.on_response_body(body, true, 7) else { panic!() };
        assert!(headers.iter().any(|(k, _)| k == "x-llm-provider"));
        assert_eq!(a.finish(8, 0, false).output_tokens, Some(4));
        let mut a = Attempt::new(AttemptSetup { stream: false, ..setup(true, true) });
        a.on_response_headers(&head, 5);
        assert!(matches!(a.on_response_body(b"{\"id\": \"msg_\xff", true, 6), BodyStep::Retry(_)));
        assert_eq!(a.finish(7, 0, false).outcome, Outcome::InvalidAnswer);
    }

    #[test]
    fn a_passed_json_answer_is_read_only_at_its_end() {
        let head = ResponseHead { status: 200, content_type: "application/json", ..Default::default() };
        let mut a = Attempt::new(AttemptSetup { stream: false, ..setup(false, false) });
        assert!(matches!(a.on_response_headers(&head, 5), HeadStep::Continue(_)));
        // A long answer in two chunks: of each only the last JSON_USAGE_TAIL bytes are read.
        let text = "x".repeat(3 * JSON_USAGE_TAIL);
        let first =
            format!(r#"{{"type":"message","usage":{{"input_tokens":99}},"content":[{{"type":"text","text":"{text}"#);
        let second = format!(r#"{text}"}}],"usage":{{"input_tokens":12,"output_tokens":5}}}}"#);
        for (chunk, end) in [(first.as_bytes(), false), (second.as_bytes(), true)] {
            let from = a.reads_body_from(chunk.len(), end).unwrap();
            assert_eq!(from, chunk.len() - JSON_USAGE_TAIL);
            let _ = a.on_response_body(&chunk[from..], end, 0);
        }
        let s = a.finish(9, 0, false);
        assert_eq!((s.outcome, s.input_tokens, s.output_tokens), (Outcome::Success, Some(12), Some(5)));
        // A short one is read whole.
        let mut a = Attempt::new(AttemptSetup { stream: false, ..setup(false, false) });
        a.on_response_headers(&head, 5);
        assert_eq!(a.reads_body_from(300, true), Some(0));
    }

    #[test]
    fn response_headers_are_read_as_the_attempt_needs_them() {
        let h = |m: &'static [(&'static str, &'static str)]| {
            move |n: &str| m.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        };
        let r = ResponseHeaders::read(&h(&[(":status", "429"), ("retry-after", "3")]), &|| Some("via_upstream".into()));
        assert_eq!((r.status, r.retry_after.as_deref(), r.details.as_deref()), (429, Some("3"), Some("via_upstream")));
        let r = ResponseHeaders::read(
            &h(&[
                (":status", "200"),
                ("retry-after", "3"),
                ("content-encoding", "gzip"),
                ("content-type", "text/event-stream"),
            ]),
            &|| panic!("no details for a 2xx"),
        );
        assert_eq!((r.retry_after, r.encoded, r.content_type.as_str()), (None, true, "text/event-stream"));
        let r = ResponseHeaders::read(&h(&[(":status", "200"), ("content-encoding", "identity")]), &|| None);
        assert!(!r.encoded);
        assert_eq!(ResponseHeaders::read(&h(&[(":status", "x")]), &|| None).status, 0);
    }

    #[test]
    fn only_envoy_1_37_and_later_retry_after_a_body() {
        assert!(!envoy_retries_after_body(Some(1), Some(36)));
        assert!(envoy_retries_after_body(Some(1), Some(37)));
        assert!(envoy_retries_after_body(Some(1), Some(40)));
        assert!(envoy_retries_after_body(Some(2), None));
        assert!(!envoy_retries_after_body(None, None));
    }

    #[test]
    fn without_hold_a_stream_flows_from_the_first_byte() {
        let mut a = Attempt::new(setup(false, false));
        assert!(matches!(a.on_response_headers(&sse(), 10), HeadStep::Continue(_)));
        assert_eq!(a.on_response_body(START.as_bytes(), false, 11), BodyStep::Continue { headers: vec![], body: None });
        // Cut before its terminal event: an error event is appended for the client.
        let BodyStep::Continue { body: Some(b), .. } = a.on_response_body(DELTA.as_bytes(), true, 12) else { panic!() };
        assert!(String::from_utf8(b).unwrap().ends_with("\n\n"));
    }
}

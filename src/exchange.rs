//! One request's lifecycle: a sans-IO state machine fed by the host (request headers, the
//! body, attempt starts and ends, the final response) that answers with steps (continue, hold,
//! forward with these edits, reply). It owns everything the request knows: its chain, the
//! client's original path and authority, the parsed body, the plan of providers, the attempts
//! made and their outcomes.
//!
//! Two modes:
//! - **Attempts** (the chain has `failover` or `deadlines`, and the upstream filter runs): the
//!   downstream side holds the request until its body is in, plans the providers, picks the
//!   failover cluster whose router retries walk the plan and sets the retry and per-try timeout
//!   headers; every attempt (the first and each retry) is then started by the upstream filter
//!   through [`Exchange::start_attempt`], which rewrites the request for the provider that attempt
//!   reached, or answers degraded when the retry budget, the attempts or the deadline are spent.
//! - **Single**: one attempt, run by the downstream filter itself ([`Exchange::single_attempt`]),
//!   as under an Istio `WasmPlugin` (no upstream filter): failover then takes effect for the
//!   requests that follow a breaker trip.

use crate::attempt::{Attempt, AttemptSetup, AttemptSummary, HeadStep, ResponseHead, RETRY_HEADER};
use crate::breaker::Admission;
use crate::classify::classify_headers;
use crate::classify::Outcome;
use crate::config::{Chain, ClientApi, Config, DegradedMode};
use crate::degraded::{degraded_response, DegradedReason, LocalResponse};
use crate::header_map::HeaderMap;
use crate::health::{Budget, Health};
use crate::plan::{self, attempt_edits, failover_cluster, HeaderEdits, Planned, Target, WalkInput};
use crate::request_rewrite::{refusal, rewrite, ClientRequest, Rewrite, Unfit};
use crate::telemetry::RequestRecord;
use crate::translate::Untranslatable;
use crate::validate;

/// Request header with which a client asks for same-model hosts only.
pub const SAME_MODEL_HEADER: &str = "x-llm-failover-same-model";

/// Request header with which a client picks the degraded form (`message` or `error`) over its
/// chain's.
pub const DEGRADED_FORM_HEADER: &str = "x-llm-degraded-form";

/// Envoy's per-request retry and timeout headers: a client never sets them (the filter removes
/// them), the filter sets its own.
pub const ENVOY_CONTROL_HEADERS: [&str; 8] = [
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Removes the Envoy retry and timeout headers the client sent, but for those `edits` set.
fn strip_envoy_controls(head: &RequestHead<'_>, edits: &mut HeaderEdits) {
    // One pass over the headers (not one lookup per control header).
    for (k, _) in head.headers.iter() {
        if !k.starts_with(b"x-envoy-") {
            continue;
        }
        let Some(h) = ENVOY_CONTROL_HEADERS.iter().find(|h| h.as_bytes() == k) else { continue };
        if !edits.iter().any(|(e, _)| e == h) {
            edits.push((h.to_string(), None));
        }
    }
}

/// What the host must do next with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing for the filter to do: let it go.
    Continue,
    /// Keep it until its whole body is in.
    Hold,
    /// Send it on with these header edits (and this body), then clear the route cache.
    Forward { headers: HeaderEdits, body: Option<Vec<u8>> },
    /// Answer the client now.
    Reply(LocalResponse),
}

/// What the downstream filter does with the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Let them go on, with these edits.
    Pass(HeaderEdits),
    /// Keep them until the body says (single mode).
    Hold,
    /// Answer the client with this instead.
    Reply(LocalResponse),
}

/// How an attempt starts (upstream side).
#[derive(Debug)]
pub enum Start {
    /// Send it: apply these edits (and this body) and watch the answer with `attempt`.
    Go { attempt: Box<Attempt>, headers: HeaderEdits, body: Option<Vec<u8>> },
    /// Do not send it: answer the client with this instead.
    Reply(LocalResponse),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Attempts,
}

/// Why a request gets no replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReplay {
    /// Its body is larger than `failover.max_replay_bytes`.
    BodyTooLarge,
}

/// The request's headers, as the host read them (one call for the whole map).
pub struct RequestHead<'a> {
    pub headers: &'a HeaderMap,
    pub end_of_stream: bool,
}

impl RequestHead<'_> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
    pub fn has(&self, name: &str) -> bool {
        self.headers.has(name)
    }
}

/// One request.
#[derive(Debug)]
pub struct Exchange {
    pub chain: usize,
    pub client: ClientApi,
    pub mode: Mode,
    pub start_ms: u64,
    pub path: String,
    pub authority: Option<String>,
    pub same_model_only: bool,
    betas: Option<String>,
    /// The client's body (when it was read) and, once a rewrite needed it, its parsed form.
    body: Vec<u8>,
    parsed: Option<Result<ClientRequest, validate::BadRequest>>,
    /// The client's model, when valid.
    pub model: Option<String>,
    pub stream: bool,
    pub plan: Vec<Planned>,
    /// Rewritten requests, by provider (computed once, for the attempts that need them).
    rewrites: Vec<(usize, Rewrite)>,
    /// Attempts Envoy may make (the first included).
    pub max_attempts: u32,
    pub attempts_started: u32,
    pub summaries: Vec<AttemptSummary>,
    pub no_replay: Option<NoReplay>,
    /// The body has been read (the walk may look at the model).
    body_read: bool,
    /// A local reply went to the client (from either side).
    pub replied: bool,
    pub degraded: Option<DegradedReason>,
    /// An answer came back without the upstream filter having started an attempt.
    pub upstream_filter_missing: bool,
    /// Why a request was refused with a 400 by the filter itself.
    pub refused: Option<&'static str>,
    /// The attempt run by the downstream filter (single mode).
    pub single: Option<Attempt>,
    id_suffix: u64,
    /// The degraded form the client asked for.
    degraded_form: Option<DegradedMode>,
    /// The body copy of a request routed at its headers grew past its limit.
    body_over: bool,
    /// The provider and chain position of the last attempt started.
    last_started: Option<(usize, usize)>,
    /// The final response was looked at for a context overflow.
    overflow_checked: bool,
    /// The prompt was too long for the provider that answered.
    pub context_overflow: bool,
    overflow_call: Option<overflow::OverflowCall>,
    /// The continuation of a stream that broke after its first content.
    pub resume: Option<resume::Resume>,
}

impl Exchange {
    /// A request of chain `chain` arrives (`now_ms`; `id_suffix` seeds answer ids).
    pub fn new(
        cfg: &Config,
        chain: usize,
        head: &RequestHead<'_>,
        upstream_filter: bool,
        now_ms: u64,
        id_suffix: u64,
    ) -> Self {
        let c = cfg.chains.get(chain);
        let attempts = upstream_filter && c.is_some_and(Chain::uses_attempts);
        Exchange {
            chain,
            client: c.map_or(ClientApi::Anthropic, |c| c.client_api),
            mode: if attempts { Mode::Attempts } else { Mode::Single },
            start_ms: now_ms,
            path: head.get(":path").unwrap_or("/").to_string(),
            authority: head.get(":authority").map(str::to_string),
            same_model_only: head.get(SAME_MODEL_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("required")),
            betas: head.get("anthropic-beta").map(str::to_string),
            body: Vec::new(),
            parsed: None,
            model: None,
            stream: false,
            plan: Vec::new(),
            rewrites: Vec::new(),
            max_attempts: 1,
            attempts_started: 0,
            summaries: Vec::new(),
            no_replay: None,
            body_read: false,
            replied: false,
            degraded: None,
            refused: None,
            upstream_filter_missing: false,
            single: None,
            id_suffix,
            degraded_form: head.get(DEGRADED_FORM_HEADER).and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                "message" => Some(DegradedMode::Message),
                "error" => Some(DegradedMode::Error),
                _ => None,
            }),
            resume: None,
            body_over: false,
            last_started: None,
            overflow_checked: false,
            context_overflow: false,
            overflow_call: None,
        }
    }

    /// The client's body is at hand (read, or copied as it flowed).
    fn body_available(&self) -> bool {
        !self.body.is_empty() && !self.body_over
    }

    /// The degraded form of this request: the client's choice, else its chain's, else the
    /// config's.
    pub fn degraded_mode(&self, cfg: &Config) -> DegradedMode {
        self.degraded_form.or_else(|| self.chain(cfg).and_then(|c| c.degraded_mode)).unwrap_or(cfg.degraded.mode)
    }

    fn chain<'c>(&self, cfg: &'c Config) -> Option<&'c Chain> {
        cfg.chains.get(self.chain)
    }

    /// The request headers. `content_length` is the declared body size, if any.
    pub fn on_request_headers(&mut self, cfg: &Config, head: &RequestHead<'_>, health: &mut dyn Health) -> Step {
        let Some(chain) = self.chain(cfg) else { return Step::Continue };
        if self.mode == Mode::Attempts {
            let limit = chain.failover.as_ref().map_or(u64::MAX, |f| f.max_replay_bytes);
            let declared = head.get("content-length").and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                // Too large to keep for a replay: one attempt, routed at the headers.
                self.no_replay = Some(NoReplay::BodyTooLarge);
                log::debug!(
                    "request body of {} bytes is over failover.max_replay_bytes: no replay",
                    declared.unwrap_or(0)
                );
                self.mode = Mode::Single;
            } else if head.end_of_stream {
                return self.plan_attempts(cfg, head, health);
            } else {
                return Step::Hold;
            }
        }
        // Single: route at the headers when the first admissible provider takes the request as it is.
        let w = match self.walk(cfg, 1, health) {
            Ok(w) => w,
            Err(step) => return step,
        };
        if let Some(first) = w.plan.first().copied() {
            self.plan = w.plan;
            return self.forward_single(cfg, head, first, None);
        }
        let nothing_left = w.needs_body_at.is_none();
        if nothing_left && (head.end_of_stream || self.degraded_mode(cfg) == DegradedMode::Error) {
            return Step::Reply(self.degrade(cfg, DegradedReason::NoProviderAvailable));
        }
        if head.end_of_stream {
            self.body_read = true;
            return self.plan_single_with_body(cfg, head, health);
        }
        Step::Hold
    }

    /// The whole request body (after a [`Step::Hold`]; kept, to be rewritten for a host that
    /// needs it); `head` is the request headers as held.
    pub fn on_request_body(
        &mut self,
        cfg: &Config,
        head: &RequestHead<'_>,
        body: Vec<u8>,
        health: &mut dyn Health,
        budget: &mut dyn Budget,
    ) -> Step {
        let size = body.len();
        if let Err(r) = self.read_body(body) {
            return r;
        }
        match self.mode {
            Mode::Attempts => {
                let limit = self.chain(cfg).and_then(|c| c.failover.as_ref()).map_or(u64::MAX, |f| f.max_replay_bytes);
                if size as u64 > limit {
                    self.no_replay = Some(NoReplay::BodyTooLarge);
                    log::debug!("request body of {size} bytes is over failover.max_replay_bytes: no replay");
                }
                let step = self.plan_attempts(cfg, head, health);
                if self.max_attempts > 1 {
                    budget.count_request(self.start_ms);
                }
                step
            }
            Mode::Single => self.plan_single_with_body(cfg, head, health),
        }
    }

    /// Parses and checks the client's body; a bad one is answered 400 in the client's format.
    fn read_body(&mut self, body: Vec<u8>) -> Result<(), Step> {
        self.body_read = true;
        if body.is_empty() {
            return Ok(());
        }
        match validate::peek_body(&body) {
            Ok(p) => {
                self.model = p.model;
                self.stream = p.stream;
            }
            Err(e) => return Err(self.refuse(&e)),
        }
        self.body = body;
        Ok(())
    }

    /// The client's request, parsed on first use (only requests rewritten for a host need it).
    fn client_request(&mut self) -> Result<&ClientRequest, validate::BadRequest> {
        if self.parsed.is_none() {
            let parsed = validate::parse_body(&self.body).map(|value| {
                ClientRequest { api: self.client, path: self.path.clone(), body: value, betas: Vec::new() }
                    .with_betas(self.betas.as_deref())
            });
            self.parsed = Some(parsed);
        }
        match self.parsed.as_ref() {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(e.clone()),
            None => Err(validate::BadRequest::NotJson("no body".to_string())),
        }
    }

    /// Runs the chain walk, with the body or (before it is in) without.
    fn walk(&mut self, cfg: &Config, max: usize, health: &mut dyn Health) -> Result<plan::Walk, Step> {
        let Some(chain) = cfg.chains.get(self.chain) else { return Err(Step::Continue) };
        let model = self.model.clone();
        let input = WalkInput {
            body_known: self.body_read,
            model: model.as_deref(),
            same_model_only: self.same_model_only,
            max,
            now_ms: self.start_ms,
        };
        let mut bad = None;
        let w = {
            let mut rewriter = |p: usize, position: usize| -> Result<Rewrite, Unfit> {
                let (Some(provider), Some(models)) = (cfg.providers.get(p), chain.models.get(position)) else {
                    return Err(Unfit::BadBody);
                };
                match self.client_request() {
                    Ok(req) => rewrite(req, provider, models, cfg.default_max_tokens),
                    Err(e) => {
                        bad = Some(e);
                        Err(Unfit::BadBody)
                    }
                }
            };
            plan::walk(cfg, chain, input, &mut rewriter, health)
        };
        if let Some(e) = bad {
            if let Some(first) = w.plan.first().filter(|f| f.probe) {
                health.abandon_probe(first.provider);
            }
            return Err(self.refuse(&e));
        }
        Ok(w)
    }

    fn refuse(&mut self, why: &validate::BadRequest) -> Step {
        self.replied = true;
        self.refused = Some("invalid_request");
        Step::Reply(validate::bad_request(self.client, why))
    }

    fn refuse_untranslatable(&mut self, cfg: &Config, provider: usize, u: &Untranslatable) -> LocalResponse {
        self.replied = true;
        self.refused = Some("untranslatable");
        let name = cfg.providers.get(provider).map_or("", |p| p.name.as_str());
        refusal(self.client, name, u)
    }

    /// Attempts mode: plan every admissible provider and pick the cluster that walks them.
    fn plan_attempts(&mut self, cfg: &Config, head: &RequestHead<'_>, health: &mut dyn Health) -> Step {
        let Some(chain) = self.chain(cfg) else { return Step::Continue };
        let max = if self.no_replay.is_some() { 1 } else { chain.providers.len() };
        let w = match self.walk(cfg, max, health) {
            Ok(w) => w,
            Err(step) => return step,
        };
        let Some(chain) = self.chain(cfg) else { return Step::Continue };
        if let Some((p, u)) = &w.refusal {
            return Step::Reply(self.refuse_untranslatable(cfg, *p, u));
        }
        let Some(first) = w.plan.first().copied() else {
            return Step::Reply(self.degrade(cfg, DegradedReason::NoProviderAvailable));
        };
        if let Some(rw) = w.first_rewrite {
            self.rewrites.push((first.provider, rw));
        }
        let failover = chain.failover.as_ref();
        let per_provider = failover.map_or(1, |f| f.same_provider_retries.saturating_add(1));
        let cluster = failover.and_then(|f| failover_cluster(&f.clusters, &w.plan));
        let (route, reachable) = match cluster {
            Some(c) => {
                let reachable: Vec<Planned> =
                    w.plan.iter().filter(|p| c.providers.contains(&p.provider)).copied().collect();
                (c.cluster.clone(), reachable)
            }
            None => {
                let own = cfg.providers.get(first.provider).map_or(String::new(), |p| p.cluster.clone());
                (own, vec![first])
            }
        };
        self.plan = reachable;
        let structural = u32::try_from(self.plan.len()).unwrap_or(u32::MAX).saturating_mul(per_provider);
        self.max_attempts =
            if self.no_replay.is_some() { 1 } else { structural.min(failover.map_or(1, |f| f.max_attempts)).max(1) };
        let mut edits: HeaderEdits = vec![(cfg.route_header.clone(), Some(route))];
        edits.push(("x-envoy-max-retries".to_string(), Some((self.max_attempts - 1).to_string())));
        if let Some(ms) = chain.deadlines.first_content_ms(self.stream) {
            edits.push(("x-envoy-upstream-rq-per-try-timeout-ms".to_string(), Some(ms.to_string())));
        }
        strip_envoy_controls(head, &mut edits);
        // Each attempt sets its own credential; the client's go only where the chain lets them
        // (removed here too, so that they leak nowhere even if the upstream filter is missing).
        let keep_client = first.position == 0
            && chain.pass_client_credentials
            && cfg.providers.get(first.provider).is_some_and(|p| p.credential.is_none());
        if !keep_client {
            for h in &cfg.client_credential_headers {
                if head.has(h) {
                    edits.push((h.clone(), None));
                }
            }
        }
        Step::Forward { headers: edits, body: None }
    }

    /// Single mode with the body in hand: walk from the start, rewriting where needed.
    fn plan_single_with_body(&mut self, cfg: &Config, head: &RequestHead<'_>, health: &mut dyn Health) -> Step {
        let w = match self.walk(cfg, 1, health) {
            Ok(w) => w,
            Err(step) => return step,
        };
        if let Some((p, u)) = &w.refusal {
            return Step::Reply(self.refuse_untranslatable(cfg, *p, u));
        }
        let Some(first) = w.plan.first().copied() else {
            return Step::Reply(self.degrade(cfg, DegradedReason::NoProviderAvailable));
        };
        self.plan = w.plan;
        self.forward_single(cfg, head, first, w.first_rewrite)
    }

    /// Single mode: the edits that send the request to `first`, and its attempt.
    fn forward_single(&mut self, cfg: &Config, head: &RequestHead<'_>, first: Planned, rw: Option<Rewrite>) -> Step {
        let Some(chain) = self.chain(cfg) else { return Step::Continue };
        let Some(provider) = cfg.providers.get(first.provider) else { return Step::Continue };
        let current = |n: &str| head.get(n).map(str::to_string);
        let target = Target {
            provider: first.provider,
            position: first.position,
            authority: self.authority.as_deref(),
            path: &self.path,
            rewrite: rw.as_ref(),
        };
        let mut headers = attempt_edits(cfg, chain, &target, &current);
        if rw.is_some() && head.has("accept-encoding") {
            headers.push(("accept-encoding".to_string(), None));
        }
        strip_envoy_controls(head, &mut headers);
        headers.push((cfg.route_header.clone(), Some(provider.cluster.clone())));
        let model = match &rw {
            Some(r) => Some(r.model.clone()).filter(|m| validate::valid_model(m)),
            None => self.model.clone(),
        };
        let include_usage = rw.as_ref().is_some_and(|r| r.include_usage);
        let body = rw.as_ref().map(|r| r.body.clone());
        self.attempts_started = 1;
        self.last_started = Some((first.provider, first.position));
        self.single = Some(Attempt::new(AttemptSetup {
            number: 1,
            provider: first.provider,
            provider_name: provider.name.clone(),
            api: provider.api,
            position: first.position,
            probe: first.probe,
            client: self.client,
            stream: self.stream,
            model,
            include_usage,
            can_retry: false,
            retry_from_body: false,
            hold: false,
            deadline_ms: None,
            stall_ms: None,
            announce_attempts: false,
            keep_for_continuation: chain.continues_after(first.position).then_some(chain.continuation.max_kept_bytes),
            start_ms: self.start_ms,
            created_s: self.start_ms / 1000,
            id_suffix: self.id_suffix,
        }));
        Step::Forward { headers, body }
    }

    /// Single mode, a request routed at its headers: does it keep a copy of its body as it
    /// flows, for a continuation? Only while it may be a stream (`stream`: what the look at the
    /// body says so far; `settled`: that look is over) and the copy is within the chain's
    /// `failover.max_replay_bytes` (8 MiB without).
    pub fn keeps_body(&self, cfg: &Config, stream: bool, settled: bool) -> bool {
        self.mode == Mode::Single
            && !self.body_read
            && !self.body_over
            && (stream || !settled)
            && self.chain(cfg).is_some_and(|c| c.continues_after(0))
    }

    /// A chunk of the body of a request routed at its headers (see [`Exchange::keeps_body`]);
    /// `stream` and `settled` as the look at the body says after this chunk.
    pub fn body_chunk(&mut self, cfg: &Config, chunk: &[u8], stream: bool, settled: bool) {
        if !self.keeps_body(cfg, true, false) {
            return;
        }
        let limit = self.chain(cfg).and_then(|c| c.failover.as_ref()).map_or(8 << 20, |f| f.max_replay_bytes);
        if settled && !stream {
            // Not a stream: no copy is needed.
            self.body_over = true;
            self.body = Vec::new();
        } else if (self.body.len() + chunk.len()) as u64 > limit {
            self.body_over = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    /// The model the client asked for, once known and valid (single mode, from a streaming
    /// look at the body of a request routed at its headers).
    pub fn learn_model(&mut self, model: Option<String>, stream: bool) {
        if !self.body_read {
            self.model = model.filter(|m| validate::valid_model(m));
            self.stream = stream;
            if let Some(a) = self.single.as_mut() {
                if a.setup.model.is_none() {
                    a.setup.model = self.model.clone();
                }
            }
        }
    }

    /// The rewritten request for `provider`, computed once.
    fn rewrite_for(&mut self, cfg: &Config, provider: usize, position: usize) -> Result<Option<Rewrite>, Unfit> {
        let Some(chain) = cfg.chains.get(self.chain) else { return Ok(None) };
        let (Some(p), Some(models)) = (cfg.providers.get(provider), chain.models.get(position)) else {
            return Ok(None);
        };
        if models.passes_through(p.api, self.client, self.model.as_deref()) {
            return Ok(None);
        }
        if let Some((_, rw)) = self.rewrites.iter().find(|(q, _)| *q == provider) {
            return Ok(Some(rw.clone()));
        }
        let Ok(req) = self.client_request() else { return Err(Unfit::BadBody) };
        let rw = rewrite(req, p, models, cfg.default_max_tokens)?;
        self.rewrites.push((provider, rw.clone()));
        Ok(Some(rw))
    }

    /// An attempt starts (upstream side): `number` is Envoy's attempt count, `landed` the
    /// provider named by the metadata of the host Envoy picked; `current` the request headers
    /// as they are now. `retry_from_body`: this Envoy can retry after a body was seen.
    #[allow(clippy::too_many_arguments)]
    pub fn start_attempt(
        &mut self,
        cfg: &Config,
        number: u32,
        landed: Option<&str>,
        current: &dyn Fn(&str) -> Option<String>,
        health: &mut dyn Health,
        budget: &mut dyn Budget,
        now_ms: u64,
        retry_from_body: bool,
    ) -> Start {
        let Some(chain) = cfg.chains.get(self.chain) else {
            return Start::Reply(self.degrade(cfg, DegradedReason::Misconfigured));
        };
        // Which provider did Envoy's retry reach?
        let entry = match landed {
            Some(name) => self.plan.iter().position(|p| cfg.providers.get(p.provider).is_some_and(|q| q.name == name)),
            None if self.plan.len() == 1 => Some(0),
            None => None,
        };
        let Some(idx) = entry else {
            log::error!(
                "llm-failover: attempt {number} reached a host without llm_failover.provider metadata naming a provider of this request's plan ({}); nothing sent",
                landed.unwrap_or("none")
            );
            return Start::Reply(self.degrade(cfg, DegradedReason::Misconfigured));
        };
        let Some(planned) = self.plan.get(idx).copied() else {
            return Start::Reply(self.degrade(cfg, DegradedReason::Misconfigured));
        };
        let mut probe: bool;
        if number == 1 {
            probe = planned.probe;
            if idx != 0 {
                // Envoy skipped the first (no healthy host there): free its probe slot.
                if let Some(first) = self.plan.first().filter(|f| f.probe) {
                    health.abandon_probe(first.provider);
                }
                match health.claim(planned.provider, now_ms) {
                    Admission::Admit => {}
                    Admission::Probe => probe = true,
                    Admission::Reject(_) => {
                        return Start::Reply(self.degrade(cfg, DegradedReason::NoProviderAvailable))
                    }
                }
            }
        } else {
            if number > self.max_attempts {
                return Start::Reply(self.degrade(cfg, DegradedReason::DeadlineExceeded));
            }
            if chain.deadlines.total_ms.is_some_and(|t| now_ms.saturating_sub(self.start_ms) >= t) {
                return Start::Reply(self.degrade(cfg, DegradedReason::DeadlineExceeded));
            }
            if !budget.try_replay(now_ms) {
                return Start::Reply(self.degrade(cfg, DegradedReason::RetryBudgetExhausted));
            }
            match resume::admit(health, planned.provider, now_ms) {
                Some(p) => probe = p,
                None => return Start::Reply(self.degrade(cfg, DegradedReason::NoProviderAvailable)),
            }
        }
        let rw = match self.rewrite_for(cfg, planned.provider, planned.position) {
            Ok(rw) => rw,
            Err(Unfit::Untranslatable(u)) if chain.on_untranslatable == crate::config::OnUntranslatable::Refuse => {
                if probe {
                    health.abandon_probe(planned.provider);
                }
                return Start::Reply(self.refuse_untranslatable(cfg, planned.provider, &u));
            }
            Err(_) => {
                if probe {
                    health.abandon_probe(planned.provider);
                }
                return Start::Reply(self.degrade(cfg, DegradedReason::NoProviderAvailable));
            }
        };
        let Some(provider) = cfg.providers.get(planned.provider) else {
            return Start::Reply(self.degrade(cfg, DegradedReason::Misconfigured));
        };
        let target = Target {
            provider: planned.provider,
            position: planned.position,
            authority: self.authority.as_deref(),
            path: &self.path,
            rewrite: rw.as_ref(),
        };
        let mut headers = attempt_edits(cfg, chain, &target, current);
        // The filter reads every answer: it must come uncompressed.
        if current("accept-encoding").is_some() {
            headers.push(("accept-encoding".to_string(), None));
        }
        if current(&cfg.route_header).is_some() {
            headers.push((cfg.route_header.clone(), None));
        }
        let later = self.plan.len() > idx + 1;
        let same_left = chain.failover.as_ref().is_some_and(|f| {
            let tries_here = self.summaries.iter().filter(|s| s.provider == planned.provider).count() as u32 + 1;
            tries_here <= f.same_provider_retries
        });
        let deadline_left = chain.deadlines.total_ms.map_or(true, |t| now_ms.saturating_sub(self.start_ms) < t);
        let can_retry = (later || same_left) && number < self.max_attempts && deadline_left;
        let model = match &rw {
            Some(r) => Some(r.model.clone()).filter(|m| validate::valid_model(m)),
            None => self.model.clone(),
        };
        self.attempts_started = self.attempts_started.max(number);
        self.last_started = Some((planned.provider, planned.position));
        let attempt = Attempt::new(AttemptSetup {
            number,
            provider: planned.provider,
            provider_name: provider.name.clone(),
            api: provider.api,
            position: planned.position,
            probe,
            client: self.client,
            stream: self.stream,
            model,
            include_usage: rw.as_ref().is_some_and(|r| r.include_usage),
            can_retry,
            retry_from_body,
            hold: true,
            deadline_ms: chain.deadlines.first_content_ms(self.stream),
            stall_ms: chain.deadlines.stall_ms,
            announce_attempts: true,
            keep_for_continuation: (self.stream && chain.continues_after(planned.position))
                .then_some(chain.continuation.max_kept_bytes),
            start_ms: now_ms,
            created_s: self.start_ms / 1000,
            id_suffix: self.id_suffix.wrapping_add(u64::from(number)),
        });
        Start::Go { attempt: Box::new(attempt), headers, body: rw.map(|r| r.body) }
    }

    /// An attempt is over.
    pub fn end_attempt(&mut self, summary: AttemptSummary) {
        self.summaries.push(summary);
    }

    /// Does the downstream filter need every response header the attempt reads (single mode),
    /// or only the status and Envoy's code details (attempts mode: the upstream filter watched
    /// each attempt)?
    pub fn watches_the_answer(&self) -> bool {
        self.mode == Mode::Single
    }

    /// Does [`Exchange::on_response_headers`] use the time for an answer of this content type?
    /// Only a single-mode stream's (its first token and stall watch start there); otherwise the
    /// host need not read the clock and passes 0.
    pub fn reads_clock_at_response(&self, content_type: &str) -> bool {
        self.mode == Mode::Single && crate::attempt::is_stream(content_type)
    }

    /// A reply reached the client while the request waited for its body: the tick's degraded
    /// answer (no provider could be asked in time). Recorded as such for the stats and the log.
    pub fn answered_while_held(&mut self) {
        self.replied = true;
        self.degraded = Some(DegradedReason::NoProviderAvailable);
    }

    /// The response headers as the downstream filter sees them: in attempts mode the final
    /// response (a failure that still reaches it becomes the degraded answer), in single mode the
    /// one attempt's (a provider failure becomes the degraded answer unless the config says to
    /// pass it).
    pub fn on_response_headers(&mut self, cfg: &Config, head: &ResponseHead<'_>, now_ms: u64) -> Answer {
        if self.replied {
            return Answer::Pass(HeaderEdits::new());
        }
        let ok = (200..300).contains(&head.status);
        if self.mode == Mode::Attempts {
            if self.attempts_started == 0 && !matches!(head.details, Some(d) if d != "via_upstream") {
                // A provider answered without any attempt having started.
                self.upstream_filter_missing = true;
            }
            if let Some(resp) = self.on_final_response(cfg, head.status, head.details) {
                return Answer::Reply(resp);
            }
            // The retry marker of an attempt Envoy did not retry is the filter's own.
            let edits = if ok { HeaderEdits::new() } else { vec![(RETRY_HEADER.to_string(), None)] };
            return Answer::Pass(edits);
        }
        let Some(a) = self.single.as_mut() else { return Answer::Pass(HeaderEdits::new()) };
        let step = a.on_response_headers(head, now_ms);
        let failed = a.outcome().is_some_and(Outcome::is_provider_failure);
        if failed && cfg.degraded.on_upstream_failure {
            return Answer::Reply(self.degrade(cfg, DegradedReason::UpstreamFailure));
        }
        match step {
            HeadStep::Continue(edits) | HeadStep::Retry(edits) => Answer::Pass(edits),
            HeadStep::Hold => Answer::Hold,
        }
    }

    /// The chain's first provider and the one that answered, when they differ (a failover).
    pub fn failover(&self, cfg: &Config) -> Option<(usize, usize)> {
        let answered = self.summaries.iter().rev().find(|s| s.answered)?;
        let first = *cfg.chains.get(self.chain)?.providers.first()?;
        (answered.position > 0).then_some((first, answered.provider))
    }

    /// The final response, as the downstream filter sees it (attempts mode): a failure that
    /// reached it (every attempt spent, or Envoy's own reply after the last one) becomes the
    /// degraded answer. `details`: Envoy's `response.code_details`.
    pub fn on_final_response(&mut self, cfg: &Config, status: u16, details: Option<&str>) -> Option<LocalResponse> {
        if self.replied {
            return None;
        }
        let outcome = classify_headers(status, details, None, None);
        (cfg.degraded.on_upstream_failure && outcome.is_provider_failure())
            .then(|| self.degrade(cfg, DegradedReason::UpstreamFailure))
    }

    /// The degraded answer for this request.
    pub fn degrade(&mut self, cfg: &Config, reason: DegradedReason) -> LocalResponse {
        self.replied = true;
        self.degraded = Some(reason);
        let mode = self.degraded_mode(cfg);
        let notice = self.chain(cfg).and_then(|c| c.degraded_notice.as_deref());
        let settings = crate::config::DegradedSettings {
            mode,
            notice: notice.unwrap_or(&cfg.degraded.notice).to_string(),
            ..cfg.degraded.clone()
        };
        degraded_response(&settings, self.client, self.model.as_deref(), self.stream, reason, self.id_suffix)
    }

    /// What the request did, for the access log and the request-level stats.
    pub fn record(&self, cfg: &Config, end_ms: u64) -> RequestRecord {
        let answered = self.summaries.iter().rev().find(|s| s.answered).or(self.summaries.last());
        let name = |p: usize| cfg.providers.get(p).map_or("?", |q| q.name.as_str());
        let tried = (!self.summaries.is_empty()).then(|| {
            self.summaries
                .iter()
                .map(|s| format!("{}:{}", name(s.provider), s.outcome.as_str()))
                .collect::<Vec<_>>()
                .join(",")
        });
        RequestRecord {
            provider: answered.filter(|s| s.answered).map(|s| name(s.provider).to_string()),
            model: answered.and_then(|s| s.model.clone()).or_else(|| self.model.clone()),
            attempts: self.attempts_started.max(u32::try_from(self.summaries.len()).unwrap_or(u32::MAX)),
            outcome: answered.map(|s| s.outcome.as_str()).or(self.refused),
            degraded_reason: self.degraded.map(DegradedReason::as_str),
            input_tokens: answered.and_then(|s| s.input_tokens),
            output_tokens: self
                .resume
                .as_ref()
                .and_then(|r| r.output_tokens)
                .or_else(|| answered.and_then(|s| s.output_tokens)),
            ttft_ms: answered
                .filter(|s| s.streamed)
                .and_then(|s| s.first_content_ms)
                .map(|t| t.saturating_sub(self.start_ms)),
            duration_ms: Some(end_ms.saturating_sub(self.start_ms)),
            tried,
            continuation: self.resume.as_ref().and_then(|r| r.result.as_ref()).map(resume::ResumeResult::as_str),
            finished_by: self.resume.as_ref().and_then(|r| match r.result {
                Some(resume::ResumeResult::Spliced(p)) => Some(name(p).to_string()),
                _ => None,
            }),
        }
    }
}

mod overflow;
mod resume;
pub use overflow::{is_context_overflow, OverflowStep};
pub use resume::{CallSpec, Resume, ResumeResult, ResumeStep};

#[cfg(test)]
mod tests;

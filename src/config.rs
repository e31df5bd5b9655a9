//! The filter's configuration: the JSON a user writes (Envoy's `configuration` or an Istio
//! WasmPlugin's `pluginConfig`), parsed with serde (`deny_unknown_fields`) and validated once at
//! load into a ready-to-use [`Config`]. Every error names the field it is about.
//!
//! Nothing here calls the host: environment variables are read through a closure so the same code
//! runs natively in tests and inside the Wasm VM (where `std::env` sees
//! `vm_config.environment_variables`).

use serde::Deserialize;

mod json_path;
use std::fmt;

/// The wire API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Anthropic Messages API (`POST /v1/messages`, JSON and SSE).
    Anthropic,
    /// Claude on Google Vertex AI (`:rawPredict` / `:streamRawPredict`, Anthropic bodies).
    Vertex,
    /// Claude on AWS Bedrock (`/model/{id}/invoke[-with-response-stream]`, event-stream).
    Bedrock,
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI (`/openai/deployments/{deployment}/chat/completions?api-version=`).
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
}

/// The request and answer format a client speaks (and a provider's body format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientApi {
    /// Anthropic Messages bodies (Anthropic, Vertex and Bedrock carry these).
    Anthropic,
    /// OpenAI Chat Completions bodies (OpenAI and Azure OpenAI).
    #[serde(rename = "openai")]
    OpenAi,
}

impl Api {
    /// The body format this host takes and answers in.
    pub fn format(self) -> ClientApi {
        match self {
            Api::Anthropic | Api::Vertex | Api::Bedrock => ClientApi::Anthropic,
            Api::OpenAi | Api::AzureOpenAi => ClientApi::OpenAi,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::Vertex => "vertex",
            Api::Bedrock => "bedrock",
            Api::OpenAi => "openai",
            Api::AzureOpenAi => "azure_openai",
        }
    }

    /// Hosts whose model names are not the client's (Bedrock model ids, Azure deployments):
    /// a request whose model has no mapping skips them.
    pub fn needs_model_mapping(self) -> bool {
        matches!(self, Api::Bedrock | Api::AzureOpenAi)
    }
}

/// What to do when a request uses a feature the chosen provider's API cannot express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnUntranslatable {
    /// Answer 400 in the client's format, naming the field.
    #[default]
    Refuse,
    /// Skip that provider and try the next in the chain.
    Skip,
}

/// What a degraded answer looks like to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DegradedMode {
    /// 200 with a synthetic assistant message carrying the notice (JSON or SSE, as requested).
    #[default]
    Message,
    /// 503 with a structured error in the client's API format and `Retry-After`.
    Error,
}

// ---------------------------------------------------------------------------------------------
// Raw, user-facing shape.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: Vec<RawProvider>,
    chains: Vec<RawChain>,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    degraded: RawDegraded,
    #[serde(default = "default_route_header")]
    route_header: String,
    #[serde(default = "default_client_credential_headers")]
    client_credential_headers: Vec<String>,
    #[serde(default = "default_max_tokens")]
    default_max_tokens: u32,
    #[serde(default)]
    retry_budget: RawRetryBudget,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    cluster: String,
    #[serde(default = "default_api")]
    api: Api,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    credential: Option<RawCredential>,
    #[serde(default)]
    models: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    default_model: Option<String>,
    #[serde(default)]
    vertex: Option<RawVertex>,
    #[serde(default)]
    azure: Option<RawAzure>,
    #[serde(default)]
    prefill: bool,
    #[serde(default)]
    context_window: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVertex {
    project: String,
    region: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    api_version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    header: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

impl fmt::Debug for RawCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCredential").field("header", &self.header).field("env", &self.env).finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    providers: Vec<RawChainEntry>,
    #[serde(default)]
    pass_client_credentials: bool,
    #[serde(default)]
    client_api: Option<ClientApi>,
    #[serde(default)]
    on_untranslatable: OnUntranslatable,
    #[serde(default)]
    failover: Option<RawFailover>,
    #[serde(default)]
    deadlines: Option<RawDeadlines>,
    #[serde(default)]
    continuation: Option<RawContinuation>,
    #[serde(default)]
    degraded: Option<RawChainDegraded>,
}

/// Mid-stream continuation of a chain's broken streams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawContinuation {
    enabled: bool,
    max_attempts: u32,
    timeout_ms: u64,
    max_kept_bytes: u64,
}

impl Default for RawContinuation {
    fn default() -> Self {
        let d = Continuation::default();
        RawContinuation {
            enabled: d.enabled,
            max_attempts: d.max_attempts,
            timeout_ms: d.timeout_ms,
            max_kept_bytes: d.max_kept_bytes as u64,
        }
    }
}

/// A chain's own degraded form (over the top-level `degraded`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChainDegraded {
    #[serde(default)]
    mode: Option<DegradedMode>,
    #[serde(default)]
    notice: Option<String>,
}

/// In-request failover of a chain: the Envoy clusters that let a router retry move on to the
/// next provider, and the bounds of those retries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    #[serde(default)]
    clusters: Vec<RawFailoverCluster>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    same_provider_retries: u32,
    #[serde(default = "default_max_replay_bytes")]
    max_replay_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailoverCluster {
    cluster: String,
    providers: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDeadlines {
    first_token_ms: Option<u64>,
    json_answer_ms: Option<u64>,
    stall_ms: Option<u64>,
    total_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetryBudget {
    ratio: f64,
    min_per_s: f64,
    window_ms: u64,
}

impl Default for RawRetryBudget {
    fn default() -> Self {
        let d = RetryBudget::default();
        RawRetryBudget { ratio: d.ratio, min_per_s: d.min_per_s, window_ms: d.window_ms }
    }
}

fn default_max_replay_bytes() -> u64 {
    8 * 1024 * 1024
}

/// A chain entry: a provider name, or `{"provider": name, "same_model": bool, "models": {...},
/// "default_model": ...}` (models for this chain only, over the provider's).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawChainEntry {
    Name(String),
    Entry(RawChainEntryObject),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChainEntryObject {
    provider: String,
    #[serde(default)]
    same_model: Option<bool>,
    #[serde(default)]
    models: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    default_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default = "default_path_prefix")]
    path_prefix: String,
    #[serde(default)]
    header: Option<RawHeaderMatch>,
}

impl Default for RawMatch {
    fn default() -> Self {
        RawMatch { path_prefix: default_path_prefix(), header: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    window_ms: u64,
    buckets: u32,
    min_requests: u32,
    failure_ratio: f64,
    consecutive_failures: u32,
    open_ms: u64,
    max_open_ms: u64,
    backoff_multiplier: f64,
    jitter: f64,
    half_open_probes: u32,
    close_after_successes: u32,
    probe_timeout_ms: u64,
    default_retry_after_ms: u64,
    max_retry_after_ms: u64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        let d = BreakerSettings::default();
        RawBreaker {
            window_ms: d.window_ms,
            buckets: d.buckets,
            min_requests: d.min_requests,
            failure_ratio: d.failure_ratio,
            consecutive_failures: d.consecutive_failures,
            open_ms: d.open_ms,
            max_open_ms: d.max_open_ms,
            backoff_multiplier: d.backoff_multiplier,
            jitter: d.jitter,
            half_open_probes: d.half_open_probes,
            close_after_successes: d.close_after_successes,
            probe_timeout_ms: d.probe_timeout_ms,
            default_retry_after_ms: d.default_retry_after_ms,
            max_retry_after_ms: d.max_retry_after_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDegraded {
    mode: DegradedMode,
    notice: String,
    retry_after_s: u32,
    on_upstream_failure: bool,
}

impl Default for RawDegraded {
    fn default() -> Self {
        RawDegraded {
            mode: DegradedMode::Message,
            notice: DEFAULT_NOTICE.to_string(),
            retry_after_s: 30,
            on_upstream_failure: true,
        }
    }
}

fn default_route_header() -> String {
    "x-llm-failover-cluster".to_string()
}
fn default_client_credential_headers() -> Vec<String> {
    ["authorization", "x-api-key", "api-key", "x-goog-api-key"].iter().map(|s| s.to_string()).collect()
}
fn default_max_tokens() -> u32 {
    4096
}
fn default_api() -> Api {
    Api::Anthropic
}
fn default_path_prefix() -> String {
    "/".to_string()
}

/// The notice a degraded answer carries unless the config says otherwise.
pub const DEFAULT_NOTICE: &str = "Advanced AI features are temporarily offline; please try again shortly.";

// ---------------------------------------------------------------------------------------------
// Ready form.
// ---------------------------------------------------------------------------------------------

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub chains: Vec<Chain>,
    pub breaker: BreakerSettings,
    pub degraded: DegradedSettings,
    /// The request header the Envoy route reads with `cluster_header`.
    pub route_header: String,
    /// Client credential headers (lowercase) stripped from every rerouted request.
    pub client_credential_headers: Vec<String>,
    /// Every credential header name any party uses (the client's and every provider's): an
    /// attempt removes all of them but its own provider's, since edits of one attempt carry
    /// over to the next.
    pub credential_headers: Vec<String>,
    /// `max_tokens` sent to an Anthropic-format host when an OpenAI client gave none.
    pub default_max_tokens: u32,
    /// The share of requests that may be replayed on another attempt, over a window.
    pub retry_budget: RetryBudget,
}

/// Replays (attempts after the first) may not exceed `ratio` of the requests in the last
/// `window_ms`, plus `min_per_s` per second of the window: a failing provider cannot multiply
/// the load on the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_s: f64,
    pub window_ms: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { ratio: 0.2, min_per_s: 1.0, window_ms: 10_000 }
    }
}

impl RetryBudget {
    /// Replays allowed in a window that saw `requests` requests.
    pub fn allowed(&self, requests: u64) -> u64 {
        let floor = self.min_per_s * (self.window_ms as f64 / 1000.0);
        (self.ratio * requests as f64 + floor).floor() as u64
    }
}

/// A cluster of the Envoy config whose sub-clusters are these providers' clusters, in this
/// order (an aggregate cluster with the `previous_priorities` retry priority): a router retry
/// on it moves to the next of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverCluster {
    pub cluster: String,
    /// Provider indexes, in the cluster's order.
    pub providers: Vec<usize>,
}

/// In-request failover of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub clusters: Vec<FailoverCluster>,
    /// Attempts per request at most (the first included).
    pub max_attempts: u32,
    /// Extra attempts on the same provider before moving on (the route's `retry_priority`
    /// `update_frequency` must be this + 1).
    pub same_provider_retries: u32,
    /// A request body larger than this is not kept for a replay.
    pub max_replay_bytes: u64,
}

/// Per-chain deadlines, in milliseconds (None: no deadline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// Streams: from the attempt's start to the first content (a text or tool delta).
    pub first_token_ms: Option<u64>,
    /// Non-streaming answers: from the attempt's start to the whole answer (defaults to
    /// `first_token_ms`).
    pub json_answer_ms: Option<u64>,
    /// Streams: the longest silence after the first content.
    pub stall_ms: Option<u64>,
    /// No attempt starts later than this after the request arrived.
    pub total_ms: Option<u64>,
}

impl Deadlines {
    /// The per-attempt deadline for a request that does (or does not) stream.
    pub fn first_content_ms(&self, stream: bool) -> Option<u64> {
        if stream {
            self.first_token_ms
        } else {
            self.json_answer_ms.or(self.first_token_ms)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub cluster: String,
    pub api: Api,
    pub authority: Option<String>,
    pub credential: Option<Credential>,
    /// Shared-data key holding this provider's window and breaker.
    pub state_key: String,
    /// Client model name -> this host's model name (Bedrock model id, Vertex name, Azure
    /// deployment, another vendor's model), and the model for the rest.
    pub models: ModelMap,
    pub vertex: Option<VertexSettings>,
    pub azure: Option<AzureSettings>,
    /// The host accepts an assistant prefill (a conversation ending with an assistant turn):
    /// a continuation hands it the partial answer that way. Claude Opus / Sonnet 4.6 and later
    /// refuse it; without it a continuation asks with a final user turn.
    pub prefill: bool,
    /// The model's context window in tokens, if configured (context-overflow failover goes
    /// only to a provider with a larger one).
    pub context_window: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexSettings {
    pub project: String,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSettings {
    pub api_version: String,
}

/// Client model name -> host model name, with a default for the rest: a provider's `models`
/// overlaid with the chain entry's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap {
    pub models: std::collections::BTreeMap<String, String>,
    pub default_model: Option<String>,
}

impl ModelMap {
    /// The model a host of `api` is asked for, given the client's model; None when the host
    /// cannot serve it (no mapping where one is needed, or another vendor with no mapping).
    pub fn model_for<'a>(&'a self, api: Api, client: ClientApi, client_model: &'a str) -> Option<&'a str> {
        if let Some(m) = self.models.get(client_model) {
            return Some(m);
        }
        if let Some(m) = &self.default_model {
            return Some(m);
        }
        let same_vendor = api.format() == client;
        (same_vendor && !api.needs_model_mapping() && !client_model.is_empty()).then_some(client_model)
    }

    /// True when a request of `client`'s format for `client_model` (None: not known yet) can
    /// go to a host of `api` with its body, path and model untouched (only headers change).
    pub fn passes_through(&self, api: Api, client: ClientApi, client_model: Option<&str>) -> bool {
        if !matches!((api, client), (Api::Anthropic, ClientApi::Anthropic) | (Api::OpenAi, ClientApi::OpenAi)) {
            return false;
        }
        match client_model {
            Some(m) => self.model_for(api, client, m) == Some(m),
            None => self.models.is_empty() && self.default_model.is_none(),
        }
    }
}

/// A credential to inject: header name (lowercase) and full header value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub header: String,
    pub value: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential {{ header: {:?}, value: <redacted> }}", self.header)
    }
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub name: String,
    pub path_prefix: String,
    /// Header name (lowercase) and, if given, the exact value it must have.
    pub header: Option<(String, Option<String>)>,
    /// Indexes into [`Config::providers`], in order of preference.
    pub providers: Vec<usize>,
    /// Per entry: does that provider serve the same model as the chain's first (a Claude on
    /// another host), or a different one (another vendor)? Clients that need identical
    /// outputs send `x-llm-failover-same-model: required` to skip the different ones.
    pub same_model: Vec<bool>,
    /// Per entry: the provider's model map overlaid with the entry's own `models`.
    pub models: Vec<ModelMap>,
    pub pass_client_credentials: bool,
    /// The format the chain's clients speak.
    pub client_api: ClientApi,
    pub on_untranslatable: OnUntranslatable,
    /// In-request failover (None: one attempt per request, failover for the requests after).
    pub failover: Option<Failover>,
    pub deadlines: Deadlines,
    pub continuation: Continuation,
    /// The chain's degraded form and notice (None: the top-level `degraded`).
    pub degraded_mode: Option<DegradedMode>,
    pub degraded_notice: Option<String>,
}

/// Mid-stream continuation of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    pub enabled: bool,
    /// Providers asked for the rest of one answer, at most.
    pub max_attempts: u32,
    /// How long the filter waits for the rest (the client's stream pauses meanwhile).
    pub timeout_ms: u64,
    /// A stream longer than this (client-format bytes) is not kept, so not continued.
    pub max_kept_bytes: usize,
}

impl Default for Continuation {
    fn default() -> Self {
        Continuation { enabled: true, max_attempts: 2, timeout_ms: 60_000, max_kept_bytes: 1 << 20 }
    }
}

impl Chain {
    /// Does this chain need the upstream (per-attempt) filter: retries across providers or
    /// deadlines on an attempt?
    pub fn uses_attempts(&self) -> bool {
        self.failover.is_some() || self.deadlines != Deadlines::default()
    }

    /// Can a stream broken at chain position `position` be continued: continuation on, and a
    /// provider after it? (Otherwise nothing is kept for it.)
    pub fn continues_after(&self, position: usize) -> bool {
        self.continuation.enabled && self.providers.len() > position.saturating_add(1)
    }
}

impl Chain {
    /// Does this chain apply to a request with this path? `header` looks a request header up.
    pub fn matches(&self, path: &str, header: &dyn Fn(&str) -> Option<String>) -> bool {
        if !path.starts_with(&self.path_prefix) {
            return false;
        }
        match &self.header {
            None => true,
            Some((name, None)) => header(name).is_some(),
            Some((name, Some(want))) => header(name).as_deref() == Some(want.as_str()),
        }
    }
}

/// Circuit breaker settings; every duration in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Length of the rolling error window.
    pub window_ms: u64,
    /// Number of time buckets the window is cut into.
    pub buckets: u32,
    /// Requests the window must hold before the failure ratio can open the breaker.
    pub min_requests: u32,
    /// Failure ratio (failures / (failures + successes)) that opens the breaker.
    pub failure_ratio: f64,
    /// Consecutive failures that open the breaker whatever the ratio (0 disables).
    pub consecutive_failures: u32,
    /// First open period.
    pub open_ms: u64,
    /// Cap of the open period after repeated trips.
    pub max_open_ms: u64,
    /// Each re-open multiplies the open period by this.
    pub backoff_multiplier: f64,
    /// Random spread applied to the open period: ±jitter (0.2 = ±20 %).
    pub jitter: f64,
    /// Probe requests admitted at once in half-open.
    pub half_open_probes: u32,
    /// Successful probes that close the breaker.
    pub close_after_successes: u32,
    /// A probe that reports nothing within this time frees its slot.
    pub probe_timeout_ms: u64,
    /// Cooldown after a 429 that carries no `Retry-After`.
    pub default_retry_after_ms: u64,
    /// Cap on a 429 cooldown, whatever `Retry-After` says.
    pub max_retry_after_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window_ms: 30_000,
            buckets: 10,
            min_requests: 10,
            failure_ratio: 0.5,
            consecutive_failures: 5,
            open_ms: 5_000,
            max_open_ms: 20_000,
            backoff_multiplier: 1.5,
            jitter: 0.2,
            half_open_probes: 1,
            close_after_successes: 2,
            probe_timeout_ms: 60_000,
            default_retry_after_ms: 5_000,
            max_retry_after_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DegradedSettings {
    pub mode: DegradedMode,
    pub notice: String,
    pub retry_after_s: u32,
    /// Replace an upstream failure that has not reached the client with the degraded answer.
    pub on_upstream_failure: bool,
}

/// Why a configuration was refused: the field (JSON path) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid llm-failover config: field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), problem: problem.into() }
}

/// Prefix of every shared-data key this filter writes (Istio gives all plugins one namespace).
pub const STATE_KEY_PREFIX: &str = "llm-failover/v1/provider/";

/// Parses and validates a configuration. `env` looks up the Wasm VM's environment variables.
pub fn parse(json: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if json.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(err("(root)", "the configuration is empty; expected a JSON object with `providers` and `chains`"));
    }
    let de = &mut serde_json::Deserializer::from_slice(json);
    let raw: RawConfig = serde::Deserialize::deserialize(de).map_err(|e: serde_json::Error| {
        let path = if e.is_syntax() || e.is_eof() {
            String::new()
        } else {
            json_path::path_at(json, json_path::offset(json, e.line(), e.column()))
        };
        let field = if path.is_empty() { "(root)".to_string() } else { path };
        err(field, e.to_string())
    })?;
    validate(raw, &env)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_models(
    f: &dyn Fn(&str) -> String,
    models: &std::collections::BTreeMap<String, String>,
    default_model: Option<&str>,
) -> Result<(), ConfigError> {
    for (client_model, model) in models {
        if client_model.is_empty() || !is_model_name(model) {
            return Err(err(
                f(&format!("models.{client_model}")),
                "model names must be 1-256 visible characters, without '/', '?', '#', '%', '\\' or '\"'",
            ));
        }
    }
    if let Some(m) = default_model.filter(|m| !is_model_name(m)) {
        return Err(err(f("default_model"), format!("{m:?} is not a valid model name")));
    }
    Ok(())
}

fn is_model_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic() && !b"/?#%\\\"".contains(&b))
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if !is_token(name) {
        return Err(err(field, format!("{name:?} is not a valid HTTP header name")));
    }
    Ok(name.to_ascii_lowercase())
}

fn validate_failover(
    f: &dyn Fn(&str) -> String,
    fo: RawFailover,
    chain: &[usize],
    providers: &[Provider],
) -> Result<Failover, ConfigError> {
    let mut clusters = Vec::with_capacity(fo.clusters.len());
    for (k, c) in fo.clusters.into_iter().enumerate() {
        let cf = |x: &str| f(&format!("failover.clusters[{k}].{x}"));
        if c.cluster.is_empty() || !is_header_value(&c.cluster) || c.cluster.contains(' ') {
            return Err(err(cf("cluster"), "must be a non-empty Envoy cluster name"));
        }
        if c.providers.len() < 2 {
            return Err(err(cf("providers"), "a failover cluster needs at least two providers"));
        }
        let mut idx = Vec::with_capacity(c.providers.len());
        let mut last_pos = None;
        for (j, name) in c.providers.iter().enumerate() {
            let Some(p) = providers.iter().position(|p| &p.name == name) else {
                return Err(err(cf(&format!("providers[{j}]")), format!("unknown provider {name:?}")));
            };
            let Some(pos) = chain.iter().position(|&q| q == p) else {
                return Err(err(cf(&format!("providers[{j}]")), format!("provider {name:?} is not in this chain")));
            };
            if last_pos.is_some_and(|l| pos <= l) {
                return Err(err(
                    cf(&format!("providers[{j}]")),
                    "providers must be listed in the chain's order, each once",
                ));
            }
            last_pos = Some(pos);
            idx.push(p);
        }
        clusters.push(FailoverCluster { cluster: c.cluster, providers: idx });
    }
    let per_provider = fo.same_provider_retries.saturating_add(1);
    if fo.same_provider_retries > 5 {
        return Err(err(f("failover.same_provider_retries"), "must be at most 5"));
    }
    let most = u32::try_from(chain.len()).unwrap_or(u32::MAX).saturating_mul(per_provider);
    let max_attempts = fo.max_attempts.unwrap_or(most);
    if max_attempts == 0 || max_attempts > 20 {
        return Err(err(f("failover.max_attempts"), "must be between 1 and 20"));
    }
    if fo.max_replay_bytes > 1 << 30 {
        return Err(err(f("failover.max_replay_bytes"), "must be at most 1 GiB"));
    }
    Ok(Failover {
        clusters,
        max_attempts,
        same_provider_retries: fo.same_provider_retries,
        max_replay_bytes: fo.max_replay_bytes,
    })
}

fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if raw.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    let mut providers: Vec<Provider> = Vec::with_capacity(raw.providers.len());
    for (i, p) in raw.providers.into_iter().enumerate() {
        let f = |k: &str| format!("providers[{i}].{k}");
        if p.name.is_empty()
            || p.name.len() > 64
            || !p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(f("name"), format!("{:?} must be 1-64 characters of [A-Za-z0-9_-]", p.name)));
        }
        if p.context_window.is_some_and(|w| !(1..=100_000_000).contains(&w)) {
            return Err(err(f("context_window"), "must be between 1 and 100000000 tokens"));
        }
        if providers.iter().any(|q| q.name == p.name) {
            return Err(err(f("name"), format!("provider {:?} is defined twice", p.name)));
        }
        if p.cluster.is_empty() || !is_header_value(&p.cluster) {
            return Err(err(f("cluster"), "must be a non-empty Envoy cluster name"));
        }
        if let Some(a) = &p.authority {
            if a.is_empty() || !is_header_value(a) || a.contains(' ') {
                return Err(err(f("authority"), format!("{a:?} is not a valid :authority")));
            }
        }
        let credential = match p.credential {
            None => None,
            Some(c) => {
                let header = header_name(&f("credential.header"), &c.header)?;
                let secret = match (c.value, c.env) {
                    (Some(v), None) => v,
                    (None, Some(var)) => match env(&var) {
                        Some(v) if !v.is_empty() => v,
                        _ => {
                            return Err(err(
                                f("credential.env"),
                                format!(
                                    "environment variable {var:?} is not set in the Wasm VM (add it to vm_config.environment_variables or the WasmPlugin's vmConfig.env)"
                                ),
                            ))
                        }
                    },
                    _ => return Err(err(f("credential"), "give exactly one of `value` or `env`")),
                };
                let value = format!("{}{}", c.prefix.unwrap_or_default(), secret);
                if !is_header_value(&value) || value.trim().is_empty() {
                    return Err(err(f("credential"), "the credential is empty or not a valid header value"));
                }
                Some(Credential { header, value })
            }
        };
        check_models(&f, &p.models, p.default_model.as_deref())?;
        let vertex = match (p.api, p.vertex) {
            (Api::Vertex, Some(v)) => {
                for (k, val) in [("project", &v.project), ("region", &v.region)] {
                    if val.is_empty() || !val.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return Err(err(f(&format!("vertex.{k}")), format!("{val:?} must be [A-Za-z0-9_-]+")));
                    }
                }
                Some(VertexSettings { project: v.project, region: v.region })
            }
            (Api::Vertex, None) => {
                return Err(err(f("vertex"), "api `vertex` needs `vertex: {\"project\": ..., \"region\": ...}`"))
            }
            (_, Some(_)) => return Err(err(f("vertex"), "only for providers with api `vertex`")),
            (_, None) => None,
        };
        let azure = match (p.api, p.azure) {
            (Api::AzureOpenAi, Some(a)) => {
                if a.api_version.is_empty()
                    || !a.api_version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return Err(err(f("azure.api_version"), format!("{:?} is not an api-version", a.api_version)));
                }
                Some(AzureSettings { api_version: a.api_version })
            }
            (Api::AzureOpenAi, None) => {
                return Err(err(f("azure"), "api `azure_openai` needs `azure: {\"api_version\": \"2024-10-21\"}`"))
            }
            (_, Some(_)) => return Err(err(f("azure"), "only for providers with api `azure_openai`")),
            (_, None) => None,
        };
        providers.push(Provider {
            state_key: format!("{STATE_KEY_PREFIX}{}", p.name),
            name: p.name,
            cluster: p.cluster,
            api: p.api,
            authority: p.authority,
            credential,
            models: ModelMap { models: p.models, default_model: p.default_model },
            vertex,
            azure,
            prefill: p.prefill,
            context_window: p.context_window,
        });
    }

    if raw.chains.is_empty() {
        return Err(err("chains", "at least one chain is required"));
    }
    let mut chains = Vec::with_capacity(raw.chains.len());
    for (i, c) in raw.chains.into_iter().enumerate() {
        let f = |k: &str| format!("chains[{i}].{k}");
        if !c.matcher.path_prefix.starts_with('/') {
            return Err(err(f("match.path_prefix"), "must start with '/'"));
        }
        let header = match c.matcher.header {
            None => None,
            Some(h) => Some((header_name(&f("match.header.name"), &h.name)?, h.value)),
        };
        if c.providers.is_empty() {
            return Err(err(f("providers"), "a chain needs at least one provider"));
        }
        let mut idx = Vec::with_capacity(c.providers.len());
        let mut same_model = Vec::with_capacity(c.providers.len());
        let mut models = Vec::with_capacity(c.providers.len());
        let mut client_api = c.client_api;
        for (j, entry) in c.providers.iter().enumerate() {
            let (name, same) = match entry {
                RawChainEntry::Name(n) => (n, None),
                RawChainEntry::Entry(e) => (&e.provider, e.same_model),
            };
            let mut map = providers.iter().find(|p| &p.name == name).map(|p| p.models.clone()).unwrap_or_default();
            if let RawChainEntry::Entry(e) = entry {
                let ef = |k: &str| format!("chains[{i}].providers[{j}].{k}");
                check_models(&ef, &e.models, e.default_model.as_deref())?;
                map.models.extend(e.models.clone());
                if e.default_model.is_some() {
                    map.default_model = e.default_model.clone();
                }
            }
            models.push(map);
            let Some(k) = providers.iter().position(|p| &p.name == name) else {
                return Err(err(format!("chains[{i}].providers[{j}]"), format!("unknown provider {name:?}")));
            };
            if idx.contains(&k) {
                return Err(err(format!("chains[{i}].providers[{j}]"), format!("provider {name:?} is listed twice")));
            }
            let api = providers.get(k).map_or(ClientApi::Anthropic, |p| p.api.format());
            let client = *client_api.get_or_insert(api);
            // By default a host of the client's own format serves the same model family.
            same_model.push(same.unwrap_or(api == client));
            idx.push(k);
        }
        let failover = match c.failover {
            None => None,
            Some(fo) => Some(validate_failover(&f, fo, &idx, &providers)?),
        };
        let deadlines = match c.deadlines {
            None => Deadlines::default(),
            Some(d) => {
                let mut out = Deadlines::default();
                for (k, v, slot) in [
                    ("first_token_ms", d.first_token_ms, &mut out.first_token_ms),
                    ("json_answer_ms", d.json_answer_ms, &mut out.json_answer_ms),
                    ("stall_ms", d.stall_ms, &mut out.stall_ms),
                    ("total_ms", d.total_ms, &mut out.total_ms),
                ] {
                    if let Some(v) = v {
                        if !(10..=3_600_000).contains(&v) {
                            return Err(err(f(&format!("deadlines.{k}")), "must be between 10 and 3600000 ms"));
                        }
                        *slot = Some(v);
                    }
                }
                out
            }
        };
        let continuation = match c.continuation {
            None => Continuation::default(),
            Some(r) => {
                if !(1..=5).contains(&r.max_attempts) {
                    return Err(err(f("continuation.max_attempts"), "must be between 1 and 5"));
                }
                if !(100..=600_000).contains(&r.timeout_ms) {
                    return Err(err(f("continuation.timeout_ms"), "must be between 100 and 600000 ms"));
                }
                if !(1024..=64 * 1024 * 1024).contains(&r.max_kept_bytes) {
                    return Err(err(f("continuation.max_kept_bytes"), "must be between 1 KiB and 64 MiB"));
                }
                Continuation {
                    enabled: r.enabled,
                    max_attempts: r.max_attempts,
                    timeout_ms: r.timeout_ms,
                    max_kept_bytes: usize::try_from(r.max_kept_bytes).unwrap_or(usize::MAX),
                }
            }
        };
        let (degraded_mode, degraded_notice) = match c.degraded {
            None => (None, None),
            Some(d) => {
                if let Some(n) = &d.notice {
                    if n.trim().is_empty() || n.len() > 4096 {
                        return Err(err(f("degraded.notice"), "must be non-empty and at most 4096 bytes"));
                    }
                }
                (d.mode, d.notice)
            }
        };
        chains.push(Chain {
            failover,
            deadlines,
            continuation,
            degraded_mode,
            degraded_notice,
            name: c.name.unwrap_or_else(|| format!("chain{i}")),
            path_prefix: c.matcher.path_prefix,
            header,
            providers: idx,
            same_model,
            models,
            pass_client_credentials: c.pass_client_credentials,
            client_api: client_api.unwrap_or(ClientApi::Anthropic),
            on_untranslatable: c.on_untranslatable,
        });
    }

    let b = raw.breaker;
    let bf = |k: &str| format!("breaker.{k}");
    if b.buckets == 0 || b.buckets > 60 {
        return Err(err(bf("buckets"), "must be between 1 and 60"));
    }
    if b.window_ms < u64::from(b.buckets) * 10 || b.window_ms > 3_600_000 {
        return Err(err(bf("window_ms"), "must be between 10 ms per bucket and 1 hour"));
    }
    if b.window_ms % u64::from(b.buckets) != 0 {
        return Err(err(bf("window_ms"), "must be a multiple of `buckets`"));
    }
    if b.min_requests == 0 {
        return Err(err(bf("min_requests"), "must be at least 1"));
    }
    if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
        return Err(err(bf("failure_ratio"), "must be in (0, 1]"));
    }
    if b.open_ms == 0 {
        return Err(err(bf("open_ms"), "must be at least 1"));
    }
    if b.max_open_ms < b.open_ms {
        return Err(err(bf("max_open_ms"), "must be at least `open_ms`"));
    }
    if !(b.backoff_multiplier >= 1.0 && b.backoff_multiplier <= 100.0) {
        return Err(err(bf("backoff_multiplier"), "must be in [1, 100]"));
    }
    if !(0.0..1.0).contains(&b.jitter) {
        return Err(err(bf("jitter"), "must be in [0, 1)"));
    }
    if b.half_open_probes == 0 || b.half_open_probes > 1000 {
        return Err(err(bf("half_open_probes"), "must be between 1 and 1000"));
    }
    if b.close_after_successes == 0 || b.close_after_successes > 1000 {
        return Err(err(bf("close_after_successes"), "must be between 1 and 1000"));
    }
    if b.probe_timeout_ms == 0 {
        return Err(err(bf("probe_timeout_ms"), "must be at least 1"));
    }
    if b.max_retry_after_ms < b.default_retry_after_ms {
        return Err(err(bf("max_retry_after_ms"), "must be at least `default_retry_after_ms`"));
    }

    let d = raw.degraded;
    if d.notice.trim().is_empty() || d.notice.len() > 4096 {
        return Err(err("degraded.notice", "must be non-empty and at most 4096 bytes"));
    }

    let route_header = header_name("route_header", &raw.route_header)?;
    let mut client_credential_headers = Vec::with_capacity(raw.client_credential_headers.len());
    for (i, h) in raw.client_credential_headers.iter().enumerate() {
        client_credential_headers.push(header_name(&format!("client_credential_headers[{i}]"), h)?);
    }
    if client_credential_headers.contains(&route_header) {
        return Err(err("route_header", "must not also be a client credential header"));
    }

    if raw.default_max_tokens == 0 || raw.default_max_tokens > 1_000_000 {
        return Err(err("default_max_tokens", "must be between 1 and 1000000"));
    }
    let rb = raw.retry_budget;
    if !(rb.ratio >= 0.0 && rb.ratio <= 10.0) {
        return Err(err("retry_budget.ratio", "must be in [0, 10]"));
    }
    if !(rb.min_per_s >= 0.0 && rb.min_per_s <= 100_000.0) {
        return Err(err("retry_budget.min_per_s", "must be in [0, 100000]"));
    }
    if !(1000..=600_000).contains(&rb.window_ms) || rb.window_ms % 1000 != 0 {
        return Err(err("retry_budget.window_ms", "must be a whole number of seconds between 1000 and 600000"));
    }

    let mut credential_headers = client_credential_headers.clone();
    for p in &providers {
        if let Some(c) = &p.credential {
            if !credential_headers.contains(&c.header) {
                credential_headers.push(c.header.clone());
            }
        }
    }
    Ok(Config {
        credential_headers,
        retry_budget: RetryBudget { ratio: rb.ratio, min_per_s: rb.min_per_s, window_ms: rb.window_ms },
        default_max_tokens: raw.default_max_tokens,
        providers,
        chains,
        breaker: BreakerSettings {
            window_ms: b.window_ms,
            buckets: b.buckets,
            min_requests: b.min_requests,
            failure_ratio: b.failure_ratio,
            consecutive_failures: b.consecutive_failures,
            open_ms: b.open_ms,
            max_open_ms: b.max_open_ms,
            backoff_multiplier: b.backoff_multiplier,
            jitter: b.jitter,
            half_open_probes: b.half_open_probes,
            close_after_successes: b.close_after_successes,
            probe_timeout_ms: b.probe_timeout_ms,
            default_retry_after_ms: b.default_retry_after_ms,
            max_retry_after_ms: b.max_retry_after_ms,
        },
        degraded: DegradedSettings {
            mode: d.mode,
            notice: d.notice,
            retry_after_s: d.retry_after_s,
            on_upstream_failure: d.on_upstream_failure,
        },
        route_header,
        client_credential_headers,
    })
}

impl Config {
    /// How long a worker may hold closed-state successes before writing them to shared data:
    /// at most 100 ms, and never longer than one window bucket.
    pub fn success_flush_ms(&self) -> u64 {
        (self.breaker.window_ms / u64::from(self.breaker.buckets.max(1))).min(100)
    }

    /// The first chain that applies to this request, if any.
    pub fn chain_for(&self, path: &str, header: &dyn Fn(&str) -> Option<String>) -> Option<usize> {
        self.chains.iter().position(|c| c.matches(path, header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = r#"{
        "providers": [
            {"name": "primary", "cluster": "anthropic_primary", "authority": "api.anthropic.com",
             "credential": {"header": "x-api-key", "env": "PRIMARY_KEY"}},
            {"name": "fallback", "cluster": "anthropic_fallback",
             "credential": {"header": "Authorization", "value": "sk-fb", "prefix": "Bearer "}}
        ],
        "chains": [{"match": {"path_prefix": "/v1/messages"}, "providers": ["primary", "fallback"]}]
    }"#;

    fn parse_err(json: &str) -> ConfigError {
        parse(json.as_bytes(), no_env).unwrap_err()
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolves_env_credentials() {
        let c = parse(MINIMAL.as_bytes(), |k| (k == "PRIMARY_KEY").then(|| "sk-primary".to_string())).unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].credential.as_ref().unwrap().value, "sk-primary");
        assert_eq!(c.providers[1].credential.as_ref().unwrap().header, "authorization");
        assert_eq!(c.providers[1].credential.as_ref().unwrap().value, "Bearer sk-fb");
        assert_eq!(c.providers[0].state_key, "llm-failover/v1/provider/primary");
        assert_eq!(c.breaker, BreakerSettings::default());
        assert_eq!(c.degraded.notice, DEFAULT_NOTICE);
        assert_eq!(c.degraded.mode, DegradedMode::Message);
        assert_eq!(c.route_header, "x-llm-failover-cluster");
        assert_eq!(c.chains[0].providers, vec![0, 1]);
        assert!(!c.chains[0].pass_client_credentials);
    }

    #[test]
    fn unknown_field_is_refused_with_its_path() {
        let e = parse_err(r#"{"providers":[{"name":"a","cluster":"c","clustr":"x"}],"chains":[]}"#);
        assert_eq!(e.field, "providers[0].clustr");
        assert!(e.problem.contains("unknown field `clustr`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_nested_field() {
        let e = parse_err(
            r#"{"providers":[{"name":"a","cluster":"c"}],"chains":[{"providers":["a"]}],"breaker":{"min_requests":"ten"}}"#,
        );
        assert_eq!(e.field, "breaker.min_requests");
    }

    #[test]
    fn missing_env_credential_is_refused() {
        let e = parse_err(MINIMAL);
        assert_eq!(e.field, "providers[0].credential.env");
        assert!(e.problem.contains("PRIMARY_KEY"));
    }

    #[test]
    fn credential_needs_exactly_one_source() {
        let e = parse_err(
            r#"{"providers":[{"name":"a","cluster":"c","credential":{"header":"x-api-key","value":"v","env":"E"}}],"chains":[{"providers":["a"]}]}"#,
        );
        assert_eq!(e.field, "providers[0].credential");
    }

    #[test]
    fn chain_referencing_unknown_provider_is_refused() {
        let e = parse_err(r#"{"providers":[{"name":"a","cluster":"c"}],"chains":[{"providers":["a","b"]}]}"#);
        assert_eq!(e.field, "chains[0].providers[1]");
        assert!(e.problem.contains("\"b\""));
    }

    #[test]
    fn bad_breaker_values_are_refused() {
        for (breaker, field) in [
            (r#"{"failure_ratio": 1.5}"#, "breaker.failure_ratio"),
            (r#"{"buckets": 0}"#, "breaker.buckets"),
            (r#"{"window_ms": 1000, "buckets": 3}"#, "breaker.window_ms"),
            (r#"{"open_ms": 5000, "max_open_ms": 1000}"#, "breaker.max_open_ms"),
            (r#"{"jitter": 1.0}"#, "breaker.jitter"),
            (r#"{"half_open_probes": 0}"#, "breaker.half_open_probes"),
        ] {
            let json = format!(
                r#"{{"providers":[{{"name":"a","cluster":"c"}}],"chains":[{{"providers":["a"]}}],"breaker":{breaker}}}"#
            );
            assert_eq!(parse_err(&json).field, field, "{breaker}");
        }
    }

    #[test]
    fn invalid_provider_names_and_duplicates_are_refused() {
        let e = parse_err(r#"{"providers":[{"name":"a b","cluster":"c"}],"chains":[{"providers":["a b"]}]}"#);
        assert_eq!(e.field, "providers[0].name");
        let e = parse_err(r#"{"providers":[{"name":"a","cluster":"c"},{"name":"a","cluster":"d"}],"chains":[]}"#);
        assert_eq!(e.field, "providers[1].name");
    }

    #[test]
    fn empty_and_malformed_json_are_refused() {
        assert_eq!(parse_err("").field, "(root)");
        let e = parse_err("{not json");
        assert_eq!(e.field, "(root)");
        let e = parse_err(r#"{"chains":[]}"#);
        assert!(e.problem.contains("missing field `providers`"), "{e}");
    }

    #[test]
    fn error_display_names_field_and_never_a_secret() {
        let e = parse_err(
            r#"{"providers":[{"name":"a","cluster":"c","credential":{"header":"bad header","value":"sk-secret"}}],"chains":[{"providers":["a"]}]}"#,
        );
        let s = e.to_string();
        assert!(s.contains("providers[0].credential.header"), "{s}");
        assert!(!s.contains("sk-secret"));
        let c = parse(
            r#"{"providers":[{"name":"a","cluster":"c","credential":{"header":"x-api-key","value":"sk-secret"}}],"chains":[{"providers":["a"]}]}"#.as_bytes(),
            no_env,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    #[test]
    fn chain_matching_by_path_and_header() {
        let c = parse(
            r#"{"providers":[{"name":"a","cluster":"c"}],"chains":[
                {"match":{"path_prefix":"/v1/messages","header":{"name":"X-Tenant","value":"gold"}},"providers":["a"]},
                {"match":{"path_prefix":"/v1/messages"},"providers":["a"]}]}"#
                .as_bytes(),
            no_env,
        )
        .unwrap();
        let gold = |h: &str| (h == "x-tenant").then(|| "gold".to_string());
        let silver = |h: &str| (h == "x-tenant").then(|| "silver".to_string());
        let none = |_: &str| None;
        assert_eq!(c.chain_for("/v1/messages", &gold), Some(0));
        assert_eq!(c.chain_for("/v1/messages", &silver), Some(1));
        assert_eq!(c.chain_for("/v1/messages?beta=true", &none), Some(1));
        assert_eq!(c.chain_for("/v2/other", &none), None);
    }

    const HOSTS: &str = r#"{
        "providers": [
            {"name":"anthropic","cluster":"a"},
            {"name":"vertex","cluster":"v","api":"vertex","vertex":{"project":"p-1","region":"us-east5"},
             "models":{"claude-opus-4-6":"claude-opus-4-6@20260201"}},
            {"name":"bedrock","cluster":"b","api":"bedrock","models":{"claude-opus-4-6":"us.anthropic.claude-opus-4-6-v1:0"}},
            {"name":"openai","cluster":"o","api":"openai"},
            {"name":"azure","cluster":"z","api":"azure_openai","azure":{"api_version":"2024-10-21"}}
        ],
        "chains": [
            {"providers":["anthropic","vertex","bedrock",{"provider":"openai","models":{"claude-opus-4-6":"gpt-4o"}}]},
            {"match":{"path_prefix":"/v1/chat"},"providers":["openai",{"provider":"azure","default_model":"prod"},
              {"provider":"anthropic","same_model":true,"models":{"gpt-4o":"claude-opus-4-6"}}]}
        ]
    }"#;

    #[test]
    fn hosts_chains_and_model_maps() {
        let c = parse(HOSTS.as_bytes(), no_env).unwrap();
        let (claude, gpt) = (&c.chains[0], &c.chains[1]);
        assert_eq!(claude.client_api, ClientApi::Anthropic);
        assert_eq!(gpt.client_api, ClientApi::OpenAi);
        // Claude hosts serve the same model; another vendor does not, unless the entry says so.
        assert_eq!(claude.same_model, vec![true, true, true, false]);
        assert_eq!(gpt.same_model, vec![true, true, true]);
        let (a, o) = (Api::Anthropic, Api::OpenAi);
        // The claude chain's first host passes requests through untouched: the hot path.
        assert!(claude.models[0].passes_through(a, ClientApi::Anthropic, None));
        // Its OpenAI entry maps Claude to GPT for this chain only.
        assert_eq!(claude.models[3].model_for(o, ClientApi::Anthropic, "claude-opus-4-6"), Some("gpt-4o"));
        assert_eq!(claude.models[3].model_for(o, ClientApi::Anthropic, "claude-haiku-4-5"), None);
        assert!(gpt.models[0].passes_through(o, ClientApi::OpenAi, None));
        assert_eq!(gpt.models[1].model_for(Api::AzureOpenAi, ClientApi::OpenAi, "anything"), Some("prod"));
        // Bedrock needs a mapping; Vertex takes an unmapped Claude name as is.
        assert_eq!(claude.models[2].model_for(Api::Bedrock, ClientApi::Anthropic, "claude-haiku-4-5"), None);
        assert_eq!(
            claude.models[1].model_for(Api::Vertex, ClientApi::Anthropic, "claude-haiku-4-5"),
            Some("claude-haiku-4-5")
        );
        assert_eq!(c.providers[1].vertex, Some(VertexSettings { project: "p-1".into(), region: "us-east5".into() }));
        assert_eq!(claude.on_untranslatable, OnUntranslatable::Refuse);
        assert_eq!(c.default_max_tokens, 4096);
    }

    #[test]
    fn host_settings_are_required_where_needed_and_refused_elsewhere() {
        let one = |p: &str| format!(r#"{{"providers":[{p}],"chains":[{{"providers":["x"]}}]}}"#);
        for (p, field) in [
            (r#"{"name":"x","cluster":"c","api":"vertex"}"#, "providers[0].vertex"),
            (r#"{"name":"x","cluster":"c","api":"azure_openai"}"#, "providers[0].azure"),
            (r#"{"name":"x","cluster":"c","azure":{"api_version":"1"}}"#, "providers[0].azure"),
            (
                r#"{"name":"x","cluster":"c","api":"vertex","vertex":{"project":"a/b","region":"r"}}"#,
                "providers[0].vertex.project",
            ),
            (r#"{"name":"x","cluster":"c","api":"vertex","vertex":{"project":"p"}}"#, "providers[0].vertex"),
            (r#"{"name":"x","cluster":"c","api":"bedrok"}"#, "providers[0].api"),
            (r#"{"name":"x","cluster":"c","models":{"a":"b/c"}}"#, "providers[0].models.a"),
            (r#"{"name":"x","cluster":"c","default_model":""}"#, "providers[0].default_model"),
        ] {
            assert_eq!(parse_err(&one(p)).field, field, "{p}");
        }
        let e = parse_err(
            r#"{"providers":[{"name":"x","cluster":"c"}],"chains":[{"providers":[{"provider":"x","models":{"m":"a b"}}]}]}"#,
        );
        assert_eq!(e.field, "chains[0].providers[0].models.m");
        let e = parse_err(
            r#"{"providers":[{"name":"x","cluster":"c"}],"chains":[{"providers":["x"],"on_untranslatable":"drop"}]}"#,
        );
        assert_eq!(e.field, "chains[0].on_untranslatable");
    }
}

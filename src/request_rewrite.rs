//! What a request must become for the provider chosen to serve it: the path, the body and the
//! model, for every pair of client format and host API.
//!
//! A request that goes to a host of its own format under its own model name passes through
//! untouched (the hot path: only headers change, decided at the request headers). Everything
//! else is rewritten here once the body is in:
//! - the model is mapped ([`crate::config::Provider::model_for`]);
//! - an OpenAI body for an Anthropic-format host, or the reverse, is translated
//!   ([`crate::translate::request`]);
//! - the host's envelope is applied: Vertex and Bedrock move the model into the URL and take
//!   `anthropic_version` in the body ([`crate::providers::vertex`], [`crate::providers::bedrock`]);
//!   Azure names the deployment in the URL ([`crate::providers::azure`]).

use crate::config::{Api, ClientApi, ModelMap, Provider};
use crate::degraded::LocalResponse;
use crate::providers::{azure, bedrock, vertex};
use crate::translate::request::{anthropic_to_openai, openai_to_anthropic, RequestOptions};
use crate::translate::Untranslatable;
use serde_json::{json, Value};

/// The Anthropic API version sent with requests translated from OpenAI.
pub const ANTHROPIC_API_VERSION: &str = "2023-06-01";

/// A request ready for its host.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub path: String,
    pub body: Vec<u8>,
    /// The model the host is asked for (sent back as `x-llm-model`).
    pub model: String,
    pub stream: bool,
    /// An OpenAI client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Headers the host needs that the client did not send.
    pub add_headers: Vec<(&'static str, &'static str)>,
}

/// Why a provider cannot take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// No model mapping for the client's model on this host.
    NoModel,
    /// The body is not a JSON object (or lacks a model where one is needed).
    BadBody,
    /// A feature the host's API cannot express.
    Untranslatable(Untranslatable),
}

/// The client's request, parsed once for every provider the chain walk considers.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub api: ClientApi,
    /// The path the client called (kept when the host speaks the client's format).
    pub path: String,
    pub body: Value,
    /// The client's `anthropic-beta` header values (Bedrock takes them in the body).
    pub betas: Vec<String>,
}

impl ClientRequest {
    pub fn parse(api: ClientApi, path: &str, body: &[u8]) -> Option<Self> {
        let body: Value = serde_json::from_slice(body).ok()?;
        body.is_object().then(|| ClientRequest { api, path: path.to_string(), body, betas: Vec::new() })
    }

    /// Adds the client's `anthropic-beta` header (comma-separated beta names).
    pub fn with_betas(mut self, header: Option<&str>) -> Self {
        if let Some(h) = header {
            self.betas = h.split(',').map(str::trim).filter(|b| !b.is_empty()).map(str::to_string).collect();
        }
        self
    }

    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    pub fn stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool).unwrap_or(false)
    }
}

/// Builds the request `provider` needs, with `models` the chain entry's model map.
pub fn rewrite(
    req: &ClientRequest,
    provider: &Provider,
    models: &ModelMap,
    default_max_tokens: u32,
) -> Result<Rewrite, Unfit> {
    let client_model = req.model().ok_or(Unfit::BadBody)?;
    let model = models.model_for(provider.api, req.api, client_model).ok_or(Unfit::NoModel)?.to_string();
    let stream = req.stream();
    let include_usage =
        req.body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let opts = RequestOptions { model: &model, default_max_tokens };
    let mut body = match (req.api, provider.api.format()) {
        (ClientApi::Anthropic, ClientApi::OpenAi) => {
            anthropic_to_openai(&req.body, &opts).map_err(Unfit::Untranslatable)?
        }
        (ClientApi::OpenAi, ClientApi::Anthropic) => {
            openai_to_anthropic(&req.body, &opts).map_err(Unfit::Untranslatable)?
        }
        _ => {
            let mut b = req.body.clone();
            if let Some(o) = b.as_object_mut() {
                o.insert("model".into(), Value::from(model.as_str()));
            }
            b
        }
    };
    let same_format = req.api == provider.api.format();
    let mut add_headers = Vec::new();
    let obj = body.as_object_mut().ok_or(Unfit::BadBody)?;
    let path = match provider.api {
        Api::Anthropic => {
            if !same_format {
                add_headers.push(("anthropic-version", ANTHROPIC_API_VERSION));
            }
            if same_format {
                req.path.clone()
            } else {
                "/v1/messages".to_string()
            }
        }
        Api::OpenAi => {
            if same_format {
                req.path.clone()
            } else {
                "/v1/chat/completions".to_string()
            }
        }
        Api::Vertex => {
            vertex::envelope(obj);
            let v = provider.vertex.as_ref().ok_or(Unfit::BadBody)?;
            vertex::path(v, &model, stream)
        }
        Api::Bedrock => {
            bedrock::envelope(obj);
            // Bedrock reads beta flags from the body, not from an `anthropic-beta` header.
            if !req.betas.is_empty() && !obj.contains_key("anthropic_beta") {
                obj.insert("anthropic_beta".into(), Value::from(req.betas.clone()));
            }
            bedrock::path(&model, stream)
        }
        Api::AzureOpenAi => {
            let a = provider.azure.as_ref().ok_or(Unfit::BadBody)?;
            azure::path(a, &model)
        }
    };
    let body = serde_json::to_vec(&body).map_err(|_| Unfit::BadBody)?;
    Ok(Rewrite { path, body, model, stream, include_usage, add_headers })
}

/// The 400 a client gets when its request cannot be expressed for the provider that must serve
/// it (the chain says `on_untranslatable: refuse`), in the client's own format.
pub fn refusal(api: ClientApi, provider: &str, u: &Untranslatable) -> LocalResponse {
    let message = format!(
        "llm-failover: this request cannot be sent to fallback provider {provider}: `{}`: {}",
        u.field, u.reason
    );
    let body = match api {
        ClientApi::Anthropic => {
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
        }
        ClientApi::OpenAi => json!({"error": {"message": message, "type": "invalid_request_error",
                                               "param": u.field, "code": "untranslatable_for_fallback"}}),
    };
    LocalResponse {
        status: 400,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("x-llm-failover-refused", provider.to_string()),
        ],
        body: body.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn cfg() -> config::Config {
        config::parse(
            br#"{"providers":[
                {"name":"anthropic","cluster":"a"},
                {"name":"vertex","cluster":"v","api":"vertex","vertex":{"project":"p","region":"us-east5"},
                 "models":{"claude-opus-4-6":"claude-opus-4-6@20260201"}},
                {"name":"bedrock","cluster":"b","api":"bedrock","models":{"claude-opus-4-6":"us.anthropic.claude-opus-4-6-v1:0"}},
                {"name":"openai","cluster":"o","api":"openai","models":{"claude-opus-4-6":"gpt-5"}},
                {"name":"azure","cluster":"z","api":"azure_openai","azure":{"api_version":"2024-10-21"},
                 "models":{"gpt-5":"prod-gpt5"}}],
              "chains":[{"providers":["anthropic","vertex","bedrock","openai"]},
                        {"match":{"path_prefix":"/v1/chat"},"providers":["openai","azure","anthropic"]}]}"#,
            |_| None,
        )
        .unwrap()
    }

    fn anthropic_req(stream: bool) -> ClientRequest {
        let body = json!({"model": "claude-opus-4-6", "max_tokens": 64, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]});
        ClientRequest::parse(ClientApi::Anthropic, "/v1/messages?beta=true", body.to_string().as_bytes()).unwrap()
    }

    fn body(r: &Rewrite) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn vertex_gets_its_url_model_and_version() {
        let c = cfg();
        let r = rewrite(&anthropic_req(true), &c.providers[1], &c.providers[1].models, 4096).unwrap();
        assert_eq!(
            r.path,
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-opus-4-6@20260201:streamRawPredict"
        );
        assert_eq!(r.model, "claude-opus-4-6@20260201");
        let b = body(&r);
        assert!(b.get("model").is_none());
        assert_eq!(b["anthropic_version"], "vertex-2023-10-16");
        assert_eq!(b["stream"], true);
    }

    #[test]
    fn bedrock_gets_its_model_id_path_and_no_stream_field() {
        let c = cfg();
        let r = rewrite(&anthropic_req(true), &c.providers[2], &c.providers[2].models, 4096).unwrap();
        assert_eq!(r.path, "/model/us.anthropic.claude-opus-4-6-v1%3A0/invoke-with-response-stream");
        let b = body(&r);
        assert!(b.get("model").is_none() && b.get("stream").is_none());
        assert_eq!(b["anthropic_version"], "bedrock-2023-05-31");
        assert!(r.stream);
        let r = rewrite(&anthropic_req(false), &c.providers[2], &c.providers[2].models, 4096).unwrap();
        assert_eq!(r.path, "/model/us.anthropic.claude-opus-4-6-v1%3A0/invoke");
    }

    #[test]
    fn bedrock_takes_beta_flags_in_the_body() {
        let c = cfg();
        let req = anthropic_req(false).with_betas(Some("context-1m-2025-08-07, token-efficient-tools-2025-02-19"));
        let r = rewrite(&req, &c.providers[2], &c.providers[2].models, 4096).unwrap();
        assert_eq!(body(&r)["anthropic_beta"], json!(["context-1m-2025-08-07", "token-efficient-tools-2025-02-19"]));
        // Other hosts take the header as it is.
        let r = rewrite(&req, &c.providers[1], &c.providers[1].models, 4096).unwrap();
        assert!(body(&r).get("anthropic_beta").is_none());
    }

    #[test]
    fn unmapped_models_skip_hosts_that_need_a_mapping() {
        let c = cfg();
        let mut req = anthropic_req(false);
        req.body["model"] = json!("claude-haiku-4-5");
        assert_eq!(rewrite(&req, &c.providers[2], &c.providers[2].models, 4096), Err(Unfit::NoModel)); // bedrock
        assert_eq!(rewrite(&req, &c.providers[3], &c.providers[3].models, 4096), Err(Unfit::NoModel)); // another vendor
                                                                                                       // Vertex accepts the client's Claude name as is.
        let r = rewrite(&req, &c.providers[1], &c.providers[1].models, 4096).unwrap();
        assert!(r.path.contains("/models/claude-haiku-4-5:rawPredict"));
    }

    #[test]
    fn same_format_hosts_keep_the_client_path() {
        let c = cfg();
        let r = rewrite(&anthropic_req(false), &c.providers[0], &c.providers[0].models, 4096).unwrap();
        assert_eq!(r.path, "/v1/messages?beta=true");
        assert!(r.add_headers.is_empty());
    }

    #[test]
    fn azure_names_the_deployment() {
        let c = cfg();
        let body = json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]});
        let req = ClientRequest::parse(ClientApi::OpenAi, "/v1/chat/completions", body.to_string().as_bytes()).unwrap();
        let r = rewrite(&req, &c.providers[4], &c.providers[4].models, 4096).unwrap();
        assert_eq!(r.path, "/openai/deployments/prod-gpt5/chat/completions?api-version=2024-10-21");
        assert_eq!(r.model, "prod-gpt5");
    }

    #[test]
    fn refusal_names_the_field_in_the_clients_format() {
        let u = Untranslatable { field: "top_k".into(), reason: "OpenAI has no top_k".into() };
        let r = refusal(ClientApi::Anthropic, "openai", &u);
        assert_eq!(r.status, 400);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("`top_k`"));
        let v: Value = serde_json::from_slice(&refusal(ClientApi::OpenAi, "anthropic", &u).body).unwrap();
        assert_eq!(v["error"]["param"], "top_k");
    }

    #[test]
    fn non_json_bodies_are_unfit() {
        assert!(ClientRequest::parse(ClientApi::Anthropic, "/", b"not json").is_none());
        assert!(ClientRequest::parse(ClientApi::Anthropic, "/", b"[1]").is_none());
        let req = ClientRequest::parse(ClientApi::Anthropic, "/", b"{}").unwrap();
        assert_eq!(rewrite(&req, &cfg().providers[1], &cfg().providers[1].models, 1), Err(Unfit::BadBody));
    }
}

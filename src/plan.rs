//! Which providers may serve a request, in which order, and what each attempt's request must
//! look like: the only walk of a chain.
//!
//! [`walk`] goes through the chain in order and keeps every provider that can serve the request
//! (the client's same-model wish, a model mapping, a translatable request) and whose breaker
//! admits it: the first is admitted for real (a half-open probe slot claimed), the later ones
//! only looked at, since they are tried only if those before them fail. [`failover_cluster`]
//! then picks the Envoy cluster whose router retries walk that plan.
//!
//! [`attempt_edits`] says which request headers an attempt at one provider must set and remove,
//! under one rule: a provider's configured credential goes only to that provider, and the
//! client's own credential headers reach only the provider the client addressed (the chain's
//! first), and only when the chain allows it. Every attempt removes every other party's
//! credential, because Envoy carries one attempt's header edits over to the next.

use crate::breaker::{Admission, Peek};
use crate::config::OnUntranslatable;
use crate::config::{Chain, Config, FailoverCluster};
use crate::health::Health;
use crate::request_rewrite::{Rewrite, Unfit};
use crate::translate::Untranslatable;

/// One provider of a request's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// Position in the chain (0 = the provider the client addressed).
    pub position: usize,
    /// Admitted as a half-open probe (only the plan's first is admitted at planning time).
    pub probe: bool,
}

/// The result of walking a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Walk {
    /// Providers that can serve, in chain order; the first one is admitted.
    pub plan: Vec<Planned>,
    /// Without the body, the walk stopped at this chain position: the provider there needs the
    /// body (its model mapping or translation) to know whether it fits.
    pub needs_body_at: Option<usize>,
    /// The provider that had to serve cannot express the request (`on_untranslatable: refuse`).
    pub refusal: Option<(usize, Untranslatable)>,
    /// The first provider's rewritten request, when it needs one (computed to check its fit).
    pub first_rewrite: Option<Rewrite>,
}

/// What the walk knows of the request.
#[derive(Debug, Clone, Copy)]
pub struct WalkInput<'a> {
    /// The body is in (else the walk stops at the first provider that needs it).
    pub body_known: bool,
    /// The client's model, from the body.
    pub model: Option<&'a str>,
    /// The client accepts only hosts of the same model (`x-llm-failover-same-model: required`).
    pub same_model_only: bool,
    /// Stop after this many providers (1: the request gets one attempt).
    pub max: usize,
    pub now_ms: u64,
}

/// Rewrites the request for (provider, chain position): how the walk checks that the first
/// provider needing a rewrite can take the request.
pub type Rewriter<'a> = dyn FnMut(usize, usize) -> Result<Rewrite, Unfit> + 'a;

/// Walks `chain` (see the module documentation).
pub fn walk(
    cfg: &Config,
    chain: &Chain,
    input: WalkInput<'_>,
    rewriter: &mut Rewriter<'_>,
    health: &mut dyn Health,
) -> Walk {
    let mut out = Walk { plan: Vec::new(), needs_body_at: None, refusal: None, first_rewrite: None };
    let client = chain.client_api;
    for (position, &p) in chain.providers.iter().enumerate() {
        if out.plan.len() >= input.max.max(1) {
            break;
        }
        if input.same_model_only && !chain.same_model.get(position).copied().unwrap_or(false) {
            continue;
        }
        let (Some(provider), Some(models)) = (cfg.providers.get(p), chain.models.get(position)) else { continue };
        let model = input.model;
        let passes = models.passes_through(provider.api, client, model);
        if !passes {
            if !input.body_known {
                // The body decides whether this provider fits: stop here.
                if out.plan.is_empty() {
                    out.needs_body_at = Some(position);
                }
                break;
            }
            let Some(m) = model else { continue };
            if models.model_for(provider.api, client, m).is_none() {
                continue;
            }
        }
        if !out.plan.is_empty() {
            match health.peek(p, input.now_ms) {
                Peek::Admit | Peek::NeedsClaim => out.plan.push(Planned { provider: p, position, probe: false }),
                Peek::Reject(_) => continue,
            }
            continue;
        }
        // The first to serve. Its breaker is asked before any rewrite work: a request never
        // pays for rewriting itself for a host that will not take it.
        let probe = match health.claim(p, input.now_ms) {
            Admission::Admit => false,
            Admission::Probe => true,
            Admission::Reject(_) => continue,
        };
        let mut rewritten = None;
        if !passes {
            // Rewritten now, both to check the fit and to send it.
            match rewriter(p, position) {
                Ok(rw) => rewritten = Some(rw),
                Err(e) => {
                    if probe {
                        health.abandon_probe(p);
                    }
                    match e {
                        Unfit::Untranslatable(u) if chain.on_untranslatable == OnUntranslatable::Refuse => {
                            out.refusal = Some((p, u));
                            return out;
                        }
                        _ => continue,
                    }
                }
            }
        }
        out.plan.push(Planned { provider: p, position, probe });
        out.first_rewrite = rewritten;
    }
    out
}

/// The failover cluster that walks the longest part of `plan` that it can: its providers are a
/// subsequence of the plan starting with the plan's first. None: no such cluster (the request
/// goes to the first provider's own cluster and its retries stay there).
pub fn failover_cluster<'a>(clusters: &'a [FailoverCluster], plan: &[Planned]) -> Option<&'a FailoverCluster> {
    let first = plan.first()?.provider;
    clusters
        .iter()
        .filter(|c| c.providers.first() == Some(&first) && is_subsequence(&c.providers, plan))
        .max_by_key(|c| c.providers.len())
}

fn is_subsequence(providers: &[usize], plan: &[Planned]) -> bool {
    let mut it = plan.iter();
    providers.iter().all(|p| it.any(|q| q.provider == *p))
}

/// Header edits: (name, Some(value) to set | None to remove).
pub type HeaderEdits = Vec<(String, Option<String>)>;

/// Where an attempt goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub provider: usize,
    /// Its position in the chain.
    pub position: usize,
    /// The client's original `:authority` and `:path`.
    pub authority: Option<&'a str>,
    pub path: &'a str,
    /// The request rewritten for this provider, if it needs one.
    pub rewrite: Option<&'a Rewrite>,
}

/// The headers an attempt at `t` must set and remove. `current` looks up the request's headers
/// as they are now (after earlier attempts' edits).
pub fn attempt_edits(
    cfg: &Config,
    chain: &Chain,
    t: &Target<'_>,
    current: &dyn Fn(&str) -> Option<String>,
) -> HeaderEdits {
    let Target { provider, position, authority, path, rewrite: rw } = *t;
    let mut edits = HeaderEdits::new();
    let Some(p) = cfg.providers.get(provider) else { return edits };
    let keep_client = p.credential.is_none() && position == 0 && chain.pass_client_credentials;
    for name in &cfg.credential_headers {
        match &p.credential {
            Some(c) if &c.header == name => {
                if current(name).as_deref() != Some(c.value.as_str()) {
                    edits.push((name.clone(), Some(c.value.clone())));
                }
            }
            _ if keep_client && cfg.client_credential_headers.contains(name) => {}
            _ => {
                if current(name).is_some() {
                    edits.push((name.clone(), None));
                }
            }
        }
    }
    let want_authority = p.authority.as_deref().or(authority);
    if let Some(a) = want_authority {
        if current(":authority").as_deref() != Some(a) {
            edits.push((":authority".to_string(), Some(a.to_string())));
        }
    }
    let want_path = rw.map_or(path, |r| r.path.as_str());
    if current(":path").as_deref() != Some(want_path) {
        edits.push((":path".to_string(), Some(want_path.to_string())));
    }
    if let Some(rw) = rw {
        for (k, v) in &rw.add_headers {
            edits.push(((*k).to_string(), Some((*v).to_string())));
        }
        if current("content-length").is_some() {
            edits.push(("content-length".to_string(), None));
        }
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Rejection;
    use crate::config;
    use crate::health::MemHealth;

    fn cfg(pass: bool) -> Config {
        let json = format!(
            r#"{{"providers":[
                {{"name":"a","cluster":"ca","authority":"a.example"}},
                {{"name":"b","cluster":"cb","credential":{{"header":"x-api-key","value":"kb"}}}},
                {{"name":"c","cluster":"cc","credential":{{"header":"authorization","value":"Bearer kc"}}}}],
              "chains":[{{"providers":["a","b","c"],"pass_client_credentials":{pass},
                "failover":{{"clusters":[{{"cluster":"abc","providers":["a","b","c"]}},
                                         {{"cluster":"bc","providers":["b","c"]}},
                                         {{"cluster":"ac","providers":["a","c"]}}]}}}}]}}"#
        );
        config::parse(json.as_bytes(), |_| None).unwrap()
    }

    fn target(provider: usize, position: usize, authority: Option<&'static str>) -> Target<'static> {
        Target { provider, position, authority, path: "/v1/messages", rewrite: None }
    }

    fn input(max: usize) -> WalkInput<'static> {
        WalkInput { body_known: false, model: None, same_model_only: false, max, now_ms: 1_000 }
    }

    fn no_rewrite(_: usize, _: usize) -> Result<Rewrite, Unfit> {
        Err(Unfit::BadBody)
    }

    fn open(h: &mut MemHealth, p: usize) {
        for _ in 0..h.settings.consecutive_failures {
            h.record(p, crate::classify::Outcome::ServerError, false, 1_000);
        }
        assert_eq!(h.peek(p, 1_000), Peek::Reject(Rejection::Open));
    }

    #[test]
    fn the_plan_is_every_admissible_provider_in_chain_order() {
        let c = cfg(false);
        let mut h = MemHealth::new(3, &c.breaker);
        let w = walk(&c, &c.chains[0], input(10), &mut no_rewrite, &mut h);
        let order: Vec<usize> = w.plan.iter().map(|p| p.provider).collect();
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(failover_cluster(&c.chains[0].failover.as_ref().unwrap().clusters, &w.plan).unwrap().cluster, "abc");
        // max 1: one attempt.
        assert_eq!(walk(&c, &c.chains[0], input(1), &mut no_rewrite, &mut h).plan.len(), 1);
    }

    #[test]
    fn open_providers_leave_the_plan_and_the_cluster_follows() {
        let c = cfg(false);
        let clusters = &c.chains[0].failover.as_ref().unwrap().clusters;
        let mut h = MemHealth::new(3, &c.breaker);
        open(&mut h, 0);
        let w = walk(&c, &c.chains[0], input(10), &mut no_rewrite, &mut h);
        assert_eq!(w.plan.iter().map(|p| p.provider).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(failover_cluster(clusters, &w.plan).unwrap().cluster, "bc");
        // A gap in the middle: a cluster that skips it.
        let mut h = MemHealth::new(3, &c.breaker);
        open(&mut h, 1);
        let w = walk(&c, &c.chains[0], input(10), &mut no_rewrite, &mut h);
        assert_eq!(failover_cluster(clusters, &w.plan).unwrap().cluster, "ac");
        // Only the last left: its own cluster.
        let mut h = MemHealth::new(3, &c.breaker);
        open(&mut h, 0);
        open(&mut h, 1);
        let w = walk(&c, &c.chains[0], input(10), &mut no_rewrite, &mut h);
        assert_eq!(w.plan.len(), 1);
        assert_eq!(failover_cluster(clusters, &w.plan), None);
    }

    #[test]
    fn the_breaker_is_asked_before_the_request_is_rewritten() {
        let c = config::parse(
            br#"{"providers":[
                {"name":"bedrock","cluster":"cbr","api":"bedrock","models":{"claude-opus-4-6":"us.anthropic.claude-opus-4-6-v1:0"}},
                {"name":"b","cluster":"cb"}],
              "chains":[{"providers":["bedrock","b"]}]}"#,
            |_| None,
        )
        .unwrap();
        let mut h = MemHealth::new(2, &c.breaker);
        open(&mut h, 0);
        let mut rewrites = 0;
        let mut count = |_: usize, _: usize| -> Result<Rewrite, Unfit> {
            rewrites += 1;
            Err(Unfit::BadBody)
        };
        let with_body = WalkInput { body_known: true, model: Some("claude-opus-4-6"), ..input(10) };
        let w = walk(&c, &c.chains[0], with_body, &mut count, &mut h);
        assert_eq!(w.plan.iter().map(|p| p.provider).collect::<Vec<_>>(), vec![1]);
        assert_eq!(rewrites, 0, "an open breaker's host costs no rewrite");
    }

    #[test]
    fn only_the_first_is_claimed_a_half_open_later_provider_is_only_looked_at() {
        let c = cfg(false);
        let mut h = MemHealth::new(3, &c.breaker);
        open(&mut h, 1);
        // Past b's open period: a request looks at it without claiming its probe slot.
        let later = WalkInput { now_ms: 1_000 + c.breaker.max_open_ms * 2, ..input(10) };
        let w = walk(&c, &c.chains[0], later, &mut no_rewrite, &mut h);
        assert_eq!(w.plan.len(), 3);
        assert!(!w.plan[1].probe);
        assert_eq!(h.peek(1, later.now_ms), Peek::NeedsClaim, "b's probe slot is still free");
    }

    #[test]
    fn client_credentials_reach_only_the_addressed_provider_when_allowed() {
        let c = cfg(true);
        let headers = |n: &str| match n {
            "x-api-key" => Some("client-key".to_string()),
            "authorization" => Some("Bearer client".to_string()),
            ":path" => Some("/v1/messages".to_string()),
            _ => None,
        };
        let e = attempt_edits(&c, &c.chains[0], &target(0, 0, None), &headers);
        assert_eq!(e, vec![(":authority".to_string(), Some("a.example".to_string()))]);
        // Not allowed by the chain: stripped even for the first provider.
        let c2 = cfg(false);
        let e = attempt_edits(&c2, &c2.chains[0], &target(0, 0, None), &headers);
        assert!(e.contains(&("x-api-key".to_string(), None)));
        assert!(e.contains(&("authorization".to_string(), None)));
    }

    #[test]
    fn an_attempt_removes_every_other_partys_credential() {
        let c = cfg(true);
        // After an attempt at b (x-api-key: kb), the next at c must not carry b's key.
        let after_b = |n: &str| match n {
            "x-api-key" => Some("kb".to_string()),
            ":authority" => Some("a.example".to_string()),
            ":path" => Some("/v1/messages".to_string()),
            _ => None,
        };
        let e = attempt_edits(&c, &c.chains[0], &target(2, 2, Some("client.example")), &after_b);
        assert!(e.contains(&("x-api-key".to_string(), None)), "{e:?}");
        assert!(e.contains(&("authorization".to_string(), Some("Bearer kc".to_string()))));
        assert!(e.contains(&(":authority".to_string(), Some("client.example".to_string()))), "original authority back");
        let e = attempt_edits(&c, &c.chains[0], &target(1, 1, None), &after_b);
        assert!(e.iter().all(|(k, _)| k != "x-api-key"), "its own key is already set");
    }
}

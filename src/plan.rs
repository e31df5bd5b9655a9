//! Which provider serves a request, and what the request must look like for it.
//!
//! [`choose`] walks a chain in order and takes the first provider whose breaker admits the
//! request. [`request_edits`] then says which headers to set and strip: the routing header the
//! Envoy route reads with `cluster_header`, `:authority`, and credentials, under one rule:
//! a provider's configured credential goes only to that provider, and the client's own
//! credential headers reach only the provider the client addressed (the chain's first), and
//! only when the chain allows it.

use crate::breaker::{Admission, Rejection};
use crate::config::{Chain, Config, Credential};

/// The provider picked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// Position in the chain (0 = the provider the client addressed; >0 = a failover).
    pub position: usize,
    /// Admitted as a half-open probe: its outcome must be reported.
    pub probe: bool,
}

/// The result of walking a chain: a choice, or none (degraded), with what each skipped
/// provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub choice: Option<Choice>,
    /// (provider index, why it was skipped), in chain order.
    pub skipped: Vec<(usize, Rejection)>,
}

/// Walks `chain`, asking `admit` for each provider in order; stops at the first admission.
pub fn choose(chain: &Chain, mut admit: impl FnMut(usize) -> Admission) -> Plan {
    let mut skipped = Vec::new();
    for (position, &provider) in chain.providers.iter().enumerate() {
        match admit(provider) {
            Admission::Admit => return Plan { choice: Some(Choice { provider, position, probe: false }), skipped },
            Admission::Probe => return Plan { choice: Some(Choice { provider, position, probe: true }), skipped },
            Admission::Reject(r) => skipped.push((provider, r)),
        }
    }
    Plan { choice: None, skipped }
}

/// Header changes for the chosen provider.
#[derive(Debug, PartialEq, Eq)]
pub struct Edits<'a> {
    /// Value of the routing header (the Envoy cluster).
    pub cluster: &'a str,
    pub authority: Option<&'a str>,
    /// Client credential headers to remove.
    pub strip: &'a [String],
    /// The provider's credential to set (after stripping).
    pub credential: Option<&'a Credential>,
}

pub fn request_edits<'a>(cfg: &'a Config, chain: &Chain, choice: Choice) -> Option<Edits<'a>> {
    let p = cfg.providers.get(choice.provider)?;
    let keep_client = p.credential.is_none() && choice.position == 0 && chain.pass_client_credentials;
    Some(Edits {
        cluster: &p.cluster,
        authority: p.authority.as_deref(),
        strip: if keep_client { &[] } else { &cfg.client_credential_headers },
        credential: p.credential.as_ref(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn cfg(pass: bool) -> Config {
        let json = format!(
            r#"{{"providers":[
                {{"name":"a","cluster":"ca","authority":"a.example"}},
                {{"name":"b","cluster":"cb","credential":{{"header":"x-api-key","value":"kb"}}}},
                {{"name":"c","cluster":"cc"}}],
              "chains":[{{"providers":["a","b","c"],"pass_client_credentials":{pass}}}]}}"#
        );
        config::parse(json.as_bytes(), |_| None).unwrap()
    }

    #[test]
    fn first_admitting_provider_wins_and_skips_are_reported() {
        let c = cfg(false);
        let plan = choose(&c.chains[0], |p| if p == 0 { Admission::Reject(Rejection::Open) } else { Admission::Admit });
        assert_eq!(plan.choice, Some(Choice { provider: 1, position: 1, probe: false }));
        assert_eq!(plan.skipped, vec![(0, Rejection::Open)]);
        let plan = choose(&c.chains[0], |_| Admission::Probe);
        assert_eq!(plan.choice, Some(Choice { provider: 0, position: 0, probe: true }));
    }

    #[test]
    fn nothing_admits_means_no_choice() {
        let c = cfg(false);
        let plan = choose(&c.chains[0], |_| Admission::Reject(Rejection::RateLimited));
        assert_eq!(plan.choice, None);
        assert_eq!(plan.skipped.len(), 3);
    }

    #[test]
    fn client_credentials_reach_only_the_addressed_provider_when_allowed() {
        let c = cfg(true);
        let e = request_edits(&c, &c.chains[0], Choice { provider: 0, position: 0, probe: false }).unwrap();
        assert!(e.strip.is_empty());
        assert_eq!(e.cluster, "ca");
        assert_eq!(e.authority, Some("a.example"));
        // Not allowed by the chain: stripped even for the first provider.
        let c2 = cfg(false);
        let e = request_edits(&c2, &c2.chains[0], Choice { provider: 0, position: 0, probe: false }).unwrap();
        assert!(e.strip.contains(&"x-api-key".to_string()));
        assert!(e.strip.contains(&"authorization".to_string()));
    }

    #[test]
    fn rerouted_requests_never_carry_client_credentials() {
        let c = cfg(true);
        let e = request_edits(&c, &c.chains[0], Choice { provider: 2, position: 2, probe: false }).unwrap();
        assert!(e.strip.contains(&"x-api-key".to_string()));
        assert_eq!(e.credential, None);
        let e = request_edits(&c, &c.chains[0], Choice { provider: 1, position: 1, probe: false }).unwrap();
        assert!(!e.strip.is_empty());
        assert_eq!(e.credential.unwrap().value, "kb");
    }
}

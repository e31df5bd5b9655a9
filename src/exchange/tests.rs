//! Whole requests and whole outages through the exchange, natively: Envoy's router (aggregate
//! cluster, retries with `previous_priorities`, the per-try timeout) is simulated here, the
//! breakers and the retry budget are the real state machines in memory.

use super::*;
use crate::attempt::{BodyStep, HeadStep, ResponseHead};
use crate::classify::Outcome;
use crate::config;
use crate::header_map::HeaderMap;
use crate::health::{MemBudget, MemHealth};

const BODY: &[u8] = br#"{"model":"claude-opus-4-6","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const ANSWER: &[u8] = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-6","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":5}}"#;

const FAILOVER: &str = r#""failover":{"clusters":[{"cluster":"all","providers":["primary","fallback","gpt"]},
                                               {"cluster":"fb_gpt","providers":["fallback","gpt"]}]}"#;
const DEADLINES: &str = r#""deadlines":{"first_token_ms":1000,"json_answer_ms":5000}"#;

fn cfg_with(failover: &str, deadlines: &str, extra_top: &str) -> Config {
    let json = format!(
        r#"{{"providers":[
            {{"name":"primary","cluster":"c_primary","authority":"api.anthropic.com"}},
            {{"name":"fallback","cluster":"c_fallback","credential":{{"header":"x-api-key","value":"fb-key"}}}},
            {{"name":"gpt","cluster":"c_gpt","api":"openai","credential":{{"header":"authorization","value":"Bearer sk-gpt"}},
              "models":{{"claude-opus-4-6":"gpt-4o"}}}}],
          "chains":[{{"match":{{"path_prefix":"/v1/messages"}},"providers":["primary","fallback","gpt"],
                      "pass_client_credentials":true, {failover}, {deadlines}}}],
          "breaker":{{"consecutive_failures":3,"open_ms":5000,"max_open_ms":20000,"backoff_multiplier":1.5,
                      "jitter":0,"min_requests":100,"close_after_successes":2}}{extra_top}}}"#
    );
    config::parse(json.as_bytes(), |_| None).unwrap()
}

fn cfg() -> Config {
    cfg_with(FAILOVER, DEADLINES, "")
}

fn headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut h: Vec<(String, Vec<u8>)> = [
        (":path", "/v1/messages"),
        (":method", "POST"),
        (":authority", "localhost:10000"),
        ("content-type", "application/json"),
        ("x-api-key", "sk-ant-client"),
        ("accept-encoding", "gzip"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    for (k, v) in extra {
        h.push((k.to_string(), v.as_bytes().to_vec()));
    }
    HeaderMap::from_pairs(&h)
}

/// What a provider does with an attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Ok,
    Status(u16),
    /// No answer: Envoy's per-try timeout (or a reset) ends the attempt.
    Hang,
    Reset,
}

/// What the client got.
#[derive(Debug)]
struct Served {
    /// The provider whose answer reached the client, or the local reply's status.
    provider: Option<String>,
    reply: Option<LocalResponse>,
    record: RequestRecord,
    forward: HeaderEdits,
}

fn edit<'a>(edits: &'a HeaderEdits, name: &str) -> Option<&'a Option<String>> {
    edits.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// One request through the exchange and a simulated router: attempt k goes to the k-th
/// provider of the plan (the aggregate's priorities); a marked or reset attempt is retried while
/// Envoy's retries last.
fn serve(
    cfg: &Config,
    h: &mut MemHealth,
    b: &mut MemBudget,
    now: u64,
    body: &[u8],
    extra: &[(&str, &str)],
    fault: &dyn Fn(&str) -> Fault,
) -> Served {
    let hs = headers(extra);
    let head = RequestHead { headers: &hs, end_of_stream: false };
    let mut ex = Exchange::new(cfg, 0, &head, true, now, 1);
    assert_eq!(ex.on_request_headers(cfg, &head, h), Step::Hold);
    let forward = match ex.on_request_body(cfg, &head, body.to_vec(), h, b) {
        Step::Forward { headers, .. } => headers,
        Step::Reply(r) => {
            return Served { provider: None, reply: Some(r), record: ex.record(cfg, now), forward: vec![] };
        }
        s => panic!("{s:?}"),
    };
    let retries: u32 = edit(&forward, "x-envoy-max-retries").and_then(|v| v.as_deref()).unwrap().parse().unwrap();
    let plan: Vec<String> = ex.plan.iter().map(|p| cfg.providers[p.provider].name.clone()).collect();
    let mut t = now;
    for number in 1..=retries + 1 {
        let landed = &plan[(number as usize - 1).min(plan.len() - 1)];
        t += 1;
        let current = |n: &str| head.get(n).map(str::to_string);
        let mut attempt = match ex.start_attempt(cfg, number, Some(landed), &current, h, b, t, true) {
            Start::Go { attempt, .. } => attempt,
            Start::Reply(r) => {
                return Served { provider: None, reply: Some(r), record: ex.record(cfg, t), forward };
            }
        };
        let f = fault(landed);
        let retry = match f {
            Fault::Hang | Fault::Reset => {
                t += if f == Fault::Hang { 1000 } else { 1 };
                true
            }
            Fault::Status(s) => {
                let rh = ResponseHead { status: s, content_type: "application/json", ..Default::default() };
                matches!(attempt.on_response_headers(&rh, t), HeadStep::Retry(_))
            }
            Fault::Ok => {
                let rh = ResponseHead { status: 200, content_type: "application/json", ..Default::default() };
                assert_eq!(attempt.on_response_headers(&rh, t), HeadStep::Hold);
                assert!(matches!(attempt.on_response_body(ANSWER, true, t), BodyStep::Continue { .. }));
                false
            }
        };
        let summary = attempt.finish(t, 0, false);
        h.record(summary.provider, summary.outcome, summary.probe, t);
        ex.end_attempt(summary);
        if !retry || number == retries + 1 {
            break;
        }
    }
    // The final response as the downstream sees it.
    let last = ex.summaries.last().unwrap().clone();
    if last.outcome != Outcome::Success {
        let r = ex.on_final_response(cfg, 503, None);
        return Served { provider: None, reply: r, record: ex.record(cfg, t), forward };
    }
    let provider = Some(cfg.providers[last.provider].name.clone());
    Served { provider, reply: None, record: ex.record(cfg, t), forward }
}

fn down(name: &'static str, how: Fault) -> impl Fn(&str) -> Fault {
    move |p| if p == name { how } else { Fault::Ok }
}

#[test]
fn a_healthy_request_goes_to_the_aggregate_with_its_retries_and_deadline() {
    let c = cfg();
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let s = serve(&c, &mut h, &mut b, 1_000, BODY, &[("x-envoy-max-retries", "9")], &|_| Fault::Ok);
    assert_eq!(s.provider.as_deref(), Some("primary"));
    assert_eq!(edit(&s.forward, "x-llm-failover-cluster"), Some(&Some("all".to_string())));
    assert_eq!(edit(&s.forward, "x-envoy-max-retries"), Some(&Some("2".to_string())), "the client's own is replaced");
    // A JSON request: the per-try timeout is the JSON answer's deadline.
    assert_eq!(edit(&s.forward, "x-envoy-upstream-rq-per-try-timeout-ms"), Some(&Some("5000".to_string())));
    assert_eq!(s.record.tried.as_deref(), Some("primary:success"));
    assert_eq!(s.record.attempts, 1);
    let stream =
        br#"{"model":"claude-opus-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let hs = headers(&[]);
    let head = RequestHead { headers: &hs, end_of_stream: false };
    let mut ex = Exchange::new(&c, 0, &head, true, 1_000, 1);
    ex.on_request_headers(&c, &head, &mut h);
    let Step::Forward { headers, .. } = ex.on_request_body(&c, &head, stream.to_vec(), &mut h, &mut b) else {
        panic!()
    };
    assert_eq!(edit(&headers, "x-envoy-upstream-rq-per-try-timeout-ms"), Some(&Some("1000".to_string())));
}

#[test]
fn every_fault_class_of_the_primary_is_answered_by_the_fallback() {
    for fault in
        [Fault::Status(500), Fault::Status(529), Fault::Status(429), Fault::Status(503), Fault::Hang, Fault::Reset]
    {
        let c = cfg();
        let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
        let s = serve(&c, &mut h, &mut b, 1_000, BODY, &[], &down("primary", fault));
        assert_eq!(s.provider.as_deref(), Some("fallback"), "{fault:?}");
        assert_eq!(s.record.attempts, 2, "{fault:?}");
        assert!(s.record.tried.as_deref().unwrap().ends_with(",fallback:success"), "{fault:?}: {:?}", s.record.tried);
    }
}

#[test]
fn an_attempt_carries_its_own_providers_credential_and_nobody_elses() {
    let c = cfg();
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let hs = headers(&[]);
    let head = RequestHead { headers: &hs, end_of_stream: false };
    let mut ex = Exchange::new(&c, 0, &head, true, 1_000, 1);
    ex.on_request_headers(&c, &head, &mut h);
    ex.on_request_body(&c, &head, BODY.to_vec(), &mut h, &mut b);
    // Attempt 1 at the primary: the client's key stays (pass_client_credentials).
    let current = |n: &str| head.get(n).map(str::to_string);
    let Start::Go { headers: e1, .. } = ex.start_attempt(&c, 1, Some("primary"), &current, &mut h, &mut b, 1_001, true)
    else {
        panic!()
    };
    assert!(edit(&e1, "x-api-key").is_none(), "{e1:?}");
    assert_eq!(edit(&e1, ":authority"), Some(&Some("api.anthropic.com".to_string())));
    assert_eq!(edit(&e1, "accept-encoding"), Some(&None));
    // Attempt 2 at the fallback (after attempt 1's edits): its key replaces the client's.
    let after1 = |n: &str| match n {
        ":authority" => Some("api.anthropic.com".to_string()),
        "accept-encoding" => None,
        n => head.get(n).map(str::to_string),
    };
    let Start::Go { headers: e2, .. } = ex.start_attempt(&c, 2, Some("fallback"), &after1, &mut h, &mut b, 1_002, true)
    else {
        panic!()
    };
    assert_eq!(edit(&e2, "x-api-key"), Some(&Some("fb-key".to_string())));
    assert_eq!(edit(&e2, ":authority"), Some(&Some("localhost:10000".to_string())), "the client's authority back");
    // Attempt 3 at GPT (after attempt 2's): no Anthropic key of anyone's, its own bearer token,
    // and the body translated.
    let after2 = |n: &str| match n {
        "x-api-key" => Some("fb-key".to_string()),
        ":path" => Some("/v1/messages".to_string()),
        _ => None,
    };
    let Start::Go { headers: e3, body, .. } =
        ex.start_attempt(&c, 3, Some("gpt"), &after2, &mut h, &mut b, 1_003, true)
    else {
        panic!()
    };
    assert_eq!(edit(&e3, "x-api-key"), Some(&None));
    assert_eq!(edit(&e3, "authorization"), Some(&Some("Bearer sk-gpt".to_string())));
    assert_eq!(edit(&e3, ":path"), Some(&Some("/v1/chat/completions".to_string())));
    let body: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(body["model"], "gpt-4o");
}

#[test]
fn an_outage_opens_the_breaker_and_later_requests_start_at_the_fallback() {
    let c = cfg();
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let outage = down("primary", Fault::Status(529));
    for i in 0..3 {
        let s = serve(&c, &mut h, &mut b, 1_000 + i, BODY, &[], &outage);
        assert_eq!(s.provider.as_deref(), Some("fallback"));
    }
    let s = serve(&c, &mut h, &mut b, 1_010, BODY, &[], &outage);
    assert_eq!(s.provider.as_deref(), Some("fallback"));
    assert_eq!(s.record.tried.as_deref(), Some("fallback:success"), "the open primary is not tried");
    assert_eq!(edit(&s.forward, "x-llm-failover-cluster"), Some(&Some("fb_gpt".to_string())));
    let primary_calls = h.recorded.iter().filter(|(p, _, _)| *p == 0).count();
    assert_eq!(primary_calls, 3);
}

/// A request every 100 ms through an outage of 503s at the primary that ends after
/// `outage_s`: every request must be answered; returns the ms from the recovery until traffic
/// is back on the primary.
fn recovery_ms(c: &Config, outage_s: u64) -> u64 {
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let recovered_at = outage_s * 1000;
    for i in 0..(outage_s * 10 + 400) {
        let t = i * 100;
        let fault = if t < recovered_at { Fault::Status(503) } else { Fault::Ok };
        let s = serve(c, &mut h, &mut b, 1_000_000 + t, BODY, &[], &|p| if p == "primary" { fault } else { Fault::Ok });
        assert!(s.reply.is_none() && s.provider.is_some(), "at {t} ms every request is answered: {:?}", s.record);
        if t >= recovered_at && s.provider.as_deref() == Some("primary") {
            return t - recovered_at;
        }
    }
    panic!("traffic never came back to the primary");
}

#[test]
fn recovery_brings_traffic_back_within_30_s_and_probes_cost_users_nothing() {
    let back = recovery_ms(&cfg(), 60);
    println!("FIGURE recovery: traffic back on the primary {back} ms after its recovery (60 s outage)");
    assert!(back <= 30_000, "traffic back on the primary {back} ms after it recovered");
}

#[test]
fn with_the_default_breaker_recovery_takes_at_most_its_open_period_cap() {
    // The default breaker (5 failures or half the window; open 5 s, x1.5, at most 20 s), the
    // jitter at its midpoint; outages of 20 s to 5 min.
    let mut c = cfg();
    c.breaker = config::BreakerSettings::default();
    for outage_s in [20u64, 60, 300] {
        let back = recovery_ms(&c, outage_s);
        println!(
            "FIGURE default breaker, {outage_s} s outage: traffic back on the primary {back} ms after its recovery"
        );
        assert!(back <= c.breaker.max_open_ms + 1_000, "{back} ms");
    }
}

#[test]
fn the_retry_budget_caps_replays_and_the_rest_get_the_degraded_answer() {
    let c = cfg_with(FAILOVER, DEADLINES, r#","retry_budget":{"ratio":0.2,"min_per_s":0,"window_ms":10000}"#);
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    // Every provider fails, breakers that never open: every request wants replays.
    let c2 = {
        let mut c2 = c.clone();
        c2.breaker.consecutive_failures = 0;
        c2
    };
    h.settings = c2.breaker.clone();
    let mut replays = 0;
    let mut denied = 0;
    for i in 0..100u64 {
        let s = serve(&c2, &mut h, &mut b, 1_000 + i, BODY, &[], &down("primary", Fault::Status(500)));
        match s.record.degraded_reason {
            Some("retry_budget_exhausted") => denied += 1,
            None => replays += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(replays, 20, "20 % of 100 requests");
    assert_eq!(denied, 80);
}

#[test]
fn a_body_over_the_replay_limit_gets_one_attempt() {
    let c = cfg_with(
        r#""failover":{"clusters":[{"cluster":"all","providers":["primary","fallback","gpt"]}],"max_replay_bytes":50}"#,
        DEADLINES,
        "",
    );
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let s = serve(&c, &mut h, &mut b, 1_000, BODY, &[], &down("primary", Fault::Status(529)));
    assert_eq!(edit(&s.forward, "x-envoy-max-retries"), Some(&Some("0".to_string())));
    assert_eq!(s.record.degraded_reason, Some("upstream_failure"), "the client gets a clean degraded answer");
    // Declared in content-length: decided at the headers, routed without holding the body.
    let hs = headers(&[("content-length", "100")]);
    let head = RequestHead { headers: &hs, end_of_stream: false };
    let mut ex = Exchange::new(&c, 0, &head, true, 1_000, 1);
    assert!(matches!(ex.on_request_headers(&c, &head, &mut h), Step::Forward { .. }));
    assert_eq!(ex.no_replay, Some(NoReplay::BodyTooLarge));
    assert_eq!(ex.mode, Mode::Single);
}

#[test]
fn bad_client_input_is_a_400_in_the_clients_format_and_touches_no_breaker() {
    let c = cfg();
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    for body in [
        &b"{not json"[..],
        &b"\xff\xfe\x00"[..],
        &br#"{"model":"claude\r\nx-injected: 1","max_tokens":1,"messages":[]}"#[..],
        "{\"model\":\"".to_string().add_long_model().as_bytes(),
    ] {
        let s = serve(&c, &mut h, &mut b, 1_000, body, &[], &|_| Fault::Ok);
        let r = s.reply.expect("answered locally");
        assert_eq!(r.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(s.record.outcome, Some("invalid_request"));
    }
    assert!(h.recorded.is_empty(), "no provider was tried, no breaker touched");
    // Nested deeper than the parser allows: passed through as it is to a host of the client's
    // format (the host judges), refused when it must be rewritten (primary and fallback open).
    let deep = format!(
        "{{\"model\":\"claude-opus-4-6\",\"max_tokens\":1,\"x\":{}1{},\"messages\":[]}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    let s = serve(&c, &mut h, &mut b, 1_000, deep.as_bytes(), &[], &|_| Fault::Ok);
    assert_eq!(s.provider.as_deref(), Some("primary"));
    for p in [0, 1] {
        for _ in 0..3 {
            h.record(p, Outcome::ServerError, false, 1_000);
        }
    }
    let s = serve(&c, &mut h, &mut b, 1_001, deep.as_bytes(), &[], &|_| Fault::Ok);
    let r = s.reply.expect("refused");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("recursion"));
}

trait LongModel {
    fn add_long_model(self) -> String;
}
impl LongModel for String {
    fn add_long_model(self) -> String {
        format!("{self}{}\",\"max_tokens\":1,\"messages\":[]}}", "m".repeat(200_000))
    }
}

#[test]
fn an_attempt_that_reaches_an_unnamed_host_sends_nothing() {
    let c = cfg();
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let hs = headers(&[]);
    let head = RequestHead { headers: &hs, end_of_stream: false };
    let mut ex = Exchange::new(&c, 0, &head, true, 1_000, 1);
    ex.on_request_headers(&c, &head, &mut h);
    ex.on_request_body(&c, &head, BODY.to_vec(), &mut h, &mut b);
    let current = |n: &str| head.get(n).map(str::to_string);
    let Start::Reply(r) = ex.start_attempt(&c, 1, None, &current, &mut h, &mut b, 1_001, true) else { panic!() };
    assert!(r.headers.iter().any(|(k, v)| *k == "x-llm-degraded-reason" && v == "misconfigured"));
    let Start::Reply(_) = ex.start_attempt(&c, 2, Some("someone-else"), &current, &mut h, &mut b, 1_002, true) else {
        panic!()
    };
}

#[test]
fn no_attempt_starts_past_the_total_deadline() {
    let c = cfg_with(FAILOVER, r#""deadlines":{"first_token_ms":1000,"total_ms":1500}"#, "");
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    // Primary and fallback hang (1 s each): the third attempt would start at 2 s.
    let s = serve(&c, &mut h, &mut b, 1_000, BODY, &[], &|p| if p == "gpt" { Fault::Ok } else { Fault::Hang });
    assert_eq!(s.record.degraded_reason, Some("deadline_exceeded"));
    assert_eq!(s.record.attempts, 2);
}

#[test]
fn same_model_only_requests_never_reach_another_vendor() {
    let c = cfg();
    let (mut h, mut b) = (MemHealth::new(3, &c.breaker), MemBudget::new(&c.retry_budget));
    let s = serve(&c, &mut h, &mut b, 1_000, BODY, &[(SAME_MODEL_HEADER, "required")], &|p| {
        if p == "gpt" {
            Fault::Ok
        } else {
            Fault::Status(500)
        }
    });
    assert_eq!(s.record.degraded_reason, Some("upstream_failure"));
    assert!(!s.record.tried.unwrap().contains("gpt"));
}

#[test]
fn single_mode_routes_at_the_headers_when_nothing_needs_the_body() {
    let c = cfg();
    let mut h = MemHealth::new(3, &c.breaker);
    let hs = headers(&[]);
    let head = RequestHead { headers: &hs, end_of_stream: false };
    // No upstream filter in this VM: one attempt, run downstream.
    let mut ex = Exchange::new(&c, 0, &head, false, 1_000, 1);
    let Step::Forward { headers, body: None } = ex.on_request_headers(&c, &head, &mut h) else { panic!() };
    assert_eq!(edit(&headers, "x-llm-failover-cluster"), Some(&Some("c_primary".to_string())));
    assert!(ex.single.is_some());
    assert_eq!(ex.mode, Mode::Single);
}

#[test]
fn the_degraded_form_is_the_requests_then_the_chains_then_the_configs() {
    let with_chain = |chain: &str, top: &str| {
        let json = format!(
            r#"{{"providers":[{{"name":"p","cluster":"c"}}],
                "chains":[{{"providers":["p"]{chain}}}]{top}}}"#
        );
        config::parse(json.as_bytes(), |_| None).unwrap()
    };
    let form = |cfg: &Config, header: Option<&str>| {
        let h = match header {
            Some(v) => headers(&[(DEGRADED_FORM_HEADER, v)]),
            None => headers(&[]),
        };
        let head = RequestHead { headers: &h, end_of_stream: true };
        Exchange::new(cfg, 0, &head, false, 0, 1).degraded_mode(cfg)
    };
    let plain = with_chain("", "");
    assert_eq!(form(&plain, None), DegradedMode::Message);
    assert_eq!(form(&plain, Some("error")), DegradedMode::Error);
    let top_error = with_chain("", r#","degraded":{"mode":"error"}"#);
    assert_eq!(form(&top_error, None), DegradedMode::Error);
    let chain_message = with_chain(r#","degraded":{"mode":"message"}"#, r#","degraded":{"mode":"error"}"#);
    assert_eq!(form(&chain_message, None), DegradedMode::Message);
    assert_eq!(form(&chain_message, Some("Error")), DegradedMode::Error);
    let chain_error = with_chain(r#","degraded":{"mode":"error","notice":"Try later."}"#, "");
    assert_eq!(form(&chain_error, Some("message")), DegradedMode::Message);
    assert_eq!(form(&chain_error, Some("nonsense")), DegradedMode::Error, "an unknown value is ignored");
    // The chain's notice is the one the client reads.
    let h = headers(&[(DEGRADED_FORM_HEADER, "message")]);
    let h = HeaderMap::from_pairs(&h.iter().filter(|(k, _)| *k != b"x-api-key").collect::<Vec<_>>());
    let head = RequestHead { headers: &h, end_of_stream: true };
    let mut ex = Exchange::new(&chain_error, 0, &head, false, 0, 1);
    let resp = ex.degrade(&chain_error, DegradedReason::NoProviderAvailable);
    assert!(String::from_utf8_lossy(&resp.body).contains("Try later."));
    assert_eq!(resp.status, 200);
}

#[test]
fn a_context_overflow_goes_only_to_a_larger_window_of_another_model() {
    let json = r#"{"providers":[
            {"name":"claude","cluster":"c1","context_window":200000},
            {"name":"claude_vertex","cluster":"c2","api":"vertex","vertex":{"project":"p","region":"r"},"context_window":1000000},
            {"name":"small_gpt","cluster":"c3","api":"openai","context_window":128000,"models":{"claude-opus-4-6":"gpt-4o"}},
            {"name":"big_gpt","cluster":"c4","api":"openai","context_window":1000000,"models":{"claude-opus-4-6":"gpt-4.1"}}],
          "chains":[{"match":{"path_prefix":"/v1/messages"},"providers":["claude","claude_vertex","small_gpt","big_gpt"],
                     "deadlines":{"first_token_ms":1000}}]}"#;
    let cfg = config::parse(json.as_bytes(), |_| None).unwrap();
    let h = headers(&[]);
    let head = RequestHead { headers: &h, end_of_stream: false };
    let mut health = MemHealth::new(cfg.providers.len(), &cfg.breaker);
    let mut budget = MemBudget::new(&cfg.retry_budget);
    // One-attempt installs never hold a response (it would hang without
    // allow_on_headers_stop_iteration).
    let mut ex = Exchange::new(&cfg, 0, &head, false, 0, 1);
    ex.on_request_body(&cfg, &head, BODY.to_vec(), &mut health, &mut budget);
    assert!(!ex.holds_for_overflow(&cfg, 400));
    let start = |ex: &mut Exchange, health: &mut MemHealth, budget: &mut MemBudget| {
        ex.on_request_headers(&cfg, &head, health);
        ex.on_request_body(&cfg, &head, BODY.to_vec(), health, budget);
        let current = |_: &str| None;
        assert!(matches!(
            ex.start_attempt(&cfg, 1, Some("claude"), &current, health, budget, 0, true),
            Start::Go { .. }
        ));
    };
    let mut ex = Exchange::new(&cfg, 0, &head, true, 0, 1);
    start(&mut ex, &mut health, &mut budget);
    budget.count_request(0);
    assert!(ex.holds_for_overflow(&cfg, 400));
    assert!(!ex.holds_for_overflow(&cfg, 400), "looked at once");
    let too_long = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#;
    let step = ex.overflow_start(&cfg, too_long, &h, &mut health, &mut budget, 10);
    let OverflowStep::Call(spec) = step else { panic!("{step:?}") };
    assert_eq!(spec.cluster, "c4", "not Vertex's Claude (same model), not the smaller GPT");
    let body: serde_json::Value = serde_json::from_slice(&spec.body).unwrap();
    assert_eq!(body["model"], "gpt-4.1");
    // Another 400 is the client's own.
    let mut ex = Exchange::new(&cfg, 0, &head, true, 0, 1);
    start(&mut ex, &mut health, &mut budget);
    let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
    assert!(ex.holds_for_overflow(&cfg, 400));
    assert_eq!(ex.overflow_start(&cfg, bad, &h, &mut health, &mut budget, 10), OverflowStep::Pass);
}

#[test]
fn a_request_routed_at_its_headers_keeps_its_body_only_while_it_may_stream() {
    let cfg = cfg_with(r#""failover":null"#, r#""deadlines":null"#, "");
    let h = headers(&[]);
    let head = RequestHead { headers: &h, end_of_stream: false };
    let mut ex = Exchange::new(&cfg, 0, &head, false, 0, 1);
    assert!(ex.keeps_body(&cfg, false, false), "not known yet");
    ex.body_chunk(&cfg, b"{\"model\":\"m\",", false, false);
    ex.body_chunk(&cfg, b"\"stream\":true}", true, true);
    assert!(ex.body_available());
    let mut ex = Exchange::new(&cfg, 0, &head, false, 0, 1);
    ex.body_chunk(&cfg, b"{\"model\":\"m\",\"stream\":false}", false, true);
    assert!(!ex.body_available() && !ex.keeps_body(&cfg, false, true), "not a stream: nothing kept");
}

#[test]
fn the_clock_is_read_at_the_answer_only_for_a_single_mode_stream() {
    let c = cfg();
    let h = headers(&[]);
    let head = RequestHead { headers: &h, end_of_stream: false };
    let single = Exchange::new(&c, 0, &head, false, 0, 1);
    assert!(single.reads_clock_at_response("text/event-stream; charset=utf-8"));
    assert!(single.reads_clock_at_response("application/vnd.amazon.eventstream"));
    assert!(!single.reads_clock_at_response("application/json"));
    let attempts = Exchange::new(&c, 0, &head, true, 0, 1);
    assert_eq!(attempts.mode, Mode::Attempts);
    assert!(!attempts.reads_clock_at_response("text/event-stream"));
}

#[test]
fn a_request_answered_by_the_tick_while_held_is_recorded_as_degraded() {
    let c = cfg();
    let h = headers(&[]);
    let head = RequestHead { headers: &h, end_of_stream: false };
    let mut ex = Exchange::new(&c, 0, &head, true, 0, 1);
    assert_eq!(ex.on_request_headers(&c, &head, &mut MemHealth::new(c.providers.len(), &c.breaker)), Step::Hold);
    ex.answered_while_held();
    let r = ex.record(&c, 5);
    assert_eq!((r.degraded_reason, r.provider, r.attempts), (Some("no_provider_available"), None, 0));
    assert_eq!(
        ex.on_response_headers(&c, &ResponseHead { status: 503, ..Default::default() }, 0),
        Answer::Pass(vec![])
    );
}

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
//! Native micro-benchmarks of the hot path (`make bench-micro`): what the pure core costs per
//! request and per KB, outside Envoy. The Wasm build runs the same code (in V8, somewhat slower).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_failover::attempt::ResponseHead;
use llm_failover::breaker::ProviderState;
use llm_failover::classify::{classify_end, classify_headers, Health, Outcome, StreamVerdict};
use llm_failover::config::{self, BreakerSettings};
use llm_failover::degraded::{degraded_response, DegradedReason};
use llm_failover::exchange::{Exchange, RequestHead, Start};
use llm_failover::header_map::HeaderMap;
use llm_failover::health::{MemBudget, MemHealth};
use llm_failover::providers::anthropic::StreamMonitor;
use llm_failover::request_peek::RequestPeek;
use llm_failover::request_rewrite::{rewrite, ClientRequest};
use llm_failover::response_rewrite::{translate_json, StreamPipeline};
use llm_failover::translate::request::{anthropic_to_openai, RequestOptions};
use serde_json::{json, Value};
use std::hint::black_box;

/// The bench upstream's answers (`bench/upstream`), byte for byte.
#[path = "../bench/upstream/src/answers.rs"]
mod answers;

const NOW: u64 = 1_800_000_000_000;

fn anthropic_stream(deltas: usize) -> Vec<u8> {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-6\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n");
    s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..deltas {
        s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} of the answer \"}}}}\n\n"));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":180}}\n\n");
    s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn request_body(kb: usize) -> Vec<u8> {
    let text = "x".repeat(kb * 1024);
    format!(r#"{{"max_tokens":1024,"messages":[{{"role":"user","content":"{text}"}}],"model":"claude-opus-4-6","stream":true}}"#)
        .into_bytes()
}

fn classification(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    g.bench_function("200 via upstream", |b| {
        b.iter(|| classify_end(classify_headers(black_box(200), None, None, None), StreamVerdict::Complete, true, 0))
    });
    g.bench_function("529", |b| b.iter(|| classify_headers(black_box(529), Some("via_upstream"), None, None)));
    g.bench_function("503 connection failure (Envoy reply)", |b| {
        b.iter(|| {
            classify_headers(
                black_box(503),
                Some("upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_111}"),
                None,
                None,
            )
        })
    });
    g.bench_function("429 retry-after", |b| b.iter(|| classify_headers(black_box(429), None, None, Some("7"))));
    g.finish();
}

fn window_update(c: &mut Criterion) {
    let s = BreakerSettings::default();
    let mut st = ProviderState::new(&s);
    for i in 0..100 {
        st.record(NOW + i * 50, Health::Success, false, &s, 7);
    }
    let bytes = st.encode();
    let mut g = c.benchmark_group("shared_state");
    g.bench_function("admission peek (header only)", |b| {
        b.iter(|| ProviderState::peek_encoded(black_box(&bytes), NOW + 5_000, &s))
    });
    g.bench_function("update: decode + record failure + encode", |b| {
        b.iter(|| {
            let mut st = ProviderState::decode(black_box(&bytes), &s);
            let change = st.record(NOW + 5_000, Outcome::ServerError.health(5_000, 60_000), false, &s, 7);
            (change, st.encode())
        })
    });
    g.bench_function("update: decode + record 40 batched successes + encode", |b| {
        b.iter(|| {
            let mut st = ProviderState::decode(black_box(&bytes), &s);
            st.record_successes(NOW + 5_000, 40, NOW + 5_000);
            st.encode()
        })
    });
    g.finish();
}

fn streams(c: &mut Criterion) {
    let stream = anthropic_stream(44); // ~50 events, ~7 KB, like the end-to-end bench
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("anthropic monitor, 50-event stream in one chunk", |b| {
        b.iter(|| {
            let mut m = StreamMonitor::new();
            m.feed(black_box(&stream));
            m.verdict()
        })
    });
    g.bench_function("anthropic monitor, 50-event stream in 64-byte chunks", |b| {
        b.iter(|| {
            let mut m = StreamMonitor::new();
            for chunk in black_box(&stream).chunks(64) {
                m.feed(chunk);
            }
            m.verdict()
        })
    });
    g.bench_function("usage scan, 50-event stream", |b| {
        b.iter(|| {
            let mut u = llm_failover::usage::UsageScanner::new();
            u.feed(black_box(&stream));
            (u.input_tokens(), u.output_tokens())
        })
    });
    g.finish();

    let body = request_body(16);
    let mut g = c.benchmark_group("request_peek");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("model and stream from a 16 KB body", |b| {
        b.iter(|| {
            let mut p = RequestPeek::new();
            p.feed(black_box(&body));
            (p.model(), p.stream())
        })
    });
    g.finish();
}

fn decisions(c: &mut Criterion) {
    let cfg = config::parse(
        br#"{"providers":[{"name":"primary","cluster":"a","authority":"api.anthropic.com","credential":{"header":"x-api-key","value":"k1"}},
                          {"name":"fallback","cluster":"b","credential":{"header":"x-api-key","value":"k2"}}],
             "chains":[{"match":{"path_prefix":"/v1/messages"},"providers":["primary","fallback"],
                        "failover":{"clusters":[{"cluster":"ab","providers":["primary","fallback"]}]},
                        "deadlines":{"first_token_ms":1000}}]}"#,
        |_| None,
    )
    .unwrap();
    // What the Anthropic Python SDK sends (its `x-stainless-*` headers included).
    let headers = HeaderMap::from_pairs(&[
        (":path", "/v1/messages"),
        (":method", "POST"),
        (":authority", "localhost:10000"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("user-agent", "Anthropic/Python 0.69.0"),
        ("x-api-key", "sk-ant-client"),
        ("anthropic-version", "2023-06-01"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "0.69.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.11.7"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-read-timeout", "600"),
        ("content-length", "87"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c3a52-55b5-4d0e-9a43-0c1b7f7f9a11"),
    ]);
    let body = br#"{"model":"claude-opus-4-6","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    let answer = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-6","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":5}}"#;
    let mut health = MemHealth::new(2, &cfg.breaker);
    let mut budget = MemBudget::new(&cfg.retry_budget);
    let mut g = c.benchmark_group("decide");
    g.bench_function("request lifecycle: plan, first attempt, JSON answer (in-request failover)", |b| {
        b.iter(|| {
            let head = RequestHead { headers: black_box(&headers), end_of_stream: false };
            let chain = cfg.chain_for("/v1/messages", &|n| head.get(n).map(str::to_string)).unwrap();
            let mut ex = Exchange::new(&cfg, chain, &head, true, 1_000, 7);
            let _ = ex.on_request_headers(&cfg, &head, &mut health);
            let _ = ex.on_request_body(&cfg, &head, black_box(body).to_vec(), &mut health, &mut budget);
            let current = |n: &str| head.get(n).map(str::to_string);
            let Start::Go { mut attempt, .. } =
                ex.start_attempt(&cfg, 1, Some("primary"), &current, &mut health, &mut budget, 1_001, true)
            else {
                unreachable!()
            };
            let rh = ResponseHead { status: 200, content_type: "application/json", ..Default::default() };
            attempt.on_response_headers(&rh, 1_002);
            let _ = attempt.on_response_body(black_box(answer), true, 1_003);
            let s = attempt.finish(1_004, 0, false);
            ex.end_attempt(s);
            ex.record(&cfg, 1_005)
        })
    });
    // The breaker-closed pass-through of `make bench`'s `closed` row, as the host drives it:
    // routed at the headers, the body only peeked, the JSON answer watched, the record built.
    let single_cfg = config::parse(
        br#"{"providers":[{"name":"primary","cluster":"a","authority":"api.anthropic.com","credential":{"header":"x-api-key","value":"k1"}},
                          {"name":"fallback","cluster":"b","credential":{"header":"x-api-key","value":"k2"}}],
             "chains":[{"match":{"path_prefix":"/v1/messages"},"providers":["primary","fallback"]}]}"#,
        |_| None,
    )
    .unwrap();
    let answer_1k = answers::anthropic_json();
    g.bench_function("pass-through request, breaker closed (single mode, 1 KB JSON answer)", |b| {
        b.iter(|| {
            let cfg = &single_cfg;
            let head = RequestHead { headers: black_box(&headers), end_of_stream: false };
            let chain = cfg.chain_for("/v1/messages", &|n| head.get(n).map(str::to_string)).unwrap();
            let mut ex = Exchange::new(cfg, chain, &head, false, 1_000, 7);
            let _ = black_box(ex.on_request_headers(cfg, &head, &mut health));
            let mut peek = RequestPeek::new();
            peek.feed(black_box(body));
            ex.learn_model(peek.model(), peek.stream());
            let rh = ResponseHead { status: 200, content_type: "application/json", ..Default::default() };
            let _ = black_box(ex.on_response_headers(cfg, &rh, 1_002));
            let mut a = ex.single.take().unwrap();
            let _ = black_box(a.on_response_body(black_box(answer_1k.as_slice()), true, 1_003));
            let s = a.finish(1_004, 0, false);
            ex.end_attempt(s);
            let r = ex.record(cfg, 1_005);
            black_box(llm_failover::access_log::encode(&r))
        })
    });
    g.bench_function("degraded answer (SSE)", |b| {
        b.iter(|| {
            degraded_response(
                &cfg.degraded,
                config::ClientApi::Anthropic,
                Some("claude-opus-4-6"),
                true,
                DegradedReason::NoProviderAvailable,
                black_box(1),
            )
        })
    });
    g.finish();
}

/// An Anthropic Messages request of at least `target` bytes: a system prompt, one tool, and a
/// conversation of tool calls and results until the size is reached (ends with a user turn).
fn anthropic_request(target: usize) -> Value {
    let mut req = json!({
        "model": "claude-opus-4-6", "max_tokens": 1024,
        "system": "You are a concise assistant for an online store. Use the tools to look orders up.",
        "tools": [{"name": "get_order_status", "description": "Look up the shipping status of an order by its number.",
                   "input_schema": {"type": "object", "properties": {"order_id": {"type": "string",
                                    "description": "The order number, e.g. 12345"}}, "required": ["order_id"]}}],
        "messages": [{"role": "user", "content": "Where is my order #12345? It was due yesterday and the tracking page shows nothing."}],
    });
    let mut i = 0u32;
    while serde_json::to_vec(&req).unwrap().len() < target {
        let id = format!("toolu_01A09q90qw90lq917835lq{i:04}");
        let order = 12345 + i;
        let messages = req["messages"].as_array_mut().unwrap();
        messages.push(json!({"role": "assistant", "content": [
            {"type": "text", "text": format!("Let me look order #{order} up for you.")},
            {"type": "tool_use", "id": id, "name": "get_order_status", "input": {"order_id": order.to_string()}}]}));
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id,
             "content": format!(r#"{{"order_id":"{order}","status":"in transit","carrier":"UPS","eta":"2026-11-28","last_scan":"Louisville, KY"}}"#)},
            {"type": "text", "text": format!("Thanks. And what about order #{}? It shipped on the same day.", order + 1)}]}));
        i += 1;
    }
    req
}

fn translation_config() -> config::Config {
    config::parse(
        br#"{"providers":[
              {"name":"anthropic","cluster":"a"},
              {"name":"vertex","cluster":"v","api":"vertex","vertex":{"project":"bench-project","region":"us-east5"},
               "models":{"claude-opus-4-6":"claude-opus-4-6@20260201"}},
              {"name":"bedrock","cluster":"b","api":"bedrock","models":{"claude-opus-4-6":"us.anthropic.claude-opus-4-6-v1:0"}},
              {"name":"openai","cluster":"o","api":"openai","models":{"claude-opus-4-6":"gpt-4o"}}],
            "chains":[{"providers":["anthropic","vertex","bedrock","openai"]},
                      {"match":{"path_prefix":"/v1/chat"},
                       "providers":["openai",{"provider":"anthropic","models":{"gpt-4o":"claude-opus-4-6"}}]}]}"#,
        |_| None,
    )
    .unwrap()
}

/// Request bodies rewritten for another host (what the filter does once the body is in):
/// the parse, then [`rewrite`] from the parsed request to the bytes the host gets.
fn request_translation(c: &mut Criterion) {
    let cfg = translation_config();
    let (claude, gpt) = (&cfg.chains[0], &cfg.chains[1]);
    let mut g = c.benchmark_group("request");
    for kb in [1usize, 16] {
        let anthropic = serde_json::to_vec(&anthropic_request(kb * 1024 - 64)).unwrap();
        let parsed = ClientRequest::parse(config::ClientApi::Anthropic, "/v1/messages", &anthropic).unwrap();
        let opts = RequestOptions { model: "gpt-4o", default_max_tokens: 4096 };
        let openai = serde_json::to_vec(&anthropic_to_openai(&parsed.body, &opts).unwrap()).unwrap();
        let parsed_openai = ClientRequest::parse(config::ClientApi::OpenAi, "/v1/chat/completions", &openai).unwrap();
        g.throughput(Throughput::Bytes(anthropic.len() as u64));
        g.bench_function(format!("parse Anthropic body, {kb} KB"), |b| {
            b.iter(|| ClientRequest::parse(config::ClientApi::Anthropic, "/v1/messages", black_box(&anthropic)))
        });
        for (name, pos) in [("Vertex envelope", 1usize), ("Bedrock envelope", 2), ("translate Anthropic -> OpenAI", 3)]
        {
            let provider = &cfg.providers[claude.providers[pos]];
            let models = &claude.models[pos];
            rewrite(&parsed, provider, models, 4096).unwrap();
            g.bench_function(format!("rewrite: {name}, {kb} KB"), |b| {
                b.iter(|| rewrite(black_box(&parsed), provider, models, 4096).map(|r| r.body.len()))
            });
        }
        g.throughput(Throughput::Bytes(openai.len() as u64));
        let (provider, models) = (&cfg.providers[gpt.providers[1]], &gpt.models[1]);
        rewrite(&parsed_openai, provider, models, 4096).unwrap();
        g.bench_function(format!("rewrite: translate OpenAI -> Anthropic, {kb} KB"), |b| {
            b.iter(|| rewrite(black_box(&parsed_openai), provider, models, 4096).map(|r| r.body.len()))
        });
    }
    g.finish();
}

/// Whole JSON answers translated for the client (the bench upstream's ~1.1 KB answers).
fn answer_translation(c: &mut Criterion) {
    use config::{Api, ClientApi};
    let mut g = c.benchmark_group("json_answer");
    for (name, api, client, body) in [
        ("translate OpenAI -> Anthropic", Api::OpenAi, ClientApi::Anthropic, answers::openai_json()),
        ("translate Anthropic -> OpenAI", Api::Anthropic, ClientApi::OpenAi, answers::anthropic_json()),
    ] {
        assert!(translate_json(api, client, 200, &body, 0).is_some());
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| b.iter(|| translate_json(api, client, 200, black_box(&body), NOW / 1000)));
    }
    g.finish();
}

/// A streamed answer through [`StreamPipeline`], fed one upstream write (one event) at a time
/// and then the end of the body, as the filter sees the bench upstream's 50-event streams.
fn stream_translation(c: &mut Criterion) {
    use config::{Api, ClientApi};
    let mut g = c.benchmark_group("stream_pipeline");
    let cases = [
        (
            "Anthropic SSE passthrough (monitor only)",
            Api::Anthropic,
            false,
            ClientApi::Anthropic,
            answers::anthropic_sse(),
        ),
        ("Bedrock event-stream -> Anthropic SSE", Api::Bedrock, true, ClientApi::Anthropic, answers::bedrock_frames()),
        ("OpenAI SSE -> Anthropic SSE", Api::OpenAi, false, ClientApi::Anthropic, answers::openai_sse()),
        ("Anthropic SSE -> OpenAI SSE", Api::Anthropic, false, ClientApi::OpenAi, answers::anthropic_sse()),
    ];
    let kept = [false, true];
    for (kept, (name, api, event_stream, client, chunks)) in
        kept.iter().flat_map(|k| cases.clone().into_iter().map(move |c| (*k, c)))
    {
        let name = if kept { format!("{name}, kept for a continuation") } else { name.to_string() };
        let run = |chunks: &[Vec<u8>]| {
            let mut p = StreamPipeline::new(api, event_stream, client, true, NOW / 1000, 7);
            if kept {
                p.keep_for_continuation(1 << 20);
            }
            let mut out = 0usize;
            for chunk in chunks {
                out += p.feed(chunk, false).map_or(0, <[u8]>::len);
            }
            // The end of the body (HTTP/1.1 chunked: the last chunk, empty, ends the stream).
            out += p.feed(&[], true).map_or(0, <[u8]>::len);
            (p.verdict(), out)
        };
        let (verdict, out) = run(&chunks);
        assert_eq!(verdict, llm_failover::classify::StreamVerdict::Complete, "{name}");
        assert_eq!(out > 0, api != Api::Anthropic || client != ClientApi::Anthropic, "{name}");
        g.throughput(Throughput::Bytes(chunks.iter().map(Vec::len).sum::<usize>() as u64));
        g.bench_function(&name, |b| b.iter(|| run(black_box(&chunks))));
    }
    g.finish();
}

criterion_group!(
    benches,
    classification,
    window_update,
    streams,
    decisions,
    request_translation,
    answer_translation,
    stream_translation
);
criterion_main!(benches);

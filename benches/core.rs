#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
//! Native micro-benchmarks of the hot path (`make bench-micro`): what the pure core costs per
//! request and per KB, outside Envoy. The Wasm build runs the same code (in V8, somewhat slower).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_failover::breaker::ProviderState;
use llm_failover::classify::{classify_end, classify_headers, Health, Outcome, StreamVerdict};
use llm_failover::config::{self, BreakerSettings};
use llm_failover::degraded::{degraded_response, DegradedReason};
use llm_failover::plan;
use llm_failover::providers::StreamMonitor;
use llm_failover::request_peek::RequestPeek;
use std::hint::black_box;

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
            let mut m = StreamMonitor::new(config::Api::Anthropic);
            m.feed(black_box(&stream));
            m.verdict()
        })
    });
    g.bench_function("anthropic monitor, 50-event stream in 64-byte chunks", |b| {
        b.iter(|| {
            let mut m = StreamMonitor::new(config::Api::Anthropic);
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
             "chains":[{"match":{"path_prefix":"/v1/messages"},"providers":["primary","fallback"]}]}"#,
        |_| None,
    )
    .unwrap();
    let mut g = c.benchmark_group("decide");
    g.bench_function("chain match + choose + edits", |b| {
        b.iter(|| {
            let chain = cfg.chain_for(black_box("/v1/messages"), &|_| None).unwrap();
            let chain = &cfg.chains[chain];
            let p = plan::choose(chain, |_| llm_failover::breaker::Admission::Admit);
            plan::request_edits(&cfg, chain, p.choice.unwrap()).map(|e| e.cluster.len())
        })
    });
    g.bench_function("degraded answer (SSE)", |b| {
        b.iter(|| {
            degraded_response(
                &cfg.degraded,
                config::Api::Anthropic,
                Some("claude-opus-4-6"),
                true,
                DegradedReason::NoProviderAvailable,
                black_box(1),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, classification, window_update, streams, decisions);
criterion_main!(benches);

"""Streams that go wrong after they started, end to end with the official SDKs, on pass-through
routes (Anthropic client -> Anthropic host, OpenAI client -> OpenAI host) and translated ones
(Anthropic client -> OpenAI host, OpenAI client -> Anthropic host):

- a stream that stalls after its first deltas is reset for the client at the stall deadline:
  the SDK raises (never a clean close) and the stall is counted;
- a stream cut before its terminal event ends with an error event in the client's format, so
  the SDK raises instead of returning a partial answer;
- regressions: a stream whose terminal event reached the client is a success even if the host
  ends its body later (`late_end`), also for half-open probes; an OpenAI stream without
  `data: [DONE]` is complete; bad client input is a 400 in the client's format that reaches no
  provider; a host's HTML error page reaches the client as a JSON error in its format.

Measurements are printed as `FIGURE ...` lines (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import anthropic
import openai
import pytest
import requests

from conftest import fast_breaker
from stack import MESSAGE_BODY, sse_events
from test_e2e_failover import (CLAUDE, GPT, NOTICE, access_log, anthropic_client, claude_json, claude_stream,
                               gpt_json, gpt_stream, ms, never_opening_breaker, openai_client, reset_faults)
from test_e2e_metrics import metric, scrape
from test_e2e_providers import CLIENT_KEY, hosts_stack
from test_e2e_providers import filter_config as hosts_filter_config

STALL_MS = 800

# route -> (client format, x-route header, the host that serves it, that host's chain fallback)
ROUTES = {
    "anthropic->anthropic": ("anthropic", None, "anthropic", "vertex"),
    "anthropic->openai": ("anthropic", "translated", "openai", "anthropic"),
    "openai->openai": ("openai", None, "openai", "azure"),
    "openai->anthropic": ("openai", "translated", "anthropic", "openai"),
}
PASS_THROUGH = ("anthropic->anthropic", "openai->openai")


def routes_config(breaker: dict | None = None, stall_ms: int = STALL_MS) -> dict:
    """The every-host mocks (envoy/demo-hosts.yaml's providers) with one chain per route: the
    translated routes are picked by the request header `x-route: translated`. Each chain has a
    fallback and in-request failover, the demo's 1 s first-token deadline and a short stall
    deadline. The breaker never opens unless `breaker` is given."""
    cfg = hosts_filter_config()
    deadlines = {"first_token_ms": 1000, "stall_ms": stall_ms}

    def chain(name, path, route, client, first, second):
        match = {"path_prefix": path}
        if route:
            match["header"] = {"name": "x-route", "value": route}
        names = [p if isinstance(p, str) else p["provider"] for p in (first, second)]
        # Continuation off: these tests are about what the client gets when a broken stream is
        # not continued (tests/test_e2e_continuation.py has the continued ones).
        return {"name": name, "match": match, "client_api": client, "providers": [first, second],
                "deadlines": deadlines, "continuation": {"enabled": False},
                "failover": {"clusters": [{"cluster": f"llm_{name}", "providers": names}]}}

    cfg["chains"] = [
        chain("a2o", "/v1/messages", "translated", "anthropic", {"provider": "openai", "models": {CLAUDE: GPT}},
              "anthropic"),
        chain("o2a", "/v1/chat/completions", "translated", "openai",
              {"provider": "anthropic", "models": {GPT: CLAUDE}}, "openai"),
        chain("a2a", "/v1/messages", None, "anthropic", "anthropic", "vertex"),
        chain("o2o", "/v1/chat/completions", None, "openai", "openai", "azure"),
    ]
    if breaker is None:
        return never_opening_breaker(cfg)
    cfg["breaker"] = breaker
    return cfg


def client_for(stack, route: str):
    fmt, header, _, _ = ROUTES[route]
    headers = {"x-route": header} if header else {}
    return anthropic_client(stack, default_headers=headers) if fmt == "anthropic" else \
        openai_client(stack, default_headers=headers)


def stream_call(stack, route: str):
    c = client_for(stack, route)
    return claude_stream(c) if ROUTES[route][0] == "anthropic" else gpt_stream(c)


def json_call(stack, route: str):
    c = client_for(stack, route)
    return claude_json(c) if ROUTES[route][0] == "anthropic" else gpt_json(c)


def host_model(route: str) -> str:
    return CLAUDE if ROUTES[route][2] == "anthropic" else GPT


def outcome(samples, host: str, model: str, cls: str) -> float:
    return metric(samples, "llm_failover_outcomes", provider=host, model=model, **{"class": cls})


def sdk_error_types(route: str):
    """What the client's SDK raises for an error event inside a stream (not a connection error)."""
    return (anthropic.APIStatusError,) if ROUTES[route][0] == "anthropic" else (openai.APIError,)


def connection_errors():
    return (anthropic.APIConnectionError, openai.APIConnectionError)


@pytest.fixture(scope="module")
def routes():
    with hosts_stack(routes_config()) as s:
        yield s


# ---------------------------------------------------------------------------------------------
# A stream that stalls after its first deltas
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_stalled_stream_is_reset_for_the_client_at_the_stall_deadline(routes, route):
    s = routes
    _, _, host, fallback = ROUTES[route]
    reset_faults(s)
    s.fault(host, "stall", after_deltas=3, hang_ms=10000)
    before = scrape(s)
    fallback_before = len(s.received(fallback))
    a = stream_call(s, route)
    after = scrape(s)
    silent = a.seconds - (a.delta_times[-1] if a.delta_times else 0.0)
    log = access_log(s)
    envoy_ms = int(log[-1]["duration_ms"]) if log else -1
    print(f"FIGURE stall {route} (stall_ms {STALL_MS}): SDK raised {type(a.exc).__name__ if a.exc else None} "
          f"{ms(silent)} after the last of {len(a.delta_times)} deltas ({ms(a.seconds)} in all); "
          f"Envoy ended the request at {envoy_ms} ms")
    # The SDK raised: never a clean close, never a hang.
    assert a.exc is not None, a
    assert not a.complete
    # What came before the stall: the first three deltas of the host's answer.
    assert a.provider == host
    assert a.text == f"Hello from {host}", a.text
    # Reset at the deadline (the client may see the close up to Envoy's delayed_close_timeout,
    # 1 s by default, later).
    assert STALL_MS / 1000 * 0.9 <= silent < STALL_MS / 1000 + 1.6, silent
    assert 0 < envoy_ms < STALL_MS + 500, log[-1:]
    model = host_model(route)
    assert outcome(after, host, model, "stalled") - outcome(before, host, model, "stalled") == 1
    assert (metric(after, "llm_failover_deadlines", provider=host, kind="stall")
            - metric(before, "llm_failover_deadlines", provider=host, kind="stall")) == 1
    # The answer had started: no replay.
    assert len(s.received(fallback)) == fallback_before
    s.fault(host, "none")


# ---------------------------------------------------------------------------------------------
# A stream cut before its terminal event
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [("truncate_after", {"after_deltas": 2}), ("truncate", {})], ids=lambda m: m[0])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_stream_cut_before_its_terminal_event_makes_the_sdk_raise(routes, route, mode):
    s = routes
    name, params = mode
    _, _, host, _ = ROUTES[route]
    reset_faults(s)
    s.fault(host, name, **params)
    before = scrape(s)
    a = stream_call(s, route)
    after = scrape(s)
    print(f"FIGURE cut stream {route} {name}: text {a.text!r}, SDK raised {type(a.exc).__name__ if a.exc else None}")
    assert a.exc is not None and not a.complete, a
    # An error event in the client's format, not a broken connection.
    assert isinstance(a.exc, sdk_error_types(route)) and not isinstance(a.exc, connection_errors()), a.error
    assert f"Hello from {host}".startswith(a.text) and a.text != f"Hello from {host}", a.text
    if name == "truncate_after":
        assert a.text == "Hello from", a.text
    model = host_model(route)
    assert outcome(after, host, model, "stream_truncated") - outcome(before, host, model, "stream_truncated") == 1
    s.fault(host, "none")


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_cut_stream_ends_with_a_well_formed_error_event_in_the_clients_format(routes, route):
    s = routes
    fmt, header, host, _ = ROUTES[route]
    reset_faults(s)
    s.fault(host, "truncate_after", after_deltas=2)
    headers = {"x-route": header} if header else {}
    if fmt == "anthropic":
        body = {**MESSAGE_BODY, "stream": True}
        r = requests.post(s.url + "/v1/messages", json=body, headers=headers, timeout=10)
        events = sse_events(r.text)
        assert events[-1][0] == "error", r.text
        assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] and events[-1][1]["error"]["message"]
        assert "message_stop" not in [e for e, _ in events]
    else:
        body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        r = requests.post(s.url + "/v1/chat/completions", json=body, timeout=10,
                          headers={**headers, "authorization": f"Bearer {CLIENT_KEY}"})
        datas = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        assert "[DONE]" not in datas, r.text
        last = json.loads(datas[-1])
        assert set(last) == {"error"} and last["error"]["message"] and last["error"]["type"], r.text
    s.fault(host, "none")


# ---------------------------------------------------------------------------------------------
# late_end: the terminal event, then the host's end of body later
# ---------------------------------------------------------------------------------------------


def read_until_terminal_then_close(stack, route: str) -> tuple[str, float]:
    """A raw client that reads the stream up to its terminal event and closes the connection
    there, before the host's end of body. Returns (text seen, seconds)."""
    fmt, header, _, _ = ROUTES[route]
    headers = {"x-route": header} if header else {}
    t0 = time.monotonic()
    if fmt == "anthropic":
        path, body, end = "/v1/messages", {**MESSAGE_BODY, "stream": True}, b"event: message_stop"
    else:
        path, end = "/v1/chat/completions", b"data: [DONE]"
        body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers["authorization"] = f"Bearer {CLIENT_KEY}"
    seen = b""
    with requests.post(stack.url + path, json=body, headers=headers, stream=True, timeout=10) as r:
        for piece in r.iter_content(chunk_size=None):
            seen += piece
            if end in seen:
                break
    took = time.monotonic() - t0
    text = seen.decode(errors="replace")
    assert end.decode() in text, text
    if fmt == "anthropic":
        return "".join(d["delta"].get("text", "") for e, d in sse_events(text) if e == "content_block_delta"), took
    chunks = [json.loads(line[5:]) for line in text.splitlines()
              if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    return "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch.get("choices")), took


@pytest.mark.parametrize("client", ["sdk", "raw-close-at-terminal-event"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_stream_whose_terminal_event_reached_the_client_is_a_success(routes, route, client):
    s = routes
    _, _, host, _ = ROUTES[route]
    reset_faults(s)
    s.fault(host, "late_end", delay_ms=400)
    before = scrape(s)
    if client == "sdk":
        a = stream_call(s, route)
        assert a.exc is None and a.complete and a.text == f"Hello from {host}", a
        took = a.seconds
    else:
        text, took = read_until_terminal_then_close(s, route)
        assert text == f"Hello from {host}", text
    time.sleep(0.6)  # the host's end of body comes 400 ms after the terminal event
    after = scrape(s)
    model = host_model(route)
    ok = outcome(after, host, model, "success") - outcome(before, host, model, "success")
    cancelled = outcome(after, host, model, "client_cancelled") - outcome(before, host, model, "client_cancelled")
    print(f"FIGURE late_end {route} {client}: answer in {ms(took)}, outcome success +{ok:.0f}, "
          f"client_cancelled +{cancelled:.0f}")
    assert (ok, cancelled) == (1, 0)
    s.fault(host, "none")


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_late_ending_json_answer_is_a_success(routes, route):
    s = routes
    _, _, host, _ = ROUTES[route]
    reset_faults(s)
    s.fault(host, "late_end", delay_ms=300)
    before = scrape(s)
    a = json_call(s, route)
    after = scrape(s)
    assert a.exc is None and a.complete and a.provider == host and a.text == f"Hello from {host}", a
    model = host_model(route)
    assert outcome(after, host, model, "success") - outcome(before, host, model, "success") == 1
    s.fault(host, "none")


def test_access_log_records_streams_that_ended_for_the_client_before_the_host(routes):
    # The access log line of a request is the outcome's other public record: it must carry it
    # when the OpenAI SDK closed after [DONE] (host's end later) and when a stall was reset.
    s = routes
    reset_faults(s)
    s.fault("openai", "late_end", delay_ms=400)
    a = stream_call(s, "openai->openai")
    assert a.complete, a
    time.sleep(0.6)
    late = access_log(s)[-1]
    s.fault("openai", "stall", after_deltas=3, hang_ms=10000)
    a = stream_call(s, "openai->openai")
    assert a.exc is not None
    stalled = access_log(s)[-1]
    print(f"FIGURE access log: late_end closed by the SDK -> llm_outcome={late['llm_outcome']} "
          f"llm_tried={late['llm_tried']}; stalled -> llm_outcome={stalled['llm_outcome']} "
          f"llm_tried={stalled['llm_tried']}")

    def fields(entry):
        return entry["llm_provider"], entry["llm_outcome"], entry["llm_tried"]

    assert fields(late) == ("openai", "success", "openai:success"), late
    assert fields(stalled) == ("openai", "stalled", "openai:stalled"), stalled
    s.fault("openai", "none")


def test_half_open_breaker_closes_after_good_openai_sdk_streams_that_end_late():
    # The every-host config's gpt chain with a fast breaker: an outage opens openai's breaker,
    # then openai recovers but ends every stream 400 ms after [DONE] (which the OpenAI SDK
    # does not wait for). Its probes are successes: five good streams close the breaker.
    cfg = hosts_filter_config()
    cfg["breaker"] = fast_breaker()["breaker"]
    with hosts_stack(cfg) as s:
        c = openai_client(s)
        s.fault("openai", "500")
        for _ in range(4):
            a = gpt_stream(c)
            assert a.served_by("azure"), a
        log = "\n".join(s.envoy.wasm_log())
        assert "provider openai breaker closed -> open" in log, log[-2000:]
        s.fault("openai", "late_end", delay_ms=400)
        time.sleep(1.1)  # the open period (1 s)
        # Five in a row, each sent as soon as the SDK returned the previous one (while its
        # host is still 400 ms from the end of its body).
        answers = [gpt_stream(c) for _ in range(5)]
        time.sleep(0.6)
        log = "\n".join(s.envoy.wasm_log())
        samples = scrape(s)
        gauge = metric(samples, "llm_failover_breaker_state", provider="openai")
        served = [a.provider for a in answers]
        print(f"FIGURE half-open recovery with late-ending OpenAI SDK streams: served by {served}, "
              f"breaker gauge {gauge:.0f}, closed logged: {'provider openai breaker half_open -> closed' in log}, "
              f"success {outcome(samples, 'openai', GPT, 'success'):.0f}, "
              f"client_cancelled {outcome(samples, 'openai', GPT, 'client_cancelled'):.0f}")
        assert all(a.exc is None and a.complete for a in answers), answers
        assert "provider openai breaker half_open -> closed" in log, log[-3000:]
        assert gauge == 0
        # The probes were openai's; a request sent while a probe had not reported yet may go to
        # azure (one probe at a time), but once closed openai serves again.
        assert served.count("openai") >= 2 and served[-1] == "openai", served
        assert outcome(samples, "openai", GPT, "client_cancelled") == 0


# ---------------------------------------------------------------------------------------------
# no_done: an OpenAI stream without data: [DONE]
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["openai->openai", "anthropic->openai"])
def test_an_openai_stream_without_done_is_a_complete_answer(route):
    # The demo's fast breaker (3 consecutive failures open it): five such streams in a row
    # would open it if they counted as failures.
    with hosts_stack(routes_config(breaker=fast_breaker()["breaker"])) as s:
        s.fault("openai", "no_done")
        answers = [stream_call(s, route) for _ in range(5)]
        samples = scrape(s)
        log = "\n".join(s.envoy.wasm_log())
        ok = sum(1 for a in answers if a.served_by("openai"))
        print(f"FIGURE no_done {route}: {ok}/5 complete answers, outcome success "
              f"{outcome(samples, 'openai', GPT, 'success'):.0f}, stream_truncated "
              f"{outcome(samples, 'openai', GPT, 'stream_truncated'):.0f}, "
              f"errors {[a.error for a in answers if a.error][:1]}")
        assert all(a.served_by("openai") for a in answers), [a.error or a for a in answers]
        assert outcome(samples, "openai", GPT, "success") == 5
        assert "provider openai breaker" not in log
        # Still served by openai.
        assert stream_call(s, route).provider == "openai"


# ---------------------------------------------------------------------------------------------
# Bad client input
# ---------------------------------------------------------------------------------------------


def raw_request(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes, dict, bytes]:
    """POSTs `body` as it is over a raw socket; returns (status, raw head, headers, body). Reads
    by content-length, so it does not wait for Envoy's delayed close."""
    u = urlparse(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nhost: {u.hostname}\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        raw_head, _, rest = data.partition(b"\r\n\r\n")
        lines = raw_head.decode(errors="replace").split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        want = int(hdrs.get("content-length", "0"))
        while len(rest) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), raw_head, hdrs, rest


def bad_bodies(model: str) -> dict[str, bytes]:
    def with_model(m) -> bytes:
        return json.dumps({"model": m, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()

    good = with_model(model)
    return {
        "not json": b"not json at all",
        "not utf-8": good.replace(b'"hi"', b'"h\xff\xfei"'),
        "model with CRLF": with_model("claude\r\nx-injected: 1"),
        "raw CRLF in body": good.replace(model.encode(), model.encode() + b"\r\nx-injected: 1"),
        "model with space": with_model("claude opus"),
        "model of 257 chars": with_model("c" * 257),
        "model of 200 KB": with_model("c" * 200_000),
    }


def too_deep_body(model: str) -> bytes:
    """Valid JSON nested deeper (300 levels) than the filter's JSON parser allows (128)."""
    good = json.dumps({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return good[:-1] + b', "metadata": ' + b"[" * 300 + b"]" * 300 + b"}"


CHAINS_OF_FORMAT = {"anthropic": ("/v1/messages", CLAUDE), "openai": ("/v1/chat/completions", GPT)}


def client_headers(route: str) -> dict:
    fmt, header, _, _ = ROUTES[route]
    headers = {"x-route": header} if header else {}
    headers.update({"anthropic-version": "2023-06-01"} if fmt == "anthropic" else
                   {"authorization": f"Bearer {CLIENT_KEY}"})
    return headers


def check_bad_input(s, path: str, model: str, fmt: str, headers: dict) -> None:
    sent_before = {name: len(s.received(name)) for name in s.mocks}
    samples_before = scrape(s)
    for case, body in bad_bodies(model).items():
        status, raw_head, hdrs, answer = raw_request(s.url, path, body, headers)
        assert status == 400, (case, status, answer[:300])
        assert b"x-injected" not in raw_head.lower(), (case, raw_head)
        assert "x-llm-provider" not in hdrs and hdrs["content-type"].startswith("application/json"), (case, hdrs)
        err = json.loads(answer)
        if fmt == "anthropic":
            assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", (case, err)
        else:
            assert set(err) == {"error"} and err["error"]["type"] == "invalid_request_error", (case, err)
        assert err["error"]["message"], case
    print(f"FIGURE bad input {fmt} {path} {'(' + headers.get('x-route', '') + ')' if headers.get('x-route') else ''}: "
          f"{len(bad_bodies(model))} cases -> 400 invalid_request_error")
    # No provider was tried, no breaker or window touched.
    assert {name: len(s.received(name)) for name in s.mocks} == sent_before
    after = scrape(s)
    for key in set(after) | set(samples_before):
        if key.startswith(("llm_failover_requests", "llm_failover_outcomes", "llm_failover_breaker")):
            assert after.get(key, 0) == samples_before.get(key, 0), key
    assert "breaker" not in "\n".join(line for line in s.envoy.wasm_log() if "configured" not in line)


@pytest.mark.parametrize("route", list(ROUTES))
def test_bad_client_input_is_a_400_in_the_clients_format_and_reaches_no_provider(routes, route):
    fmt = ROUTES[route][0]
    path, model = CHAINS_OF_FORMAT[fmt]
    reset_faults(routes)
    check_bad_input(routes, path, model, fmt, client_headers(route))


def test_bad_client_input_on_the_demo_chain(stack):
    # envoy/demo.yaml's shape: two Anthropic hosts, same model names (routed at the headers).
    check_bad_input(stack, "/v1/messages", CLAUDE, "anthropic", {"anthropic-version": "2023-06-01"})


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_too_deep_body_goes_as_it_is_to_a_host_of_its_format_and_is_refused_where_rewritten(routes, route):
    # The filter reads a body's model and stream without building its tree; it parses the body
    # only when the attempt must be rewritten. A body nested deeper than its parser allows goes
    # untouched to a host of the client's format (the host judges it), and is a 400 in the
    # client's format where it would have to be rewritten (translated routes).
    s = routes
    fmt, _, host, fallback = ROUTES[route]
    path, model = CHAINS_OF_FORMAT[fmt]
    reset_faults(s)
    sent_before = {name: len(s.received(name)) for name in s.mocks}
    status, _, hdrs, answer = raw_request(s.url, path, too_deep_body(model), client_headers(route))
    sent = {name: len(s.received(name)) - n for name, n in sent_before.items()}
    print(f"FIGURE too-deep body {route}: status {status}, provider {hdrs.get('x-llm-provider')}, "
          f"received {({k: v for k, v in sent.items() if v})}")
    if route in PASS_THROUGH:
        assert hdrs.get("x-llm-provider") == host, (status, hdrs, answer[:300])
        assert sent[host] == 1 and sum(sent.values()) == 1, sent
        assert b"recursion" not in answer
    else:
        assert status == 400, (status, answer[:300])
        assert "x-llm-provider" not in hdrs
        err = json.loads(answer)
        if fmt == "anthropic":
            assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
        else:
            assert set(err) == {"error"} and err["error"]["type"] == "invalid_request_error", err
        assert "recursion" in err["error"]["message"], err
        assert sum(sent.values()) == 0, sent


def test_sdks_get_a_bad_request_error_for_an_invalid_model(routes):
    reset_faults(routes)
    with pytest.raises(anthropic.BadRequestError) as e:
        client_for(routes, "anthropic->anthropic").messages.create(
            model="claude\r\nx-injected: 1", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "x-injected" not in e.value.response.headers
    with pytest.raises(openai.BadRequestError) as e:
        client_for(routes, "openai->openai").chat.completions.create(
            model="gpt 4o\u0000", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "invalid_request_error"


# ---------------------------------------------------------------------------------------------
# A host's HTML error page
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_hosts_html_error_page_reaches_the_client_as_a_json_error_in_its_format(routes, route, stream):
    s = routes
    fmt, _, host, fallback = ROUTES[route]
    reset_faults(s)
    s.fault(host, "html_error", status=414)
    fallback_before = len(s.received(fallback))
    a = stream_call(s, route) if stream else json_call(s, route)
    exc = a.exc
    print(f"FIGURE html 414 {route} {'stream' if stream else 'json'}: SDK raised {type(exc).__name__ if exc else None}")
    status_error = anthropic.APIStatusError if fmt == "anthropic" else openai.APIStatusError
    assert isinstance(exc, status_error), a
    resp = exc.response
    assert resp.status_code == 414
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = json.loads(resp.read())
    assert "<html" not in json.dumps(body).lower()
    if fmt == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"], body
    else:
        assert set(body) == {"error"} and body["error"]["message"], body
    # A client error: not failed over.
    assert len(s.received(fallback)) == fallback_before
    s.fault(host, "none")


@pytest.mark.parametrize("route", PASS_THROUGH)
def test_a_5xx_html_page_fails_over_and_from_the_last_provider_is_degraded(routes, route):
    s = routes
    fmt, _, host, fallback = ROUTES[route]
    reset_faults(s)
    s.fault(host, "html_error", status=502)
    a = json_call(s, route)
    assert a.served_by(fallback) and a.attempts == "2", a
    s.fault(fallback, "html_error", status=502)
    for call in (json_call, stream_call):
        a = call(s, route)
        assert a.exc is None and a.degraded and a.degraded_reason == "upstream_failure", a
        assert a.text == NOTICE and a.complete, a
    reset_faults(s)


def test_streams_suite_leaves_no_wasm_failure(routes):
    assert routes.wasm_failures() == []

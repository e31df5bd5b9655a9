"""The Grafana dashboard (dashboards/llm-failover.json) is built on names that exist: every metric
and label its PromQL uses is in a live /stats/prometheus scrape of the demo Envoy after a stream,
a failover and degraded answers. Renaming a stat in the filter, or a stats_tags rule in
envoy/demo.yaml, without the dashboard fails here."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import requests

from conftest import fast_breaker
from stack import MESSAGE_BODY, Stack

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "llm-failover.json"

# PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
            "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\}')
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w])\s*(\()?")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard: panel targets, template variables,
    annotations."""
    out = []
    for p in all_panels(d):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t.get('refId')}", t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    for a in d["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    return out


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    m = LABEL_VALUES.match(expr)
    if m:
        expr = m.group(1)
    e = strip_strings(expr)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors, $__rate_interval
    e = GROUPING.sub(" ", e)
    names = set()
    for m in IDENT.finditer(e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(metric, [label names of its matchers]) for every `metric{...}` of the expression."""
    return [(m.group(1), [x[0] for x in MATCHER.findall(m.group(2))]) for m in SELECTOR.finditer(expr)]


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for m in GROUPING.finditer(strip_strings(expr)):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    return labels


def parse_scrape(text: str) -> dict[str, set[str]]:
    """metric name -> label names seen on its series."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if m:
            out.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
    return out


# ---- the dashboard on its own -------------------------------------------------------------------


def test_parser_finds_metric_names():
    expr = ('histogram_quantile(0.95, sum by (le, provider) (rate(gen_ai_server_request_duration_bucket'
            '{provider=~"$provider", model=~"$model"}[$__rate_interval]))) / on(provider) group_left '
            'llm_failover_requests or vector(0)')
    assert metric_names(expr) == {"gen_ai_server_request_duration_bucket", "llm_failover_requests"}
    assert grouping_labels(expr) == {"le", "provider"}
    assert selectors(expr) == [("gen_ai_server_request_duration_bucket", ["provider", "model"])]
    assert metric_names('label_values(llm_failover_requests{provider=~"$provider"}, model)') == {"llm_failover_requests"}


def test_dashboard_shape():
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"provider", "model"} <= set(variables)
    panels = all_panels(d)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    # No two panels overlap on the 24-column grid.
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    # What it has to show, by the metrics it reads.
    used = set().union(*(metric_names(q) for _, q in queries(d)))
    for name in ("llm_failover_requests", "llm_failover_outcomes", "llm_failover_failovers", "llm_failover_degraded",
                 "llm_failover_breaker_state", "gen_ai_client_token_usage_sum",
                 "gen_ai_server_time_to_first_token_bucket", "gen_ai_server_request_duration_bucket"):
        assert name in used, name
    exprs = [q for _, q in queries(d)]
    assert any("histogram_quantile(0.99" in q and "time_to_first_token" in q for q in exprs)
    assert any("histogram_quantile(0.5" in q and "time_to_first_token" in q for q in exprs)
    assert any("$provider" in q and "$model" in q for q in exprs)


# ---- against a live scrape ---------------------------------------------------------------------


def generate_traffic(s: Stack) -> None:
    """A stream and a JSON answer from the primary, a broken stream continued, a failover,
    degraded answers of both kinds."""
    r = s.post(dict(MESSAGE_BODY, stream=True))
    assert r.status_code == 200 and r.headers["x-llm-provider"] == "primary"
    s.fault("primary", "stream_error", after_deltas=2, count=1)
    r = s.post(dict(MESSAGE_BODY, stream=True))
    assert r.headers["x-llm-provider"] == "primary" and "message_stop" in r.text, r.text
    assert s.post().headers["x-llm-provider"] == "primary"
    s.fault("primary", "529")
    s.fault("fallback", "500", count=1)
    seen = []
    for _ in range(8):
        r = s.post()
        seen.append(r.headers.get("x-llm-provider") or r.headers.get("x-llm-degraded-reason"))
    assert seen[-1] == "fallback" and "upstream_failure" in seen, seen
    r = s.post(dict(MESSAGE_BODY, stream=True))
    assert r.headers.get("x-llm-provider") == "fallback"
    s.fault("fallback", "500")
    for _ in range(8):
        r = s.post()
        if r.headers.get("x-llm-degraded-reason") == "no_provider_available":
            break
    assert r.headers.get("x-llm-degraded-reason") == "no_provider_available", dict(r.headers)


def test_every_dashboard_metric_and_label_is_in_a_live_scrape():
    d = dashboard()
    qs = queries(d)
    wanted = set().union(*(metric_names(q) for _, q in qs))
    with Stack(fast_breaker(open_ms=60000, max_open_ms=60000)) as s:
        generate_traffic(s)
        # Histograms reach /stats/prometheus at the next stats flush (1 s in the demo).
        deadline = time.time() + 15
        while True:
            scrape = parse_scrape(requests.get(s.envoy.admin + "/stats/prometheus", timeout=5).text)
            missing = sorted(wanted - set(scrape))
            if not missing or time.time() > deadline:
                break
            time.sleep(0.5)
    assert not missing, f"the dashboard uses metrics Envoy does not expose: {missing}"

    problems = []
    for where, q in qs:
        names = metric_names(q)
        labels_here = set().union(*(scrape[n] for n in names)) | {"le"}
        for metric, matcher_labels in selectors(q):
            for label in matcher_labels:
                if label not in scrape.get(metric, set()):
                    problems.append(f"{where}: {metric} has no label {label!r} (has {sorted(scrape.get(metric, []))})")
        for label in grouping_labels(q):
            if label not in labels_here:
                problems.append(f"{where}: groups by {label!r}, which none of {sorted(names)} has")
        m = LABEL_VALUES.match(q)
        if m and m.group(2) not in labels_here:
            problems.append(f"{where}: label_values of {m.group(2)!r}, which none of {sorted(names)} has")
    assert not problems, "\n".join(problems)

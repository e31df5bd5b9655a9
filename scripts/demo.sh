#!/usr/bin/env bash
# Starts the local demo: two mock Anthropic providers and Envoy with envoy/demo.yaml.
# Called by `make run` (which builds the module and installs the pinned Envoy first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.tools/venv/bin/python}
ENVOY=${ENVOY:-.tools/bin/envoy}

for port in 18101 18102 10000 9901; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port 127.0.0.1:$port is already in use; stop what runs there (an earlier 'make run'?)" >&2
    exit 1
  fi
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

"$PY" tests/mock_provider.py --name primary --port 18101 --quiet & pids+=($!)
"$PY" tests/mock_provider.py --name fallback --port 18102 --quiet & pids+=($!)

cat <<'MSG'

llm-failover demo
  Envoy        http://127.0.0.1:10000   (admin http://127.0.0.1:9901)
  primary      http://127.0.0.1:18101   (mock Anthropic API)
  fallback     http://127.0.0.1:18102   (mock Anthropic API)

Send a request (look at the x-llm-provider header):
  curl -si http://127.0.0.1:10000/v1/messages -H 'content-type: application/json' \
    -d '{"model":"claude-opus-4-6","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
Stream one:   add "stream": true to the body.

Put the primary into an outage (modes: none 500 529 429 503 hang reset stream_error truncate
slow_first_byte garbage 400 401 403 404 413; optional "count", "retry_after", "delay_ms"):
  curl -s http://127.0.0.1:18101/_control/fault -d '{"mode":"529"}'
Then send requests again: the first few get a degraded answer (x-llm-degraded: true), then the
breaker opens and x-llm-provider says fallback. Recover with {"mode":"none"}: after the open period
the half-open probes bring traffic back to the primary. Take both down to see degraded mode.
Breaker transitions are logged by Envoy below. Ctrl-C stops everything.

MSG

"$ENVOY" -c envoy/demo.yaml --concurrency 2 --use-dynamic-base-id --log-level warn --component-log-level wasm:info \
  --file-flush-interval-msec 1000

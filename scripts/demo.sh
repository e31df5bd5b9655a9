#!/usr/bin/env bash
# Starts the local demo: two mock Anthropic providers and Envoy with envoy/demo.yaml, or with
# `hosts`, a mock of every kind of host and Envoy with envoy/demo-hosts.yaml.
# Called by `make run` / `make run-hosts` (which build the module and install the pinned Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.tools/venv/bin/python}
ENVOY=${ENVOY:-.tools/bin/envoy}
MODE=${1:-basic}

if [ "$MODE" = hosts ]; then
  ports="18101 18103 18104 18105 18106 10000 9901"
else
  ports="18101 18102 10000 9901"
fi
for port in $ports; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port 127.0.0.1:$port is already in use; stop what runs there (an earlier 'make run'?)" >&2
    exit 1
  fi
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ "$MODE" = hosts ]; then
  "$PY" tests/mock_provider.py --api anthropic --name anthropic --port 18101 --quiet & pids+=($!)
  "$PY" tests/mock_provider.py --api vertex --name vertex --port 18103 --quiet & pids+=($!)
  "$PY" tests/mock_provider.py --api bedrock --name bedrock --port 18104 --quiet & pids+=($!)
  "$PY" tests/mock_provider.py --api openai --name openai --port 18105 --quiet & pids+=($!)
  "$PY" tests/mock_provider.py --api azure --name azure --port 18106 --quiet \
    --option 'deployments={"gpt4o-prod": "gpt-4o-2024-11-20"}' & pids+=($!)
  cat <<'MSG'

llm-failover demo: every kind of host
  Envoy        http://127.0.0.1:10000   (admin http://127.0.0.1:9901)
  anthropic    http://127.0.0.1:18101   (mock Anthropic API)
  vertex       http://127.0.0.1:18103   (mock Claude on Vertex AI)
  bedrock      http://127.0.0.1:18104   (mock Claude on Bedrock: event-stream answers)
  openai       http://127.0.0.1:18105   (mock OpenAI Chat Completions)
  azure        http://127.0.0.1:18106   (mock Azure OpenAI, deployment gpt4o-prod)

An Anthropic client (look at x-llm-provider and x-llm-model):
  curl -si http://127.0.0.1:10000/v1/messages -H 'content-type: application/json' \
    -d '{"model":"claude-opus-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
Take hosts down one after the other; each request is answered by the next host that works, in
the same request (x-llm-attempts counts the hosts tried):
  curl -s http://127.0.0.1:18101/_control/fault -d '{"mode":"529"}'   # then Vertex
  curl -s http://127.0.0.1:18103/_control/fault -d '{"mode":"503"}'   # then Bedrock (decoded)
  curl -s http://127.0.0.1:18104/_control/fault -d '{"mode":"503"}'   # then OpenAI (translated)
An OpenAI client: POST /v1/chat/completions with "model":"gpt-4o" (openai -> azure -> anthropic).
GET http://127.0.0.1:1810x/_control/requests shows what each host received (paths, bodies,
the credential each got). Ctrl-C stops everything.

MSG
  CONFIG=envoy/demo-hosts.yaml
else
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
slow_first_byte slow_first_token stall error_first truncate_after late_end garbage 400 401 403
404 413; optional "count", "retry_after", "delay_ms"):
  curl -s http://127.0.0.1:18101/_control/fault -d '{"mode":"529"}'
Then send requests again: every one is answered by the fallback (x-llm-provider: fallback,
x-llm-attempts: 2: the primary was tried in the same request); after 3 failures the primary's
breaker opens and requests go straight to the fallback (x-llm-attempts: 1). A primary that
accepts and then sends no token ({"mode":"slow_first_token","delay_ms":3000}) is abandoned after
the chain's 1 s first-token deadline. Recover with {"mode":"none"}: after the open period the
half-open probes bring traffic back to the primary. Take both down to see degraded mode.
Breaker transitions are logged by Envoy below. Ctrl-C stops everything.

MSG
  CONFIG=envoy/demo.yaml
fi

"$ENVOY" -c "$CONFIG" --concurrency 2 --use-dynamic-base-id --log-level warn --component-log-level wasm:info \
  --file-flush-interval-msec 1000

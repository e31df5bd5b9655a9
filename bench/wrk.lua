-- wrk script for `make bench`: POSTs an Anthropic Messages request and prints one machine-
-- readable line with the figures. BENCH_STREAM=1 asks for a streamed answer; BENCH_DELAY_MS>0
-- paces each connection with exponentially distributed gaps of that mean (fixed-rate runs:
-- rate ~= connections * 1000 / delay, Poisson arrivals, so connections do not fire in bursts).
local stream = os.getenv("BENCH_STREAM") == "1"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "sk-ant-bench-client"
wrk.body = '{"model":"claude-opus-4-6","max_tokens":1024,'
  .. (stream and '"stream":true,' or '')
  .. '"system":"You are a concise assistant for an online store.",'
  .. '"messages":[{"role":"user","content":"Where is my order #12345? It was due yesterday and the tracking page shows nothing."}]}'

if delay_ms > 0 then
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  function delay()
    return -math.log(1 - math.random()) * delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"socket_errors":%d,"status_errors":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end

-- wrk script for benches/load/run.sh: rotates through the tokens in
-- $TOKENS_FILE (one per line) when set, and prints one machine-readable
-- RESULT line: req/s, p50/p99/p99.9 in ms, requests, errors.
--
-- With $RATE (requests/s over all $CONNS connections) each connection waits
-- an exponentially distributed pause before each request, so that arrivals
-- over all connections are a Poisson stream at about that rate (a little
-- below: the response time adds to each pause). Latency is then what a
-- request meets at that load, not at saturation.
local tokens = {}
local file = os.getenv("TOKENS_FILE")
if file and file ~= "" then
  for line in io.lines(file) do tokens[#tokens + 1] = line end
end
local i = 0

local rate = tonumber(os.getenv("RATE") or "")
local conns = tonumber(os.getenv("CONNS") or "")
if rate and rate > 0 then
  assert(conns, "RATE needs CONNS")
  local mean_ms = conns * 1000 / rate
  math.randomseed(os.time())
  -- wrk truncates the pause to whole milliseconds; half a millisecond
  -- more keeps the mean where it should be.
  delay = function()
    return -mean_ms * math.log(1 - math.random()) + 0.5
  end
end

request = function()
  if #tokens > 0 then
    i = i + 1
    wrk.headers["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]
  end
  return wrk.format(nil)
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d\n",
    summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout))
end

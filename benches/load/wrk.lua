-- wrk script for benches/load/run.sh: rotates through the tokens in
-- $TOKENS_FILE (one per line) when set, and prints one machine-readable
-- RESULT line: req/s, p50/p99/p99.9 in ms, requests, errors.
local tokens = {}
local file = os.getenv("TOKENS_FILE")
if file and file ~= "" then
  for line in io.lines(file) do tokens[#tokens + 1] = line end
end
local i = 0

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

-- wrk script for the benchmark: POST the body in $BENCH_BODY with the client key in $BENCH_KEY;
-- with $BENCH_LIMIT, stop after that many responses (the soak) and create $BENCH_DONE_FILE, so the
-- runner can end wrk with SIGINT (wrk itself would sleep out -d); print one JSON line at the end.
local body_file = os.getenv("BENCH_BODY")
local key = os.getenv("BENCH_KEY") or ""
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")

local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

if limit > 0 then
  local seen = 0
  response = function(status, headers, body)
    seen = seen + 1
    if seen == limit then
      local done_file = os.getenv("BENCH_DONE_FILE")
      if done_file then
        local out = io.open(done_file, "w")
        out:write("done\n")
        out:close()
      end
      wrk.thread:stop()
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"lat_p50_us":%d,"lat_p90_us":%d,' ..
    '"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

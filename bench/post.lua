-- wrk script: POST one fixed JSON body on every request, then print the run's numbers as
-- one machine-readable line for bench/ingest.py.
--
--   wrk -t2 -c64 -d15s --latency -s bench/post.lua http://127.0.0.1:8000/v1/track -- BODY_FILE
--
-- The body is read once per wrk thread in init(), so the request is built once and
-- reused: wrk spends no Lua time per request (no request() or response() callback).

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/json"
end

-- Times are in microseconds; latency percentiles come from the same histogram as the
-- --latency distribution. errors.status counts responses with a status >= 400.
function done(summary, latency, requests)
   io.write(string.format(
      'WRK_RESULT {"duration_us": %d, "requests": %d, "bytes": %d, '
         .. '"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d, '
         .. '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.duration, summary.requests, summary.bytes,
      summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.timeout, summary.errors.status,
      latency:percentile(50.0), latency:percentile(99.0), latency.max
   ))
end

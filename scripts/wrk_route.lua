-- The wrk script of scripts/loadgen.py (load_wrk): wrk -t1 -cC -s scripts/wrk_route.lua URL -- BODIES.jsonl LIMIT
-- POST /v1/route with one holdout text per request, cycling. At `limit` responses the thread stops
-- and says so on stdout; the bench then interrupts wrk (whose main thread sleeps for -d) so done()
-- reports. The elapsed time is the thread's own monotonic clock from first request to last response.
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_timespec; int clock_gettime(int, bench_timespec *); ]]
local function now_us()
  local ts = ffi.new("bench_timespec")
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
  end
  limit, next_body, responses, non200, t_start, t_end = tonumber(args[2]), 0, 0, 0, 0, 0
end
function request()
  if t_start == 0 then t_start = now_us() end
  next_body = next_body % #bodies + 1
  return bodies[next_body]
end
function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then non200 = non200 + 1 end
  if responses == limit then
    t_end = now_us()
    wrk.thread:stop()
    io.write("BENCH_LIMIT\n")
    io.flush()
  end
end
function done(summary, latency, requests)
  local non200_total, t0, t1 = 0, math.huge, 0
  for _, t in ipairs(threads) do
    non200_total = non200_total + t:get("non200")
    t0 = math.min(t0, t:get("t_start"))
    t1 = math.max(t1, t:get("t_end"))
  end
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"completed": %d, "duration_us": %d, "elapsed_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "non200": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n', summary.requests, summary.duration, t1 - t0, e.connect, e.read, e.write,
    e.timeout, non200_total, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end

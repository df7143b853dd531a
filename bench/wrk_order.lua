-- wrk script for `make bench`: every request is a real, unique order (POST /api/orders/ with its own JSON body).
-- Usage: wrk -t1 -c64 -d10s -s bench/wrk_order.lua http://127.0.0.1:PORT/api/orders/ -- CATALOG_SIZE
-- Each order takes two different products at random from BENCH-001 .. BENCH-<CATALOG_SIZE>.
-- done() prints one WRK_JSON line that bench/run.py parses (latencies in microseconds).

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  catalog = tonumber(args[1] or "100")
  counter = 0
  math.randomseed(os.time() + thread_id * 7919)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json"
end

function request()
  counter = counter + 1
  local a = math.random(catalog)
  local b = math.random(catalog - 1)
  if b >= a then b = b + 1 end
  local sku_a = string.format("BENCH-%03d", a)
  local sku_b = string.format("BENCH-%03d", b)
  local body = string.format(
    '{"customer_email": "wrk-%d-%d@example.com", "items": [{"sku": "%s", "quantity": 1}, ' ..
    '{"sku": "%s", "quantity": 2}], "note": "wrk %d/%d"}',
    thread_id, counter, sku_a, sku_b, thread_id, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end

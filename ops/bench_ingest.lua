-- wrk script of ops/bench_ingest.py: every request is a unique, realistic TLINK push.
--
-- Arguments (after `--`): base_time devices first_device threads seed
--   base_time     unix seconds of the first body `time` (distinct per level)
--   devices       how many devices take turns (device ids first_device .. first_device+devices-1)
--   first_device  the first device id
--   threads       wrk's -t, to interleave the threads' request numbers
--   seed          random seed of the values (distinct per run, so a rerun against the same
--                 server sends new bodies, not duplicates)
-- Request number g = counter * threads + thread id picks device g % devices, and the body
-- `time` advances 60 s each time the round of devices starts again.
-- done() prints one line `BENCH_RESULT {json}` with latency percentiles and status counts.
-- Environment BENCH_HOSTS="127.0.0.1:P1,127.0.0.1:P2" (optional): thread i connects to host
-- i % count instead of the URL's (several service nodes under one load; the path stays).

local threads = {}
local counter = 0
local hosts = {}
for host in (os.getenv("BENCH_HOSTS") or ""):gmatch("[^,]+") do
  table.insert(hosts, host)
end

function setup(thread)
  if #hosts > 0 then
    local host, port = hosts[#threads % #hosts + 1]:match("^(.*):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  base_time = tonumber(args[1] or os.time())
  devices = tonumber(args[2] or 1000)
  first_device = tonumber(args[3] or 100000)
  nthreads = tonumber(args[4] or 1)
  statuses = {}
  stored_readings = 0
  sent_readings = 0
  math.randomseed(tonumber(args[5] or base_time) + tid)
end

local function hex(text)
  return (text:gsub(".", function(c) return string.format("%02X", c:byte()) end))
end

local function body_for(g)
  local index = g % devices
  local round = math.floor(g / devices)
  local device = first_device + index
  local sensors = 4 + index % 5
  local stamp = os.date("!%Y-%m-%d %H:%M:%S", base_time + round * 60)
  local clock = stamp:sub(12)
  local entries, raws = {}, {}
  for i = 1, sensors do
    local raw = string.format("%.4f", math.random() * 10)
    local alarm = (math.random() < 0.02) and "1" or "0"
    entries[i] = string.format(
      '{"times":"%s","sensorsId":%d,"isAlarm":"%s","sensorsTypeId":%d,"isLine":1,"reVal":"%s","value":"%.1f"}',
      clock, device * 10 + i, alarm, 1 + i % 3, raw, math.random() * 100)
    raws[i] = raw
  end
  sent_readings = sent_readings + sensors
  return string.format(
    '{"flag":"00","deviceUserid":%d,"parentUserId":"217","sensorsDates":[%s],"time":"%s","rawData":"%s","deviceId":%d}',
    300 + index % 50, table.concat(entries, ","), stamp, hex("#RTU," .. table.concat(raws, ",") .. "\r\n"), device)
end

function request()
  local g = counter * nthreads + tid
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body_for(g))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local n = body and body:match('"storedReadings":%s*(%d+)')
  if n then
    stored_readings = stored_readings + tonumber(n)
  end
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    into[k] = (into[k] or 0) + v
  end
end

function done(summary, latency, requests)
  local statuses_all, stored, sent = {}, 0, 0
  for _, thread in ipairs(threads) do
    merge(statuses_all, thread:get("statuses"))
    stored = stored + (thread:get("stored_readings") or 0)
    sent = sent + (thread:get("sent_readings") or 0)
  end
  local parts = {}
  for status, count in pairs(statuses_all) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,"statuses":{%s},"stored_readings":%d,' ..
    '"sent_readings":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes, table.concat(parts, ","), stored, sent,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end

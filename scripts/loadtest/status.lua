-- wrk script for the concurrency, deadline and overload runs: counts
-- responses by status, and responses slower than LATE_MS milliseconds (an
-- environment variable), then prints one RESULT line.
--
-- Latency is wrk's: from writing the request to reading the whole response.
-- Each connection keeps one request in flight, so it is the server's time
-- plus the loopback round trip.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  s200, s500, s503, sother = 0, 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    s200 = s200 + 1
  elseif status == 500 then
    s500 = s500 + 1
  elseif status == 503 then
    s503 = s503 + 1
  else
    sother = sother + 1
  end
end

-- Returns how many of `total` latencies exceed `limit_us`. wrk's
-- latency(i) scans the whole histogram on every call, so a loop over it is
-- quadratic. percentile() scans once, so this bisects over the percentile
-- instead, in 40 scans.
function count_late(latency, total, limit_us)
  if total == 0 or latency.max <= limit_us then
    return 0
  end
  if latency.min > limit_us then
    return total
  end
  local low, high = 0, 100
  for _ = 1, 40 do
    local middle = (low + high) / 2
    if latency:percentile(middle) <= limit_us then
      low = middle
    else
      high = middle
    end
  end
  -- wrk's percentile(p) is the latency at rank round(p / 100 * total + 0.5).
  local within = math.floor(low / 100 * total + 0.5 + 0.5)
  return math.max(total - within, 0)
end

function done(summary, latency, requests)
  local counts = { s200 = 0, s500 = 0, s503 = 0, sother = 0 }
  for _, thread in ipairs(threads) do
    for name in pairs(counts) do
      counts[name] = counts[name] + thread:get(name)
    end
  end

  local late = count_late(latency, summary.requests,
                           tonumber(os.getenv("LATE_MS")) * 1000)

  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT rps=%.1f requests=%d s200=%d s500=%d s503=%d other=%d late=%d " ..
    "p50_us=%d p99_us=%d max_us=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests / seconds, summary.requests, counts.s200, counts.s500,
    counts.s503, counts.sother, late, latency:percentile(50),
    latency:percentile(99), latency.max, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout))
end

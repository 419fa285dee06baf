-- wrk script: each request visits one of NAMES counters (`/c/name-<k>`), the k-th picked
-- with weight 1/k^S (a Zipf law: a few hot pages, many cold ones), as a counter service's
-- visitors spread over its counters. NAMES and S from the environment (10000, 1.1).
local names = tonumber(os.getenv("NAMES") or "10000")
local s = tonumber(os.getenv("ZIPF_S") or "1.1")
local cumulative = {}

function init(args)
  local sum = 0
  for k = 1, names do
    sum = sum + 1 / k ^ s
    cumulative[k] = sum
  end
  for k = 1, names do
    cumulative[k] = cumulative[k] / sum
  end
  -- Each thread its own sequence.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
end

local function pick()
  local x = math.random()
  local lo, hi = 1, names
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  return wrk.format("GET", "/c/name-" .. pick())
end

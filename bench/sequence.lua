-- wrk script: visits counters `/c/many-<n>` for n = 1, 2, 3, … (each thread its own
-- stride), to make many counters quickly; used by bench/counters.sh.
local n, stride = 0, 1

function setup(thread)
  thread:set("first", (setup_count or 0))
  setup_count = (setup_count or 0) + 1
end

function init(args)
  n = tonumber(first or 0)
  stride = tonumber(os.getenv("THREADS") or "2")
end

function request()
  n = n + stride
  return wrk.format("GET", "/c/many-" .. n)
end

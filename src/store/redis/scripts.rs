//! The Lua scripts the Redis store runs. A script runs atomically: no other client sees
//! its writes half done, and every write of one script reaches replicas and the
//! append-only file together.

use redis::Script;

/// Adds a batch's visits, to any mix of counters, exactly once; with batch number 0 (a
/// probe), checks that a write of the tutorial counter would succeed now and changes
/// nothing (readiness).
///
/// KEYS: 1 this writer's batch records, 2 the hash of visits per replica (the tutorial
/// counter's shares), 3 the registry of counters (name -> who created it), then three per
/// tally: the total (the tutorial's string key, INCR semantics; a named counter's hash,
/// field `total`), the hash of visits per day, today's unique-visitor HyperLogLog.
///
/// ARGV: 1 replica, 2 the time (ms, Redis's clock) after which the write must not be
/// applied, 3 the batch's sequence number, 4 how many records the writer keeps, 5 how
/// long (ms) they outlive its last write, 6 today (`YYYY-MM-DD`), 7 days of history
/// kept, 8 when today's unique visitors expire (s), 9 counters at most, 10 `1` when only
/// counters the administrator created count, 11 the tutorial counter's name; then per
/// tally: its name, its visits, how many visitors follow, the visitors (salted hashes).
///
/// Returns `{now_ms, replayed, results}`: per tally, comma-separated, the total after it
/// (the exact string Redis holds: Lua numbers are doubles, which would round totals above
/// 2^53) or why it was not counted: `U` unknown counter, `M` too many counters, `L` the
/// total at its limit, `S` this replica's share at its limit, `W` a key of the wrong type.
///
/// Each batch's record is `"<batch>:<results>"` in a ring of slots (batch number modulo
/// the slots kept), so the records stay bounded whatever fails. A batch whose record
/// exists was applied by an earlier attempt: its recorded results come back and nothing
/// is added again. Every check is made before anything is written; Lua does not roll
/// back, so each write is undone if a later one fails: an error always means no count
/// was applied. (Visitors added to an earlier tally's HyperLogLog stay: a sketch cannot
/// forget. Unique counts are estimates; visits are exact.)
///
/// Errors of its own: `EXPIRED` (past the deadline); for a probe also `LIMIT`,
/// `SHARELIMIT` and `WRONGTYPE`.
pub const ADD_VISITS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local records, shares, registry = KEYS[1], KEYS[2], KEYS[3]
local replica, batch = ARGV[1], ARGV[3]
local slot = tonumber(batch) % tonumber(ARGV[4])
local recorded = redis.call('HGET', records, slot)
if recorded then
  local applied, results = string.match(recorded, '^(%d+):(.*)$')
  if applied == batch then
    return {now, 1, results}
  end
end
if now > tonumber(ARGV[2]) then
  return redis.error_reply('EXPIRED write reached Redis after its deadline, at ' .. string.format('%.0f', now))
end
local day, keep, unique_until = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local max_counters, closed, tutorial = tonumber(ARGV[9]), ARGV[10] == '1', ARGV[11]
local MAX = '9223372036854775807'

local tallies = {}
local a, k = 12, 4
while a <= #ARGV do
  local n = tonumber(ARGV[a + 2])
  tallies[#tallies + 1] = {
    name = ARGV[a], visits = ARGV[a + 1], first = a + 3, last = a + 2 + n,
    total = KEYS[k], days = KEYS[k + 1], uniques = KEYS[k + 2],
    tutorial = ARGV[a] == tutorial,
  }
  a = a + 3 + n
  k = k + 3
end

local function integer(value)
  return (not value) or string.match(value, '^%-?%d+$') ~= nil
end

local registered = redis.call('HLEN', registry)

-- Why a tally cannot be counted, or nil. Reads only.
local function check(tally)
  local total
  if tally.tutorial then
    total = redis.pcall('GET', tally.total)
  else
    total = redis.pcall('HGET', tally.total, 'total')
  end
  if type(total) == 'table' or not integer(total) then return 'W' end
  if total == MAX then return 'L' end
  local today = redis.pcall('HGET', tally.days, day)
  if type(today) == 'table' or not integer(today) then return 'W' end
  local kind = redis.call('TYPE', tally.uniques).ok
  if kind ~= 'none' and (kind ~= 'string' or redis.call('GETRANGE', tally.uniques, 0, 3) ~= 'HYLL') then
    return 'W'
  end
  if tally.tutorial then
    local share = redis.pcall('HGET', shares, replica)
    if type(share) == 'table' or not integer(share) then return 'W' end
    if share == MAX then return 'S' end
  end
  if redis.call('HEXISTS', registry, tally.name) == 0 then
    if not tally.tutorial then
      if closed then return 'U' end
      if registered >= max_counters then return 'M' end
    end
    tally.register = true
    registered = registered + 1
  end
  return nil
end

if batch == '0' then
  local codes = {W = 'WRONGTYPE a key of the counter holds the wrong kind of value',
                 L = 'LIMIT the total is at its limit',
                 S = 'SHARELIMIT the share of this replica is at its limit'}
  for _, tally in ipairs(tallies) do
    local why = check(tally)
    if why and codes[why] then return redis.error_reply(codes[why]) end
    redis.call('INCRBY', tally.total, 0)
    redis.call('HINCRBY', shares, replica, 0)
  end
  redis.call('PEXPIRE', records, ARGV[5])
  return {now, 0, ''}
end

-- Undo steps of the writes made so far, newest last.
local undo = {}
local function rollback(to)
  for i = #undo, to + 1, -1 do
    undo[i]()
    undo[i] = nil
  end
end
local function failed(result)
  return type(result) == 'table' and result.err
end

-- Counts a tally: its total after it, why not, or an error (everything undone by then).
local function apply(tally)
  local mark = #undo
  local v, key, days = tally.visits, tally.total, tally.days
  local done
  if tally.tutorial then
    done = redis.pcall('INCRBY', key, v)
    if not failed(done) then undo[#undo + 1] = function() redis.call('DECRBY', key, v) end end
  else
    done = redis.pcall('HINCRBY', key, 'total', v)
    if not failed(done) then undo[#undo + 1] = function() redis.call('HINCRBY', key, 'total', -v) end end
  end
  if failed(done) then
    if string.find(done.err, 'overflow') then return 'L' end
    return done
  end
  if tally.tutorial then
    done = redis.pcall('HINCRBY', shares, replica, v)
    if failed(done) then
      rollback(mark)
      if string.find(done.err, 'overflow') then return 'S' end
      return done
    end
    undo[#undo + 1] = function() redis.call('HINCRBY', shares, replica, -v) end
  end
  done = redis.pcall('HINCRBY', days, day, v)
  if failed(done) then
    rollback(mark)
    return done
  end
  local new_day = done == tonumber(v)
  undo[#undo + 1] = function()
    if new_day then redis.call('HDEL', days, day) else redis.call('HINCRBY', days, day, -v) end
  end
  tally.new_day = new_day
  if tally.register then
    local name = tally.name
    done = redis.pcall('HSETNX', registry, name, 'visit')
    if failed(done) then
      rollback(mark)
      return done
    end
    undo[#undo + 1] = function() redis.call('HDEL', registry, name) end
  end
  tally.counted = true
  if tally.tutorial then return redis.call('GET', key) end
  return redis.call('HGET', key, 'total')
end

local results = {}
for i, tally in ipairs(tallies) do
  local result = check(tally)
  if not result then
    result = apply(tally)
    if failed(result) then
      rollback(0)
      return result
    end
  end
  results[i] = result
end
local encoded = table.concat(results, ',')

local done = redis.pcall('HSET', records, slot, batch .. ':' .. encoded)
if failed(done) then
  rollback(0)
  return done
end
done = redis.pcall('PEXPIRE', records, ARGV[5])
if failed(done) then
  if recorded then redis.call('HSET', records, slot, recorded) else redis.call('HDEL', records, slot) end
  rollback(0)
  return done
end

-- Last, as a sketch cannot forget: each counted tally's visitors.
for _, tally in ipairs(tallies) do
  if tally.counted and tally.last >= tally.first then
    done = redis.pcall('PFADD', tally.uniques, unpack(ARGV, tally.first, tally.last))
    if failed(done) then
      if recorded then redis.call('HSET', records, slot, recorded) else redis.call('HDEL', records, slot) end
      rollback(0)
      return done
    end
    redis.call('EXPIREAT', tally.uniques, unique_until)
  end
end

-- Housekeeping, once a day per counter: the history keeps its last days only.
for _, tally in ipairs(tallies) do
  if tally.new_day and redis.call('HLEN', tally.days) > keep + 1 then
    local dates = {}
    for _, field in ipairs(redis.call('HKEYS', tally.days)) do
      if field ~= 'total' then dates[#dates + 1] = field end
    end
    table.sort(dates)
    for i = 1, #dates - keep do
      redis.call('HDEL', tally.days, dates[i])
    end
  end
end
return {now, 0, encoded}
";

/// Records this replica as alive at the server's clock, so replicas on hosts with skewed
/// clocks agree, and forgets replicas silent for a day. Returns `{now_ms, total}`, the
/// total as its exact string (or false when there is none).
///
/// KEYS: 1 heartbeats, 2 versions, 3 the total. ARGV: 1 replica, 2 version.
pub const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
local total = redis.pcall('GET', KEYS[3])
if type(total) == 'table' then total = false end
return {now, total}
";

/// Sets a counter's total (the administrator's; sent with EVAL, being rare), making the counter if there is none;
/// the counter is then one the administrator created. Returns the total before (false
/// when there was none).
///
/// KEYS: 1 the registry, 2 the total (the tutorial's string key, or the counter's hash).
/// ARGV: 1 name, 2 the total, 3 `1` for the tutorial's counter, 4 counters at most.
///
/// Errors of its own: `TOOMANY` (a new counter, and there are as many as allowed).
pub const SET_TOTAL: &str = r"
local known = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if not known and ARGV[3] == '0' and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return redis.error_reply('TOOMANY there are as many counters as allowed')
end
local previous
if ARGV[3] == '1' then
  previous = redis.call('GET', KEYS[2])
  redis.call('SET', KEYS[2], ARGV[2])
else
  previous = redis.call('HGET', KEYS[2], 'total')
  redis.call('HSET', KEYS[2], 'total', ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[1], 'admin')
return previous
";

/// Deletes a counter: its total, history and unique visitors, and its registration.
/// Returns 1 if there was such a counter.
///
/// KEYS: 1 the registry, 2 the counter's hash, then its unique-visitor keys. ARGV: 1 name.
pub const DELETE: &str = r"
local existed = redis.call('HDEL', KEYS[1], ARGV[1]) + redis.call('EXISTS', KEYS[2])
redis.call('DEL', unpack(KEYS, 2))
if existed > 0 then return 1 end
return 0
";

/// The scripts, hashed once.
#[derive(Clone)]
pub struct Scripts {
    pub add_visits: Script,
    pub heartbeat: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            add_visits: Script::new(ADD_VISITS),
            heartbeat: Script::new(HEARTBEAT),
        }
    }
}

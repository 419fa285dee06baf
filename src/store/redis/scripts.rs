//! The Lua scripts the Redis store runs. A script runs atomically: no other client sees
//! its writes half done, and every write of one script reaches replicas and the
//! append-only file together.

use redis::Script;

/// Adds a batch's visits, to any mix of counters, exactly once; with batch number 0 (a
/// probe), checks that a write of the tutorial counter would succeed now, running each
/// command such a write runs in a way that changes no count (readiness: an ACL that
/// denies any one of them makes the service not ready). A probe, as a write, puts a new
/// mark in place when it finds an older copy of the data (below).
///
/// KEYS: 1 this writer's batch records, 2 the hash of visits per replica (the tutorial
/// counter's shares), 3 the registry of counters (name -> who created it), 4 the mark of
/// the data the service counts in (`dataset`), 5 the number of the last write (`writes`),
/// 6 the number of this service process's last write (`written:<process>`), then three per
/// tally: the total (the tutorial's string key, INCR semantics; a named counter's hash,
/// field `total`), the hash of visits per day, today's unique-visitor HyperLogLog.
///
/// ARGV: 1 replica, 2 the time (ms, Redis's clock) after which the write must not be
/// applied, 3 the batch's sequence number, 4 how many records the writer keeps, 5 how
/// long (ms) they outlive its last write, 6 today (`YYYY-MM-DD`), 7 days of history
/// kept, 8 when today's unique visitors expire (s), 9 counters at most, 10 `1` when only
/// counters the administrator created count, 11 the tutorial counter's name, 12 the mark
/// the service took, 13 the number of the last write acknowledged to this service
/// process, 14 the mark to put in place when Redis holds an older copy, 15 the number of
/// this process's own last write acknowledged to it (0: none to check); then per tally:
/// its name, its visits, how many visitors follow, the visitors (salted hashes).
///
/// Every write is numbered (`INCRBY` of `writes`), so that data that went back to an older
/// copy (a snapshot loaded after a crash, a backup restored, a stale server made primary)
/// shows itself: it holds a lower number than a write already acknowledged. Other
/// processes' writes after the copy came back can pass that number, so each process's
/// writes also leave the number of its last one under a key of its own (renewed by its
/// probes, lasting as long as its batch records): a copy that lacks the last write
/// acknowledged to a process lacks that number too, whatever the others wrote since. The
/// write that finds an older copy puts a new mark in place, so that every process
/// refuses to count on (`DATALOST`) until the data is restored or the services are
/// restarted.
///
/// Returns `{now_ms, replayed, results, write}`: `write` the write's number (a replay's:
/// its first application's; a probe's: the last write's, whosever it was); per tally, comma-separated, the total after it
/// (the exact string Redis holds: Lua numbers are doubles, which would round totals above
/// 2^53) or why it was not counted: `U` unknown counter, `M` too many counters, `L` the
/// total (or the day's visits) at its limit, `S` this replica's share at its limit, `W` a
/// key of the wrong type, `G` the total of a counter in the registry gone.
///
/// A counter in the registry has its total: a total gone from under it (deleted, renamed,
/// expired by hand) would count from 1 again and hand out its numbers a second time. So
/// a tally whose total is not there asks the registry, and a counter it knows is refused
/// (`G`) with nothing written, until the total is back (restored, or set by the
/// administrator) or the counter is deleted. A total set to a lower number by hand is not
/// seen: the administrator's API is the way to set one.
///
/// Each batch's record is `"<batch>:<write number>:<results>"` in a ring of slots (batch number modulo
/// the slots kept), so the records stay bounded whatever fails. A batch whose record
/// exists was applied by an earlier attempt: its recorded results come back and nothing
/// is added again. Its records' expiry is renewed all the same: a write, so that a `WAIT`
/// after the reply waits for the replicas to reach the first application too, also on a
/// connection that did not make it (which has written nothing `WAIT` could wait for). A tally costs three commands as a rule (its total, its day, its
/// visitors); its limits and key types are checked by those commands' own errors, and
/// the registry is asked only when a name is new. Lua does not roll back, so each write
/// is undone when a later one of its tally fails (the tally is then refused alone), or
/// of the batch: an error always means no count was applied. (Visitors added to an
/// earlier tally's HyperLogLog stay when the whole batch fails: a sketch cannot forget.
/// Unique counts are estimates; visits are exact. In practice the only error that fails
/// a whole batch, a full memory, comes at its first write.)
///
/// Every command after a tally's first write is called with `pcall`, so that its error
/// (a key of the wrong type, a command an ACL denies) is met by the undo rather than
/// ending the script with the writes before it applied.
///
/// Errors of its own: `DATALOST` (Redis holds another mark, or none: it lost the data the
/// service counted in, and nothing is written; or it holds an older copy, and only the new
/// mark is written), `EXPIRED` (past the deadline), `PARTIAL` (a write failed and undoing
/// it failed too: the batch's visits may have been counted), `WRONGTYPE` (the number of
/// the last write is not a number); for a probe also `LIMIT`, `SHARELIMIT`,
/// `WRONGTYPE` for the counter's keys and `GONE` for its total gone.
pub const ADD_VISITS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local records, shares, registry = KEYS[1], KEYS[2], KEYS[3]
local function failed(result)
  return type(result) == 'table' and result.err
end
local replica, batch = ARGV[1], ARGV[3]
local mark = redis.call('GET', KEYS[4])
if mark ~= ARGV[12] then
  local held = mark and 'another mark' or 'no mark'
  return redis.error_reply('DATALOST the store holds ' .. held .. ', not the one of the data counted in')
end
local written = redis.call('GET', KEYS[5])
if written and not string.match(written, '^%d+$') then
  return redis.error_reply('WRONGTYPE the number of the last write is not a number')
end
local mine = redis.pcall('GET', KEYS[6])
if failed(mine) or (mine and not string.match(mine, '^%d+$')) then
  return redis.error_reply('WRONGTYPE the number of this process\'s last write is not a number')
end
if tonumber(written or '0') < tonumber(ARGV[13]) then
  redis.call('SET', KEYS[4], ARGV[14])
  return redis.error_reply('DATALOST the store holds an older copy of the data counted in (write ' .. (written or '0') .. ', and ' .. ARGV[13] .. ' was acknowledged)')
end
if tonumber(mine or '0') < tonumber(ARGV[15]) then
  redis.call('SET', KEYS[4], ARGV[14])
  return redis.error_reply('DATALOST the store holds an older copy of the data counted in (without write ' .. ARGV[15] .. ', acknowledged to this process)')
end
local slot = tonumber(batch) % tonumber(ARGV[4])
local recorded = redis.call('HGET', records, slot)
if recorded then
  local applied, number, results = string.match(recorded, '^(%d+):(%d+):(.*)$')
  if applied == batch then
    -- A write of its own, so that a WAIT after this reply waits for the replicas to
    -- reach at least this point, and so past the batch's first application: WAIT waits
    -- for the connection's last write, and a fresh connection has none. The number is
    -- the first application's: acknowledged now, as its results are.
    redis.call('PEXPIRE', records, ARGV[5])
    redis.call('PEXPIRE', KEYS[6], ARGV[5])
    return {now, 1, results, tonumber(number)}
  end
end
local day, keep, unique_until = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local max_counters, closed, tutorial = tonumber(ARGV[9]), ARGV[10] == '1', ARGV[11]
if now > tonumber(ARGV[2]) then
  return redis.error_reply('EXPIRED write reached Redis after its deadline (' .. ARGV[2] .. '), at ' .. string.format('%.0f', now))
end
local MAX = '9223372036854775807'
-- Integers Lua holds exactly (its numbers are doubles).
local EXACT = 9007199254740992

-- The tallies, parsed into parallel arrays (no table per tally: this runs for every
-- batch). A tally's visitors are ARGV[first[i] .. last[i]].
local names, visits, first, last, totals, days, uniques = {}, {}, {}, {}, {}, {}, {}
local count = 0
do
  local a, k, n_args = 16, 7, #ARGV
  while a <= n_args do
    count = count + 1
    local n = tonumber(ARGV[a + 2])
    names[count], visits[count] = ARGV[a], ARGV[a + 1]
    first[count], last[count] = a + 3, a + 2 + n
    totals[count], days[count], uniques[count] = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    a = a + 3 + n
    k = k + 3
  end
end

-- A probe: every check a write of the tutorial's counter makes, and a write of nothing.
if batch == '0' then
  local function integer(value)
    return (not value) or string.match(value, '^%-?%d+$') ~= nil
  end
  for i = 1, count do
    local total = redis.pcall('GET', totals[i])
    local today = redis.pcall('HGET', days[i], day)
    local share = redis.pcall('HGET', shares, replica)
    if failed(total) or failed(today) or failed(share) or not integer(total)
        or not integer(today) or not integer(share) then
      return redis.error_reply('WRONGTYPE a key of the counter holds the wrong kind of value')
    end
    if total == MAX then return redis.error_reply('LIMIT the total is at its limit') end
    -- Before the write of nothing below, which would make the total again at 0.
    if not total and redis.call('HEXISTS', registry, names[i]) == 1 then
      return redis.error_reply('GONE the total of counter ' .. names[i] .. ' is gone from under its entry in the registry')
    end
    if share == MAX then return redis.error_reply('SHARELIMIT the share of this replica is at its limit') end
    -- Every other command the write runs now (not those that only undo one), each in a
    -- way that changes nothing: the write's number and the total added 0 to (the number
    -- first, as in a write: Redis refuses a script's writes for a full memory only until
    -- its first write), this replica's share set to what it is, the registry (only while
    -- the name is new) written by deleting a field no name can have, which stands for
    -- the registration a first visit writes, today's sketch made as its first visit
    -- makes it.
    redis.call('INCRBY', KEYS[5], 0)
    redis.call('EXISTS', totals[i])
    redis.call('INCRBY', totals[i], 0)
    if redis.call('HEXISTS', registry, names[i]) == 0 then
      redis.call('HLEN', registry)
      redis.call('HDEL', registry, '')
    end
    redis.call('HINCRBY', shares, replica, 0)
    redis.call('HSET', shares, replica, redis.call('HGET', shares, replica))
    -- The sketch's expiry, which a write sets with the day's first visit, before the
    -- sketch is made (on no key at all it changes nothing; on a sketch of today, it sets
    -- what it is), so that an ACL that denies it leaves no sketch made without one. Then
    -- the sketch, which Redis checks (a key of another kind, or a damaged sketch, is
    -- refused), made if there is none yet, as its first visit makes it.
    if not today then redis.call('EXPIREAT', uniques[i], unique_until) end
    if redis.call('PFADD', uniques[i]) == 1 or not today then
      redis.call('EXPIREAT', uniques[i], unique_until)
    end
  end
  redis.call('PEXPIRE', records, ARGV[5])
  -- This process's number, renewed as a write sets it.
  redis.call('SET', KEYS[6], mine or '0', 'PX', ARGV[5])
  -- The number of the last write, every process's: once replicas confirm this probe,
  -- they hold that write too, and it is acknowledged to this process.
  return {now, 0, '', tonumber(written or '0')}
end

-- What each counted tally did, to undo it: its total made (a name's first count), its
-- name registered, its day's field made. `done` is how far each got: 1 total, 2 name,
-- 3 share, 4 day.
local done, made, registered_now, new_day = {}, {}, {}, {}
-- Counters in the registry, once asked.
local registered = nil

-- The first error of a command that undoes a write, if one failed: what was written
-- then stays, and the batch's visits may have been counted.
local undo_failed = nil
local function revert(...)
  local result = redis.pcall(...)
  if failed(result) then undo_failed = undo_failed or result.err end
end

local function undo(i)
  local v, total, day_key = tonumber(visits[i]), totals[i], days[i]
  local reached = done[i] or 0
  if reached >= 4 then
    if new_day[i] then revert('HDEL', day_key, day) else revert('HINCRBY', day_key, day, -v) end
  end
  if reached >= 3 and names[i] == tutorial then revert('HINCRBY', shares, replica, -v) end
  if reached >= 2 and registered_now[i] then
    revert('HDEL', registry, names[i])
    registered, registered_now[i] = registered - 1, nil
  end
  if reached >= 1 then
    if names[i] == tutorial then
      revert('DECRBY', total, v)
    elseif made[i] then
      revert('HDEL', total, 'total')
    else
      revert('HINCRBY', total, 'total', -v)
    end
  end
  done[i] = nil
end

-- What an error of one counter's write means for that counter: `overflow` its limit, a
-- key of the wrong kind or a damaged sketch `W`; nil for an error that fails the whole
-- batch.
local function refusal(err, overflow)
  if string.find(err, 'overflow') then return overflow end
  if string.find(err, 'WRONGTYPE') or string.find(err, 'not an integer')
      or string.find(err, 'HyperLogLog') or string.find(err, 'INVALIDOBJ') then
    return 'W'
  end
  return nil
end

-- Counts tally i: its total after it, why not (everything of it undone), or an error.
local function apply(i)
  local v, nv, key, name = visits[i], tonumber(visits[i]), totals[i], names[i]
  local is_tutorial = name == tutorial
  local function refused(err, overflow)
    undo(i)
    return refusal(err, overflow) or {err = err}
  end
  -- A total not there is a new counter's, or one gone from under its registration:
  -- nothing written yet, so a refusal needs no undo.
  local there
  if is_tutorial then there = redis.pcall('EXISTS', key) else there = redis.pcall('HEXISTS', key, 'total') end
  if failed(there) then return refusal(there.err, 'L') or there end
  if there == 0 then
    local known = redis.pcall('HEXISTS', registry, name)
    if failed(known) then return refusal(known.err, 'L') or known end
    if known == 1 then return 'G' end
  end
  local total
  if is_tutorial then
    total = redis.pcall('INCRBY', key, v)
  else
    total = redis.pcall('HINCRBY', key, 'total', v)
  end
  if failed(total) then return refusal(total.err, 'L') or total end
  -- Made by this tally only when there was none: a total set to 0 (a reset) is put
  -- back to 0 by an undo, not deleted, which would leave its registration without it.
  done[i], made[i] = 1, there == 0 and not is_tutorial
  -- Every command from here on may fail (a key of the wrong type, a command an ACL
  -- denies), and its failure must undo what the tally wrote: `pcall` throughout.
  -- A name seen for the first time (or again after a reset to 0): registered, if it may be.
  if total == nv or is_tutorial then
    local known = redis.pcall('HEXISTS', registry, name)
    if failed(known) then return refused(known.err) end
    if known == 0 then
      if not registered then
        local n = redis.pcall('HLEN', registry)
        if failed(n) then return refused(n.err) end
        registered = n
      end
      if not is_tutorial then
        if closed then undo(i) return 'U' end
        -- The tutorial's counter always has its place among the most allowed.
        local tutorial_known = redis.pcall('HEXISTS', registry, tutorial)
        if failed(tutorial_known) then return refused(tutorial_known.err) end
        if registered + 1 - tutorial_known >= max_counters then undo(i) return 'M' end
      end
      local result = redis.pcall('HSET', registry, name, 'visit')
      if failed(result) then return refused(result.err) end
      registered, registered_now[i] = registered + 1, true
    end
  end
  done[i] = 2
  if is_tutorial then
    local result = redis.pcall('HINCRBY', shares, replica, v)
    if failed(result) then return refused(result.err, 'S') end
  end
  done[i] = 3
  local today = redis.pcall('HINCRBY', days[i], day, v)
  if failed(today) then return refused(today.err, 'L') end
  done[i], new_day[i] = 4, today == nv
  -- Last of the tally, as a sketch cannot forget: its visitors. The day's sketch lasts as
  -- long as the day's history.
  if last[i] >= first[i] then
    local result = redis.pcall('PFADD', uniques[i], unpack(ARGV, first[i], last[i]))
    if failed(result) then return refused(result.err, 'W') end
    if today == nv then
      result = redis.pcall('EXPIREAT', uniques[i], unique_until)
      if failed(result) then return refused(result.err) end
    end
  end
  if math.abs(total) < EXACT then return string.format('%d', total) end
  local exact
  if is_tutorial then exact = redis.pcall('GET', key) else exact = redis.pcall('HGET', key, 'total') end
  if failed(exact) then return refused(exact.err) end
  return exact
end

-- The batch fails with `err`, everything of it undone; or, where that failed too, with
-- `PARTIAL`: its visits may have been counted.
local function fail(err)
  for i = count, 1, -1 do
    if done[i] then undo(i) end
  end
  if undo_failed then
    return redis.error_reply('PARTIAL a write could not be undone (' .. undo_failed .. ') after ' .. err)
  end
  return redis.error_reply(err)
end

-- The write's number, its first write: a full memory refuses it here, before any tally.
local number = redis.call('INCRBY', KEYS[5], 1)
-- This process's, which only ever grows: a failed batch leaves it past the process's
-- last acknowledged write, which is all it must not fall below.
local mine_set = redis.pcall('SET', KEYS[6], number, 'PX', ARGV[5])
if failed(mine_set) then return redis.error_reply(mine_set.err) end
local results = {}
for i = 1, count do
  local result = apply(i)
  if failed(result) then return fail(result.err) end
  results[i] = result
end
-- A tally refused alone whose own undo failed.
if undo_failed then return fail('a refused tally') end
local encoded = table.concat(results, ',')

local stored = redis.pcall('HSET', records, slot, batch .. ':' .. number .. ':' .. encoded)
if failed(stored) then return fail(stored.err) end
stored = redis.pcall('PEXPIRE', records, ARGV[5])
if failed(stored) then
  if recorded then revert('HSET', records, slot, recorded) else revert('HDEL', records, slot) end
  return fail(stored.err)
end

-- Housekeeping, once a day per counter: the history keeps its last days only. The
-- batch is counted and recorded by now, so an error here is left for the next day's
-- first visit (the script must not fail after counting).
for i = 1, count do
  local fields = new_day[i] and redis.pcall('HLEN', days[i])
  if type(fields) == 'number' and fields > keep + 1 then
    local all = redis.pcall('HKEYS', days[i])
    if not failed(all) then
      local dates = {}
      for _, field in ipairs(all) do
        if field ~= 'total' then dates[#dates + 1] = field end
      end
      table.sort(dates)
      for j = 1, #dates - keep do
        redis.pcall('HDEL', days[i], dates[j])
      end
    end
  end
end
return {now, 0, encoded, number}
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
/// ARGV: 1 name, 2 the total, 3 `1` for the tutorial's counter, 4 counters at most, 5 the
/// tutorial's name.
///
/// Errors of its own: `TOOMANY` (a new counter, and there are as many as allowed, the
/// tutorial's counter always among them), `PARTIAL` (the registry refused the entry and
/// the total could not be put back: the change may have been made).
pub const SET_TOTAL: &str = r"
local known = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if not known and ARGV[3] == '0' then
  local reserved = 1 - redis.call('HEXISTS', KEYS[1], ARGV[5])
  if redis.call('HLEN', KEYS[1]) + reserved >= tonumber(ARGV[4]) then
    return redis.error_reply('TOOMANY there are as many counters as allowed')
  end
end
local tutorial = ARGV[3] == '1'
local previous, set
if tutorial then
  previous = redis.call('GET', KEYS[2])
  set = redis.pcall('SET', KEYS[2], ARGV[2])
else
  previous = redis.call('HGET', KEYS[2], 'total')
  set = redis.pcall('HSET', KEYS[2], 'total', ARGV[2])
end
if type(set) == 'table' and set.err then return set end
-- Lua does not roll back: a registry that refuses the entry puts the total back, and
-- says `PARTIAL` (the change may have been made) when that is refused too.
local registered = redis.pcall('HSET', KEYS[1], ARGV[1], 'admin')
if type(registered) == 'table' and registered.err then
  local undone
  if tutorial then
    if previous then undone = redis.pcall('SET', KEYS[2], previous) else undone = redis.pcall('DEL', KEYS[2]) end
  elseif previous then
    undone = redis.pcall('HSET', KEYS[2], 'total', previous)
  else
    undone = redis.pcall('HDEL', KEYS[2], 'total')
  end
  if type(undone) == 'table' and undone.err then
    return redis.error_reply('PARTIAL the total could not be put back (' .. undone.err .. ') after ' .. registered.err)
  end
  return registered
end
return previous
";

/// Deletes a counter: its total, history and unique visitors, and its registration.
/// Returns `{existed, total}`: 1 if any of them was there, and the total it held (empty
/// when there was none, `?` when it was not readable: a key of another kind).
///
/// KEYS: 1 the registry, 2 the counter's hash, then its unique-visitor keys. ARGV: 1 name.
///
/// The registration goes first, then the keys; keys that cannot be deleted put the
/// registration back, so a refusal changes nothing. Errors of its own: `PARTIAL` (the
/// keys could not be deleted and the registration not put back: the change may have been
/// made in part).
pub const DELETE: &str = r"
local registered = redis.call('HGET', KEYS[1], ARGV[1])
local total = redis.pcall('HGET', KEYS[2], 'total')
if type(total) == 'table' then total = '?' end
local unregistered = redis.pcall('HDEL', KEYS[1], ARGV[1])
if type(unregistered) == 'table' and unregistered.err then return unregistered end
local existed = redis.pcall('DEL', unpack(KEYS, 2))
if type(existed) == 'table' and existed.err then
  if registered then
    local back = redis.pcall('HSET', KEYS[1], ARGV[1], registered)
    if type(back) == 'table' and back.err then
      return redis.error_reply('PARTIAL the counter was unregistered but its keys not deleted (' .. existed.err .. ')')
    end
  end
  return existed
end
if existed + unregistered > 0 then return {1, total or ''} end
return {0, ''}
";

/// Puts a new mark in place of the one the service took (ARGV 1: it, 2 the new one) in
/// `dataset` (KEYS 1), if it is still there: every process then refuses to count on
/// (`DATALOST`). Returns 1 if it replaced it.
pub const REPLACE_MARK: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
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

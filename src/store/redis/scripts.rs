//! The Lua scripts the Redis store runs. A script runs atomically: no other client sees
//! its writes half done, and every write of one script reaches replicas and the
//! append-only file together.

use redis::Script;

/// Adds visits to the total and this replica's share, exactly once per batch; with no
/// visits, checks that a write would succeed now and changes nothing (readiness).
///
/// KEYS: 1 the total (INCR semantics), 2 the hash of visits per replica, 3 this writer's
/// batch records. ARGV: 1 visits (0: a probe), 2 replica, 3 the time (ms, Redis's clock)
/// after which the write must not be applied, 4 the batch's sequence number, 5 how many
/// records the writer keeps, 6 how long (ms) they outlive its last write.
///
/// Returns `{total, now_ms, replayed}`. The total is returned as the exact string Redis
/// holds: Lua numbers are doubles, which would round totals above 2^53.
///
/// Each batch's record is `"<batch>:<total>"` in a ring of slots (batch number modulo the
/// slots kept), so the records stay bounded whatever fails. A batch whose record exists
/// was applied by an earlier attempt: its recorded total comes back and nothing is added
/// again. Lua does not roll back, so a write that fails after the increment undoes what
/// it did before returning the error: an error always means nothing was applied.
///
/// A probe makes every check a write makes, with the same commands on the same keys:
/// the types, the limits, and a write of nothing to each key, which the server refuses
/// as it would refuse a write (out of memory, too few replicas, an ACL, a replica).
/// It may create the total at 0 and this replica's share at 0.
///
/// Errors of its own: `EXPIRED` (past the deadline), `SHARELIMIT` (this replica's share
/// cannot grow), `LIMIT` (neither can the total).
pub const ADD_VISITS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = tonumber(ARGV[4]) % tonumber(ARGV[5])
local recorded = redis.call('HGET', KEYS[3], slot)
if recorded then
  local batch, total = string.match(recorded, '^(%d+):(.*)$')
  if batch == ARGV[4] then
    return {total, now, 1}
  end
end
if now > tonumber(ARGV[3]) then
  return redis.error_reply('EXPIRED write reached Redis after its deadline, at ' .. string.format('%.0f', now))
end
local MAX = '9223372036854775807'
if ARGV[1] == '0' then
  local total = redis.call('GET', KEYS[1])
  if total == MAX then
    return redis.error_reply('LIMIT the total is at its limit')
  end
  if redis.call('HGET', KEYS[2], ARGV[2]) == MAX then
    return redis.error_reply('SHARELIMIT the share of this replica is at its limit')
  end
  redis.call('INCRBY', KEYS[1], 0)
  redis.call('HINCRBY', KEYS[2], ARGV[2], 0)
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  return {total or '0', now, 0}
end
redis.call('INCRBY', KEYS[1], ARGV[1])
local done = redis.pcall('HINCRBY', KEYS[2], ARGV[2], ARGV[1])
if type(done) == 'table' and done.err then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  if string.find(done.err, 'overflow') then
    return redis.error_reply('SHARELIMIT the share of this replica is at its limit')
  end
  return done
end
local total = redis.call('GET', KEYS[1])
local function undo()
  redis.call('HINCRBY', KEYS[2], ARGV[2], -tonumber(ARGV[1]))
  redis.call('DECRBY', KEYS[1], ARGV[1])
end
done = redis.pcall('HSET', KEYS[3], slot, ARGV[4] .. ':' .. total)
if type(done) == 'table' and done.err then
  undo()
  return done
end
done = redis.pcall('PEXPIRE', KEYS[3], ARGV[6])
if type(done) == 'table' and done.err then
  if recorded then redis.call('HSET', KEYS[3], slot, recorded) else redis.call('HDEL', KEYS[3], slot) end
  undo()
  return done
end
return {total, now, 0}
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

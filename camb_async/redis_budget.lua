-- The fleet rate budget of camb_async.redis.RedisRateBudget: one atomic run per call.
--
-- KEYS (one hash tag, so one Redis Cluster slot): 1 start log (zset: member -> start time),
-- 2 state (hash), 3 leases (zset: member -> expiry), 4 revoked (zset: member -> expiry).
-- ARGV: see RedisRateBudget._call. Floats come in as strings and go out as strings: Redis
-- truncates a Lua number to an integer reply, and Lua's number-to-string keeps 14 digits.
-- A member is chosen by the client for one acquire ("<process token>:<seq>").
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local log, state, leases, revoked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local acquire = ARGV[1] == '1'
local max_rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local lease_ttl = tonumber(ARGV[5])
local member = ARGV[6]
local pause = tonumber(ARGV[7])
local decrease = tonumber(ARGV[8])
local recovery = tonumber(ARGV[9])
local min_rate = tonumber(ARGV[10])
local reset_hold = tonumber(ARGV[11])
local state_ttl = math.floor(tonumber(ARGV[12]) * 1000)
local sub_w = tonumber(ARGV[13])
local function f(x) return string.format('%.6f', x) end

local i = 14
-- Acquires given up by their holder (cancelled or timed out after sending the script): give
-- back what they may have been granted, and leave a tombstone so that one still queued in
-- Redis behind this call (another connection) is refused when it runs.
local n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', revoked, '-inf', f(now))
  for _ = 1, n do
    redis.call('ZREM', log, ARGV[i])
    redis.call('ZREM', leases, ARGV[i])
    redis.call('ZADD', revoked, f(now + lease_ttl), ARGV[i])
    i = i + 1
  end
  redis.call('PEXPIRE', revoked, math.ceil(lease_ttl * 1000) + 1000)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZREM', leases, ARGV[i]); i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZADD', leases, 'XX', f(now + lease_ttl), ARGV[i]); i = i + 1 end
-- The key outlives its longest lease (renewed ones included), never the other way round.
if n > 0 then redis.call('PEXPIRE', leases, math.ceil(lease_ttl * 1000) + 1000) end

local fresh = 0
local paused_until, rate_at_cut, cut_at
local dirty = false
local v = redis.call('HMGET', state, 'paused_until', 'rate_at_cut', 'cut_at')
if v[1] then
  paused_until, rate_at_cut, cut_at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
else
  -- No state: first use, or Redis lost its data. Starts made just before a loss are gone
  -- from the log, so nobody starts until they have aged out.
  fresh = 1
  paused_until, rate_at_cut, cut_at = now + reset_hold, max_rate, 0
  dirty = true
end

local function current_rate()
  if rate_at_cut >= max_rate then return max_rate end
  local r = rate_at_cut + recovery * math.max(0, now - cut_at)
  if r >= max_rate then return max_rate end
  return r
end

if pause >= 0 then
  if now + pause > paused_until then paused_until = now + pause end
  redis.call('HINCRBY', state, 'pauses', 1)
  if now - cut_at >= window then
    rate_at_cut = math.max(min_rate, current_rate() * decrease)
    cut_at = now + pause
    redis.call('HINCRBY', state, 'cuts', 1)
  end
  dirty = true
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local age = tonumber(ARGV[i + 1])
  if age < window then redis.call('ZADD', log, 'NX', f(now - age), ARGV[i]) end
  i = i + 2
end
if n > 0 then redis.call('PEXPIRE', log, math.ceil(window * 1000) + 1000) end

if dirty then
  redis.call('HSET', state, 'paused_until', f(paused_until), 'rate_at_cut', f(rate_at_cut),
             'cut_at', f(cut_at))
end
redis.call('PEXPIRE', state, state_ttl)

if not acquire then return {0, '0', 'flushed', fresh} end
if redis.call('ZSCORE', revoked, member) then return {0, '0', 'revoked', fresh} end
-- Granted already: this is the same acquire again (the client retried a call whose answer it
-- lost). Say yes again rather than count it twice or hold its lease against it.
if redis.call('ZSCORE', log, member) then return {1, '0', 'ok', fresh} end
if now < paused_until then return {0, f(paused_until - now), 'paused', fresh} end

if max_conc > 0 then
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', f(now))
  if redis.call('ZCARD', leases) >= max_conc then
    local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
    return {0, f(tonumber(first[2]) - now), 'concurrency', fresh}
  end
end

local edge = now - window
redis.call('ZREMRANGEBYSCORE', log, '-inf', f(edge))
local count = redis.call('ZCARD', log)
local limit = math.max(1, math.floor(current_rate()))
if count >= limit then
  -- The (count - limit)-th oldest start must leave the window before we may start.
  local e = redis.call('ZRANGE', log, count - limit, count - limit, 'WITHSCORES')
  return {0, f(tonumber(e[2]) - edge), 'rate', fresh}
end
if sub_w > 0 then
  -- Spread the starts: at most limit * sub_w / window of them in any sub_w seconds.
  local sub_limit = math.max(1, math.ceil(limit * sub_w / window))
  if redis.call('ZCOUNT', log, '(' .. f(now - sub_w), '+inf') >= sub_limit then
    local e = redis.call('ZRANGE', log, count - sub_limit, count - sub_limit, 'WITHSCORES')
    return {0, f(tonumber(e[2]) + sub_w - now), 'rate', fresh}
  end
end
redis.call('ZADD', log, f(now), member)
redis.call('PEXPIRE', log, math.ceil(window * 1000) + 1000)
if max_conc > 0 then
  redis.call('ZADD', leases, f(now + lease_ttl), member)
  redis.call('PEXPIRE', leases, math.ceil(lease_ttl * 1000) + 1000)
end
return {1, '0', 'ok', fresh}

-- RedisWatchList: one script, one operation per call (ARGV[1]); Redis runs it atomically.
--
-- KEYS (one hash tag, so one Redis Cluster slot):
--   1 tasks   hash  member -> "<added, Redis time>|<meta JSON>"   (tracked tasks)
--   2 due     zset  member -> when it is due (Redis time)           (tracked, not leased)
--   3 leases  zset  member -> when its lease expires (Redis time)   (tracked, being polled)
--   4 owners  hash  member -> the token of the worker holding the lease
--   5 polls   hash  member -> "<polls>:<errors in a row>"
--   6 events  stream of completion events (consumer groups read it)
--   7 counts  hash  added, completed
-- A member is "<kind>:<task_id>". A tracked task is in exactly one of due and leases.
-- Times are Redis's own clock (TIME), so hosts' clocks never matter.

local K_TASKS, K_DUE, K_LEASES, K_OWNERS, K_POLLS, K_EVENTS, K_COUNTS =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end

-- Leases whose holder went silent (killed, partitioned) past their expiry: due again now.
local function reclaim(limit)
    local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, limit)
    for _, m in ipairs(expired) do
        redis.call('ZREM', K_LEASES, m)
        redis.call('HDEL', K_OWNERS, m)
        if redis.call('HEXISTS', K_TASKS, m) == 1 then
            redis.call('ZADD', K_DUE, now, m)
        end
    end
    return #expired
end

if op == 'add' then
    -- ARGV: op, n, then n x (member, meta JSON, delay before the first poll)
    local n, i, added = tonumber(ARGV[2]), 3, 0
    for _ = 1, n do
        local m = ARGV[i]
        if redis.call('HSETNX', K_TASKS, m, fmt(now) .. '|' .. ARGV[i + 1]) == 1 then
            redis.call('ZADD', K_DUE, now + tonumber(ARGV[i + 2]), m)
            added = added + 1
        end
        i = i + 3
    end
    if added > 0 then redis.call('HINCRBY', K_COUNTS, 'added', added) end
    return added

elseif op == 'claim' then
    -- ARGV: op, token, max tasks, lease ttl
    -- Reply: {now, seconds until the next due task (-1: none), tracked, {member, added, polls}...}
    local token, max, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
    reclaim(1000)
    local out = {}
    if max > 0 then
        local due = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', now, 'LIMIT', 0, max)
        for _, m in ipairs(due) do
            redis.call('ZREM', K_DUE, m)
            redis.call('ZADD', K_LEASES, now + ttl, m)
            redis.call('HSET', K_OWNERS, m, token)
            local info = redis.call('HGET', K_TASKS, m) or '0|'
            local bar = string.find(info, '|', 1, true)
            out[#out + 1] = m
            out[#out + 1] = string.sub(info, 1, bar - 1)
            out[#out + 1] = redis.call('HGET', K_POLLS, m) or '0:0'
        end
    end
    local nxt = redis.call('ZRANGE', K_DUE, 0, 0, 'WITHSCORES')
    local wait = -1
    if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
    local soonest = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')
    if soonest[2] then
        local w = math.max(0, tonumber(soonest[2]) - now)
        if wait < 0 or w < wait then wait = w end
    end
    return {fmt(now), fmt(wait), redis.call('HLEN', K_TASKS), out}

elseif op == 'settle' then
    -- ARGV: op, token, max events (0: no trimming),
    --   n, then n x (member, delay, "polls:errors")          reschedule (only if still ours)
    --   n, then n x (member, kind, task_id, result JSON, error)  completed: event + forget
    -- Reply: {rescheduled, events added}
    local token, maxlen = ARGV[2], tonumber(ARGV[3])
    local i = 4
    local n = tonumber(ARGV[i]); i = i + 1
    local moved, events = 0, 0
    for _ = 1, n do
        local m = ARGV[i]
        if redis.call('HGET', K_OWNERS, m) == token then
            redis.call('ZREM', K_LEASES, m)
            redis.call('HDEL', K_OWNERS, m)
            redis.call('ZADD', K_DUE, now + tonumber(ARGV[i + 1]), m)
            redis.call('HSET', K_POLLS, m, ARGV[i + 2])
            moved = moved + 1
        end
        i = i + 3
    end
    n = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n do
        local m = ARGV[i]
        -- Whoever holds the lease now, a terminal status is the truth: record it once.
        -- A task no longer tracked was completed already (a retried call, a lease that
        -- expired while this worker was slow): no second event.
        local info = redis.call('HGET', K_TASKS, m)
        if info then
            local bar = string.find(info, '|', 1, true)
            local fields = {'kind', ARGV[i + 1], 'task_id', ARGV[i + 2], 'result', ARGV[i + 3],
                            'error', ARGV[i + 4], 'meta', string.sub(info, bar + 1),
                            'added', string.sub(info, 1, bar - 1), 'completed', fmt(now)}
            if maxlen > 0 then
                redis.call('XADD', K_EVENTS, 'MAXLEN', '~', maxlen, '*', unpack(fields))
            else
                redis.call('XADD', K_EVENTS, '*', unpack(fields))
            end
            redis.call('HDEL', K_TASKS, m)
            redis.call('HDEL', K_POLLS, m)
            redis.call('HDEL', K_OWNERS, m)
            redis.call('ZREM', K_DUE, m)
            redis.call('ZREM', K_LEASES, m)
            events = events + 1
        end
        i = i + 5
    end
    if events > 0 then redis.call('HINCRBY', K_COUNTS, 'completed', events) end
    return {moved, events}

elseif op == 'renew' then
    -- ARGV: op, token, ttl, members...  Reply: the members no longer ours (lost leases).
    local token, ttl, lost = ARGV[2], tonumber(ARGV[3]), {}
    for j = 4, #ARGV do
        local m = ARGV[j]
        if redis.call('HGET', K_OWNERS, m) == token then
            redis.call('ZADD', K_LEASES, 'XX', now + ttl, m)
        else
            lost[#lost + 1] = m
        end
    end
    return lost

elseif op == 'release' then
    -- ARGV: op, token, members...  Leases given back unpolled: due again at once.
    local token, back = ARGV[2], 0
    for j = 3, #ARGV do
        local m = ARGV[j]
        if redis.call('HGET', K_OWNERS, m) == token then
            redis.call('ZREM', K_LEASES, m)
            redis.call('HDEL', K_OWNERS, m)
            redis.call('ZADD', K_DUE, now, m)
            back = back + 1
        end
    end
    return back

elseif op == 'stats' then
    local due = redis.call('ZCOUNT', K_DUE, '-inf', now)
    local expired = redis.call('ZCOUNT', K_LEASES, '-inf', now)
    local oldest = 0
    local first = redis.call('ZRANGE', K_DUE, 0, 0, 'WITHSCORES')
    if first[2] and tonumber(first[2]) <= now then oldest = now - tonumber(first[2]) end
    local lease = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')
    if lease[2] and tonumber(lease[2]) <= now then
        oldest = math.max(oldest, now - tonumber(lease[2]))
    end
    return {redis.call('HLEN', K_TASKS), due + expired, redis.call('ZCARD', K_LEASES) - expired,
            tonumber(redis.call('HGET', K_COUNTS, 'completed') or '0'),
            tonumber(redis.call('HGET', K_COUNTS, 'added') or '0'),
            redis.call('XLEN', K_EVENTS), fmt(oldest)}

elseif op == 'read' then
    -- ARGV: op, group, consumer, count, from ('>' new, else an id in our own pending list),
    --   claim (1: XAUTOCLAIM others' entries idle >= min idle ms), min idle ms, claim cursor,
    --   acks...
    -- Reply: {entries, next claim cursor}
    local group, consumer, count, from = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
    redis.pcall('XGROUP', 'CREATE', K_EVENTS, group, '0', 'MKSTREAM')  -- exists: ignored
    if #ARGV >= 9 then
        redis.call('XACK', K_EVENTS, group, unpack(ARGV, 9, #ARGV))
    end
    local cursor = ARGV[8]
    if ARGV[6] == '1' then
        local claimed = redis.call('XAUTOCLAIM', K_EVENTS, group, consumer, ARGV[7], cursor,
                                   'COUNT', count)
        cursor = claimed[1]
        if #claimed[2] > 0 then return {claimed[2], cursor} end
    end
    local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                           'STREAMS', K_EVENTS, from)
    if got and got[1] then return {got[1][2], cursor} end
    return {{}, cursor}
end
return redis.error_reply('ERR unknown operation ' .. tostring(op))

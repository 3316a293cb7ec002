-- jq-common.lua - the part every job-queue script starts with (jobqueue.c sends each script as
-- this file followed by the script's own). It names the queue's keys, reads the clock and holds
-- the transitions that more than one script makes.
--
--   KEYS[1]  the queue's base name, "<prefix>{jq:<queue>}": every key below is this name plus a
--            suffix, so all of them share the hash tag and live in one cluster slot
--   ARGV[1]  retention of DONE jobs, ms          ARGV[2]  retention of CANCELLED jobs, ms
--   ARGV[3]  retention of DEAD jobs, ms          ARGV[4]  batch bound of the housekeeping
--   ARGV[5..] the script's own arguments
--
-- Replies are tables whose first element is 0 or one of the codes below (jobqueue.c maps them
-- to JQ_E* codes).
--
-- The clock is Redis TIME, in milliseconds: never a client's clock.

local base = KEYS[1]
local K_READY = base .. ':ready'         -- zset: id -> priority band * 2^42 + order
local K_SINCE = base .. ':since'         -- zset: id -> ms when the job last became READY
local K_DELAYED = base .. ':delayed'     -- zset: id -> ms when the job is due
local K_RESERVED = base .. ':reserved'   -- zset: id -> lease deadline, ms
local K_DEAD = base .. ':dead'           -- zset: id -> ms when its retention ends
local K_DONE = base .. ':done'           -- zset: id -> ms when its retention ends
local K_CANCELLED = base .. ':cancelled' -- zset: id -> ms when its retention ends
local K_SEQ = base .. ':seq'             -- string: counter for ids, tokens and FIFO order
local K_WAKE = base .. ':wake'           -- list: at most WAKE_MAX tokens for blocked reservers
-- and per job: ':job:<id>' (hash) and ':log:<id>' (list: its failures, newest first)

local DONE_TTL = tonumber(ARGV[1])
local CANCELLED_TTL = tonumber(ARGV[2])
local DEAD_TTL = tonumber(ARGV[3])
local BATCH = tonumber(ARGV[4])

local E_STALE, E_NOTFOUND, E_FULL, E_CANCELLED, E_STATE = -1, -2, -3, -4, -5
local WAKE_MAX = 16
local LOG_MAX = 20 -- failures kept per job
local BAND = 4398046511104 -- 2^42: orders within one priority; priorities are -1000..1000

local floor = math.floor
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)

local function jk(id)
    return base .. ':job:' .. id
end

local function fmt(n)
    return string.format('%d', n)
end

local function lk(id)
    return base .. ':log:' .. id
end

-- Records a failed attempt in the job's history ("<ms> <attempt> <error>", newest first, at
-- most LOG_MAX): failures are rare, so this costs nothing on the common path.
local function log_failure(id, attempt, err)
    redis.call('LPUSH', lk(id), fmt(now) .. ' ' .. attempt .. ' ' .. err)
    redis.call('LTRIM', lk(id), 0, LOG_MAX - 1)
end

-- Pushes up to n wake tokens (the list never holds more than WAKE_MAX): a reserver blocked on
-- the list (BLPOP) wakes and tries again.
local function wake(n)
    local room = WAKE_MAX - redis.call('LLEN', K_WAKE)
    if n > room then
        n = room
    end
    if n > 0 then
        local ones = {}
        for i = 1, n do
            ones[i] = '1'
        end
        redis.call('RPUSH', K_WAKE, unpack(ones))
    end
end

-- Sends cmd on key with the arguments in list, 2,000 at a time (unpack refuses a few thousand):
-- the hot scripts add and remove a whole batch's members in one command instead of one each.
local function bulk(cmd, key, list)
    for i = 1, #list, 2000 do
        local j = i + 1999
        if j > #list then
            j = #list
        end
        redis.call(cmd, key, unpack(list, i, j))
    end
end

-- -> READY. order: the job's place among its priority (a new one from the counter when nil:
-- the back of the line).
local function to_ready(id, prio, order)
    if not order then
        order = redis.call('INCR', K_SEQ)
    end
    redis.call('ZADD', K_READY, fmt((1000 - prio) * BAND + order), id)
    redis.call('ZADD', K_SINCE, fmt(now), id)
    redis.call('HSET', jk(id), 'state', 'ready', 'order', fmt(order), 'token', '', 'updated_at',
        fmt(now))
end

-- A terminal state: the hash expires after the state's retention, and the state's zset holds
-- the id scored by that moment, so counts (ZCOUNT from now) are exact and trims cheap.
local function to_final(id, state, zset, ttl)
    redis.call('HSET', jk(id), 'state', state, 'token', '', 'updated_at', fmt(now),
        'finished_at', fmt(now))
    redis.call('ZADD', zset, fmt(now + ttl), id)
    redis.call('PEXPIRE', jk(id), ttl)
    redis.call('PEXPIRE', lk(id), ttl) -- the history goes with its job (no-op when none)
end

local function to_dead(id, err)
    redis.call('HSET', jk(id), 'last_error', err, 'failed_at', fmt(now))
    to_final(id, 'dead', K_DEAD, DEAD_TTL)
end

local function to_cancelled(id)
    to_final(id, 'cancelled', K_CANCELLED, CANCELLED_TTL)
end

-- The fence: the job must be RESERVED under this token and its lease not past. f holds the job's
-- state, token and lease_until (HMGET, in that order). Returns 0 or an error code.
local function lease_code(f, token)
    if not f[1] then
        return E_NOTFOUND
    end
    if f[1] ~= 'reserved' or f[2] ~= token or now >= tonumber(f[3]) then
        return E_STALE
    end
    return 0
end

-- The fence for one job, read here. Changes nothing.
local function check_lease(id, token)
    return lease_code(redis.call('HMGET', jk(id), 'state', 'token', 'lease_until'), token)
end

-- Leaves RESERVED (the caller then sets the next state).
local function unlease(id)
    redis.call('ZREM', K_RESERVED, id)
end

-- Housekeeping, bounded by BATCH per kind so no call runs long whatever piled up: due DELAYED
-- jobs -> READY (ties in due time FIFO by id), expired leases -> READY, DEAD (delivery limit
-- reached) or CANCELLED (cancel requested), and terminal zset entries past retention dropped.
-- Returns promoted, reclaimed, buried.
local function housekeep()
    local promoted, reclaimed, buried = 0, 0, 0
    local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, BATCH)
    if #due > 0 then
        local list = {}
        for i = 1, #due, 2 do
            list[#list + 1] = {due[i], tonumber(due[i + 1])}
        end
        table.sort(list, function(a, b)
            if a[2] ~= b[2] then
                return a[2] < b[2]
            end
            return tonumber(a[1]) < tonumber(b[1])
        end)
        for _, e in ipairs(list) do
            redis.call('ZREM', K_DELAYED, e[1])
            to_ready(e[1], tonumber(redis.call('HGET', jk(e[1]), 'priority') or '0'), nil)
        end
        promoted = #list
    end
    local expired = redis.call('ZRANGEBYSCORE', K_RESERVED, '-inf', now, 'LIMIT', 0, BATCH)
    for _, id in ipairs(expired) do
        unlease(id)
        local f = redis.call('HMGET', jk(id), 'attempts', 'max_attempts', 'priority', 'cancel')
        if f[4] ~= '1' then
            log_failure(id, f[1], 'lease expired')
        end
        if f[4] == '1' then
            to_cancelled(id)
        elseif tonumber(f[1]) >= tonumber(f[2]) then
            to_dead(id, 'lease expired on delivery ' .. f[1] .. ' of ' .. f[2])
            buried = buried + 1
        else
            redis.call('HSET', jk(id), 'last_error', 'lease expired on delivery ' .. f[1])
            to_ready(id, tonumber(f[3]), nil)
            reclaimed = reclaimed + 1
        end
    end
    if promoted + reclaimed > 0 then
        wake(promoted + reclaimed)
    end
    for _, z in ipairs({K_DONE, K_CANCELLED, K_DEAD}) do
        local old = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, BATCH)
        if #old > 0 then
            redis.call('ZREM', z, unpack(old))
        end
    end
    return promoted, reclaimed, buried
end

-- Milliseconds until housekeeping next has something to do (a delayed job due or a lease
-- expiring), or -1 when nothing is scheduled.
local function next_event()
    local best = -1
    for _, z in ipairs({K_DELAYED, K_RESERVED}) do
        local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
        if first[2] then
            local d = tonumber(first[2]) - now
            if d < 0 then
                d = 0
            end
            if best < 0 or d < best then
                best = d
            end
        end
    end
    return best
end

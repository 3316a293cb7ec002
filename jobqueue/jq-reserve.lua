-- jq-reserve.lua - READY -> RESERVED for up to n jobs, highest priority first, FIFO within a
-- priority (jq_reserve). Housekeeps first (jq-common.lua), so due delayed jobs and expired
-- leases are served by this very call. Every delivery counts as an attempt here, before the
-- handler runs: a job whose worker crashes still uses up its attempts.
--
--   ARGV[5]  n    ARGV[6]  visibility timeout (lease), ms
--
-- Returns {0, next, count, then per job: id, token, attempts, max attempts, priority,
-- lease deadline, created at, payload}; next is the ms until housekeeping has work again when
-- no job was reserved (-1: nothing scheduled), else 0.

local n, vis = tonumber(ARGV[5]), tonumber(ARGV[6])
housekeep()
local popped = redis.call('ZPOPMIN', K_READY, n)
local out = {0, 0, 0}
local count = 0
for i = 1, #popped, 2 do
    local id = popped[i]
    redis.call('ZREM', K_SINCE, id)
    local job = jk(id)
    if redis.call('EXISTS', job) == 1 then
        local token = fmt(redis.call('INCR', K_SEQ))
        local attempts = redis.call('HINCRBY', job, 'attempts', 1)
        local lease = now + vis
        redis.call('HSET', job, 'state', 'reserved', 'token', token, 'lease_until', fmt(lease),
            'reserved_at', fmt(now), 'updated_at', fmt(now))
        redis.call('ZADD', K_RESERVED, fmt(lease), id)
        local f = redis.call('HMGET', job, 'max_attempts', 'priority', 'created_at', 'payload')
        count = count + 1
        local o = #out
        out[o + 1], out[o + 2], out[o + 3], out[o + 4] = id, token, attempts, tonumber(f[1])
        out[o + 5], out[o + 6], out[o + 7], out[o + 8] = tonumber(f[2]), lease, tonumber(f[3]), f[4]
    end
end
out[3] = count
if count == 0 then
    out[2] = next_event()
end
return out

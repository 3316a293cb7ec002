-- jq-dlq.lua - the dead letters, oldest first: list, redrive (DEAD -> READY, attempts from 0)
-- and purge (gone now, not at the end of retention) (jq_dlq_list, jq_dlq_redrive,
-- jq_dlq_purge). Redrive and purge work on at most ARGV[7] jobs per call; the client repeats
-- them for "all".
--
--   ARGV[5] 'list', 'redrive' or 'purge'   ARGV[6] offset (list)   ARGV[7] count
--
-- Returns {0, count, ids...} for redrive and purge, and for list {0, count, then per job: id,
-- attempts, max attempts, last error, failed at, created at, payload}.

local op, offset, count = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local ids = redis.call('ZRANGEBYSCORE', K_DEAD, now + 1, '+inf', 'LIMIT', offset, count)
local out = {0, #ids}
for _, id in ipairs(ids) do
    local job = jk(id)
    if op == 'list' then
        local f = redis.call('HMGET', job, 'attempts', 'max_attempts', 'last_error', 'failed_at',
            'created_at', 'payload')
        out[#out + 1] = id
        for k = 1, 6 do
            out[#out + 1] = f[k] or ''
        end
    else
        redis.call('ZREM', K_DEAD, id)
        if op == 'redrive' then
            redis.call('PERSIST', job)
            redis.call('PERSIST', lk(id))
            redis.call('HSET', job, 'attempts', '0')
            to_ready(id, tonumber(redis.call('HGET', job, 'priority') or '0'), nil)
        else
            redis.call('DEL', job, lk(id))
        end
        out[#out + 1] = id
    end
end
if op == 'redrive' then
    wake(#ids)
end
return out

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
if #ids == 0 then
    return out
end
local recs = load_many(ids)
if op == 'purge' then
    redis.call('ZREM', K_DEAD, unpack(ids))
    delete_jobs(ids, recs)
end
for _, id in ipairs(ids) do
    local j = recs[id]
    out[#out + 1] = id
    if op == 'list' then
        local f = redis.call('HMGET', jk(id), 'last_error', 'failed_at')
        out[#out + 1] = j and fmt(j.attempts) or ''
        out[#out + 1] = j and fmt(j.max) or ''
        out[#out + 1] = f[1] or ''
        out[#out + 1] = f[2] or ''
        out[#out + 1] = j and fmt(j.created) or ''
        out[#out + 1] = redis.call('HGET', K_DATA, id) or ''
    elseif op == 'redrive' then
        redis.call('ZREM', K_DEAD, id)
        if j then
            redis.call('PERSIST', jk(id))
            redis.call('PERSIST', lk(id))
            j.attempts = 0
            to_ready(id, j, false)
        end
    end
end
if op == 'redrive' then
    wake(#ids)
end
return out

-- jq-stats.lua - counts per state and the age of the oldest READY job (jq_stats). Reads only:
-- terminal states count the entries whose retention has not ended (ZCOUNT from now), so the
-- counts are exact even before housekeeping trims the rest.
--
-- The age is that of the job at the front of each priority's line (when it last became READY),
-- the largest of them: one look-up per priority in use. Within a line the front job is the
-- oldest, except for a released job, which goes back to its old place with a new time.
--
-- Returns {0, ready, delayed, reserved, dead, done, cancelled, oldest ready age ms (-1: none)}.

local age = -1
local from = '-inf'
while true do
    local head = redis.call('ZRANGEBYSCORE', K_READY, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if not head[1] then
        break
    end
    local j = load(head[1])
    if j then
        age = math.max(age, now - j.updated, 0)
    end
    -- The next priority's line starts at the next multiple of BAND (orders start at 1).
    from = fmt((floor(tonumber(head[2]) / BAND) + 1) * BAND)
end
return {0, redis.call('ZCARD', K_READY), redis.call('ZCARD', K_DELAYED),
    redis.call('ZCARD', K_RESERVED), redis.call('ZCOUNT', K_DEAD, now + 1, '+inf'),
    redis.call('ZCOUNT', K_DONE, now + 1, '+inf'), redis.call('ZCOUNT', K_CANCELLED, now + 1, '+inf'),
    age}

-- jq-stats.lua - counts per state and the age of the oldest READY job (jq_stats). Reads only:
-- terminal states count the entries whose retention has not ended (ZCOUNT from now), so the
-- counts are exact even before housekeeping trims the rest.
--
-- The age is that of the job at the front of each priority's line (when it became READY), the
-- largest of them: one look-up per priority in use. Within a line the front job is the oldest,
-- except for a released job, which goes back to the front with a new time.
--
-- RESERVED jobs are counted set by set: one SCARD per lease deadline in use.
--
-- Returns {0, ready, delayed, reserved, dead, done, cancelled, oldest ready age ms (-1: none)}.

local age, ready = -1, 0
for _, p in ipairs(redis.call('ZRANGE', K_LINES, 0, -1)) do
    ready = ready + redis.call('LLEN', line(p))
    local head = redis.call('LINDEX', line(p), 0)
    local j = head and load(head)
    if j then
        age = math.max(age, now - j.updated, 0)
    end
end
local reserved = 0
for _, d in ipairs(redis.call('ZRANGE', K_RESERVED, 0, -1)) do
    reserved = reserved + redis.call('SCARD', lease_key(d))
end
return {0, ready, redis.call('ZCARD', K_DELAYED), reserved,
    redis.call('ZCOUNT', K_DEAD, now + 1, '+inf'), redis.call('ZCOUNT', K_DONE, now + 1, '+inf'),
    redis.call('ZCOUNT', K_CANCELLED, now + 1, '+inf'), age}

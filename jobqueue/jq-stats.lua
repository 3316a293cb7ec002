-- jq-stats.lua - counts per state and the age of the oldest READY job (jq_stats). DEAD and
-- CANCELLED count the entries whose retention has not ended (ZCOUNT from now), exact even before
-- housekeeping trims the rest. DONE jobs are counted by :ndone, after this call trims a batch of
-- DONE jobs past retention (jq-common.lua, trim_done): exact unless more than housekeep_batch of
-- them passed their retention since housekeeping last ran (a queue no worker reserved from or
-- reaped meanwhile); each call trims another batch.
--
-- The age is that of the job at the front of each priority's line (when it became READY), the
-- largest of them: one look-up per priority in use. Within a line the front job is the oldest,
-- except for a released job, which goes back to the front with a new time.
--
-- RESERVED jobs are counted set by set: one SCARD per lease deadline in use.
--
-- Returns {0, ready, delayed, reserved, dead, done, cancelled, oldest ready age ms (-1: none)}.

trim_done(BATCH)
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
    redis.call('ZCOUNT', K_DEAD, now + 1, '+inf'), tonumber(redis.call('GET', K_NDONE) or '0'),
    redis.call('ZCOUNT', K_CANCELLED, now + 1, '+inf'), age}

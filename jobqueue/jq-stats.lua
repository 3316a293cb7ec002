-- jq-stats.lua - counts per state and the age of the oldest READY job (jq_stats). Reads only:
-- terminal states count the entries whose retention has not ended (ZCOUNT from now), so the
-- counts are exact even before housekeeping trims the rest.
--
-- Returns {0, ready, delayed, reserved, dead, done, cancelled, oldest ready age ms (-1: none)}.

local oldest = redis.call('ZRANGE', K_SINCE, 0, 0, 'WITHSCORES')
local age = -1
if oldest[2] then
    age = now - tonumber(oldest[2])
    if age < 0 then
        age = 0
    end
end
return {0, redis.call('ZCARD', K_READY), redis.call('ZCARD', K_DELAYED),
    redis.call('ZCARD', K_RESERVED), redis.call('ZCOUNT', K_DEAD, now + 1, '+inf'),
    redis.call('ZCOUNT', K_DONE, now + 1, '+inf'), redis.call('ZCOUNT', K_CANCELLED, now + 1, '+inf'),
    age}

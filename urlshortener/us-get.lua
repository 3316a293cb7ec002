-- us-get.lua: reads one link with Redis's clock, so expiry is judged by the one shared clock.
-- KEYS[1]  the link key
-- Returns {value or false, now_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('GET', KEYS[1]), now}

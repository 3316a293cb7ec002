-- us-create.lua: writes one link if its key is free (SET NX), with its times from Redis's clock.
-- KEYS[1]  the link key (<prefix>l:{<code>})
-- ARGV[1]  the target URL (checked by the caller: no spaces)
-- ARGV[2]  expires_in in ms, 0 for never
-- ARGV[3]  max_clicks, 0 for no limit
-- ARGV[4]  retention in ms: how long an expired link is kept (and answered 410) before its key goes
-- Returns {written (1 or 0), created_ms, expires_at_ms (0: never)}. A key that exists is never
-- changed: the caller skips the id (generated code) or answers "taken" (alias).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires_in = tonumber(ARGV[2])
local expires_at = 0
if expires_in > 0 then
    expires_at = now + expires_in
end
local value = string.format('1 %d %d %s %s', now, expires_at, ARGV[3], ARGV[1])
local ok
if expires_at > 0 then
    ok = redis.call('SET', KEYS[1], value, 'NX', 'PXAT', expires_at + tonumber(ARGV[4]))
else
    ok = redis.call('SET', KEYS[1], value, 'NX')
end
if not ok then
    return {0, now, expires_at}
end
return {1, now, expires_at}

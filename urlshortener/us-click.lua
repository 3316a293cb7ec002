-- us-click.lua: counts one click of a link with a click budget, exactly, across every instance.
-- KEYS[1]  the link's click counter (<prefix>c:{<code>}: the link key's hash tag)
-- KEYS[2]  the link key (<prefix>l:{<code>})
-- ARGV[1]  max_clicks (> 0)
-- Returns the click's number (1 ... max_clicks), 0 when the budget is spent, -1 when the link is
-- gone (nothing counted either way). The counter expires with the link.
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then
    return -1
end
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
    return 0
end
n = redis.call('INCR', KEYS[1])
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return n

-- us-click.lua: counts one click of a link with a click budget, exactly, across every instance.
-- KEYS[1]  the link's click counter (<prefix>c:{<code>}: the link key's hash tag)
-- ARGV[1]  max_clicks (> 0)
-- Returns the click's number (1 ... max_clicks), or 0 when the budget is spent (nothing counted).
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
    return 0
end
return redis.call('INCR', KEYS[1])

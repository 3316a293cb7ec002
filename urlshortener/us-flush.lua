-- us-flush.lua: adds one instance's batch of clicks to a link's counter, only while the link
-- exists, and lets the counter expire with the link.
-- KEYS[1]  the click counter (<prefix>c:{<code>})
-- KEYS[2]  the link key (<prefix>l:{<code>}: the same hash tag)
-- ARGV[1]  the clicks to add (> 0)
-- Returns the new count, or -1 when the link is gone (deleted, or past its retention): the
-- clicks are dropped rather than recreate a counter nobody will read or delete.
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then
    return -1
end
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return n

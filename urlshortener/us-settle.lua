-- us-settle.lua: one instance's report on a leased click budget: the clicks it spent since its
-- last report, and the unspent rest of its lease it gives back (0 while it keeps the lease).
-- KEYS[1]  the lease record (<prefix>b:{<code>}, a hash: us-lease.lua)
-- KEYS[2]  the click counter (<prefix>c:{<code>})
-- KEYS[3]  the link key (<prefix>l:{<code>}); the same hash tag
-- ARGV[1]  clicks spent (>= 0)
-- ARGV[2]  clicks returned (>= 0)
-- ARGV[3]  the link's created_ms (us-lease.lua): a report on a link since deleted and claimed
--          again is refused as for a link that is gone
-- Returns {the link's click count, want}: want is 1 when another instance waits for budget that
-- holders keep (the caller then gives its unspent rest back at its next report); or -1 when the
-- link is gone or is another link (nothing recorded: the counters went with it).
local link = redis.call('GET', KEYS[3])
if not link or string.match(link, '^%d+ (%d+) ') ~= ARGV[3] then
    return -1
end
local ttl = redis.call('PTTL', KEYS[3])
local spent = tonumber(ARGV[1])
local back = tonumber(ARGV[2])
if back > 0 then
    redis.call('HINCRBY', KEYS[1], 'leased', -back)
end
local n = redis.call('INCRBY', KEYS[2], spent)
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
end
local want = redis.call('HGET', KEYS[1], 'want') and 1 or 0
return {n, want}

-- us-lease.lua: leases a block of a link's click budget to one instance, which then spends it
-- without asking Redis again. The sum of every lease never passes max_clicks.
-- KEYS[1]  the lease record (<prefix>b:{<code>}), a hash: "leased" (clicks leased out so far, net
--          of returns) and "want" (set when an instance found nothing left to lease while others
--          held some: us-settle.lua then asks the holders to give their unspent rest back)
-- KEYS[2]  the clicks reported spent (<prefix>c:{<code>}, the link's click counter)
-- KEYS[3]  the link key (<prefix>l:{<code>}); the three share the code's hash tag
-- ARGV[1]  max_clicks (> 0)
-- ARGV[2]  the largest block to lease (> 0)
-- ARGV[3]  the link's created_ms: a code deleted and claimed again names another link, and a
--          lease asked for the old one is refused as for a link that is gone
-- Returns the clicks leased (> 0); 0 when the budget is spent (everything leased has been
-- reported spent); -1 when the link is gone; -2 when nothing is left to lease but some of it is
-- still held by instances (spent and not yet reported, or unspent and not yet returned).
-- A block is an eighth of what is left (at least 1, at most ARGV[2]), so near the end of a budget
-- no instance holds much of it. The lease counter expires with the link.
local link = redis.call('GET', KEYS[3])
if not link or string.match(link, '^%d+ (%d+) ') ~= ARGV[3] then
    return -1
end
local ttl = redis.call('PTTL', KEYS[3])
local leased = redis.call('HGET', KEYS[1], 'leased')
if leased then
    leased = tonumber(leased)
else
    -- No lease record yet: clicks already counted (by a build before leases, which counted
    -- budgeted clicks straight into KEYS[2]) are budget spent, not budget to lease again.
    leased = tonumber(redis.call('GET', KEYS[2]) or '0')
    redis.call('HSET', KEYS[1], 'leased', leased)
    if ttl > 0 then
        redis.call('PEXPIRE', KEYS[1], ttl)
    end
end
local left = tonumber(ARGV[1]) - leased
if left <= 0 then
    local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
    if spent >= leased then
        return 0
    end
    redis.call('HSET', KEYS[1], 'want', 1)
    if ttl > 0 then
        redis.call('PEXPIRE', KEYS[1], ttl)
    end
    return -2
end
local n = math.floor(left / 8)
if n < 1 then
    n = 1
end
if n > tonumber(ARGV[2]) then
    n = tonumber(ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'leased', n)
redis.call('HDEL', KEYS[1], 'want')
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return n

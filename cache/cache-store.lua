-- cache-store.lua: the leader stores what it loaded, only while it still holds the lease
-- (fencing: a leader that overran its lease, or whose lease an invalidation deleted, is
-- refused), then tells every instance.
-- KEYS[1] the value hash, KEYS[2] the lease
-- ARGV[1] token, ARGV[2] kind ("ok", "notfound", "err" or "none"), ARGV[3] value,
-- ARGV[4] fresh ms (jittered; for "err" the negative TTL), ARGV[5] stale-while-revalidate ms,
-- ARGV[6] stale-if-error ms, ARGV[7] measured load ms, ARGV[8] channel, ARGV[9] message,
-- ARGV[10] "1": the message carries the value (appended here, so it is sent to Redis once)
-- Returns 1 stored, 0 refused (the lease is not this token's).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
if ARGV[2] == 'none' then
    -- Not to be stored (the origin said no-store): the lease goes, the waiters look again.
    redis.call('DEL', KEYS[2])
    redis.call('PUBLISH', ARGV[8], ARGV[9])
    return 1
end
if ARGV[2] == 'err' then
    -- Negative caching of a failure: no load for ttl ms; an older value stays for
    -- stale-if-error.
    redis.call('HSET', KEYS[1], 'ne', now + ttl)
    local left = redis.call('PTTL', KEYS[1])
    if left < ttl then
        redis.call('PEXPIRE', KEYS[1], ttl)
    end
else
    local swr, sie = tonumber(ARGV[5]), tonumber(ARGV[6])
    local st = 0
    if ARGV[2] == 'notfound' then
        st = 1
    end
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'v', ARGV[3], 'st', st, 't', now, 'fu', now + ttl,
        'su', now + ttl + swr, 'eu', now + ttl + sie, 'd', ARGV[7])
    -- From the same clock reading as the fields, so the key lives exactly as they say.
    redis.call('PEXPIREAT', KEYS[1], now + ttl + math.max(swr, sie))
end
redis.call('DEL', KEYS[2])
if ARGV[10] == '1' then
    redis.call('PUBLISH', ARGV[8], ARGV[9] .. ARGV[3])
else
    redis.call('PUBLISH', ARGV[8], ARGV[9])
end
return 1

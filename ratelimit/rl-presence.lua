-- rl-presence.lua - one gateway says it is alive and learns how many are: N for the local
-- fallback's share (guard.c). Each gateway runs it about once a second.
--
--   KEYS[1]  the sorted set of live gateways, "<prefix>gateways": member = a gateway's id,
--            score = Redis time (ms) of its last call
--   ARGV     the gateway's id, then the time (ms) after which a silent gateway is gone
--
-- Returns the number of gateways heard from within that time, this one included.

local key, id, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', key, now, id)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
redis.call('PEXPIRE', key, 2 * ttl)
return redis.call('ZCARD', key)

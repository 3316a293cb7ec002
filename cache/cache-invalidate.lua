-- cache-invalidate.lua: drops a key from the Redis tier and tells every instance to drop it
-- from its local tier. Deleting the lease too fences the load in progress, if any: it started
-- before this invalidation, so its store (cache-store.lua) is refused.
-- KEYS[1] the value hash, KEYS[2] the lease; ARGV[1] channel, ARGV[2] message
-- Returns the number of keys deleted.
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n

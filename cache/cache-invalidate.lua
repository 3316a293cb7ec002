-- cache-invalidate.lua: drops a key from the Redis tier and tells every instance to drop it
-- from its local tier. Deleting the lease too fences the load in progress, if any: it started
-- before this invalidation, so its store (cache-store.lua) is refused. The key's invalidation
-- count goes up: a value fetched outside any lease (cache_gen_get) is offered to the cache
-- only if the count did not move while it was fetched, whether or not this message has arrived.
-- KEYS[1] the value hash, KEYS[2] the lease, KEYS[3] the count;
-- ARGV[1] channel, ARGV[2] message, ARGV[3] how long the count is kept, ms
-- Returns the number of keys deleted.
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n

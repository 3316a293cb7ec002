-- wh-endpoint-delete.lua: DELETE /v1/endpoints/{id} (sender.c, "Deleting an endpoint"), in one
-- step: the endpoint leaves the set that the fan-out and the workers read, its hash says
-- "deleted" and expires in a day, its parked messages go, and its id joins the hash of deleted
-- endpoints whose delivery queues are still to be dropped (id -> ms of the deletion).
-- The hash is kept a day rather than deleted: an attempt in flight at the deletion still
-- updates its counters when it ends (HINCRBY), which on a deleted key would make a new hash
-- without a TTL; on this one it only adds to what expires.
-- KEYS[1]: the sender's key prefix, "wh1:{wh1}:". ARGV[1]: the endpoint id.
-- Returns 1, or 0 when there is no such endpoint (or it was deleted already).
local p, id = KEYS[1], ARGV[1]
if redis.call('SREM', p .. 'eps', id) == 0 then
    return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ep = p .. 'ep:' .. id
redis.call('HSET', ep, 'state', 'deleted')
redis.call('HDEL', ep, 'secret', 'old_secret') -- a deleted endpoint's secrets sign nothing more
redis.call('PEXPIRE', ep, 86400000)
redis.call('HSET', p .. 'eps_deleted', id, string.format('%d', now))
redis.call('DEL', ep .. ':parked') -- messages parked for it (sender.c, "Parking")
return 1

-- jq-extend.lua - RESERVED -> RESERVED with a new lease deadline, ms counted from now
-- (jq_extend; the worker's heartbeat). Fenced: a lease already past cannot be revived. When a
-- cancel was requested the lease is left as it is and the reply says so: that is how the
-- worker learns of it.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] ms
--
-- Returns {code, lease deadline}.

local id, token, ms = ARGV[5], ARGV[6], tonumber(ARGV[7])
local code = check_lease(id, token)
if code ~= 0 then
    return {code, 0}
end
local job = jk(id)
if redis.call('HGET', job, 'cancel') == '1' then
    return {E_CANCELLED, tonumber(redis.call('HGET', job, 'lease_until'))}
end
redis.call('HSET', job, 'lease_until', fmt(now + ms), 'updated_at', fmt(now))
redis.call('ZADD', K_RESERVED, 'XX', fmt(now + ms), id)
return {0, now + ms}

-- jq-release.lua - RESERVED -> READY, back in its old place, without counting the delivery
-- (jq_release: a graceful stop hands back what it did not start or finish). Fenced. A job
-- whose cancel was requested ends CANCELLED.
--
--   ARGV[5] id  ARGV[6] token
--
-- Returns {code}.

local id, token = ARGV[5], ARGV[6]
local code = check_lease(id, token)
if code ~= 0 then
    return {code}
end
unlease(id)
local job = jk(id)
redis.call('HINCRBY', job, 'attempts', -1)
local f = redis.call('HMGET', job, 'priority', 'order', 'cancel')
if f[3] == '1' then
    to_cancelled(id)
    return {E_CANCELLED}
end
to_ready(id, tonumber(f[1]), tonumber(f[2]))
wake(1)
return {0}

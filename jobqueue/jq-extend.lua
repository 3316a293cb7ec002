-- jq-extend.lua - RESERVED -> RESERVED with a new lease deadline, ms counted from now
-- (jq_extend; the worker's heartbeat). Fenced: a lease already past cannot be revived. When a
-- cancel was requested the lease is left as it is and the reply says so: that is how the
-- worker learns of it.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] ms
--
-- Returns {code, lease deadline}.

local id, token, ms = ARGV[5], ARGV[6], tonumber(ARGV[7])
local j = load(id)
local code = lease_code(j, token)
if code ~= 0 then
    return {code, 0}
end
if j.cancel then
    return {E_CANCELLED, j.lease}
end
unlease(id, j) -- from the set of its old deadline to that of the new one
j.lease, j.updated = now + ms, now
save(id, j)
lease({id}, j.lease)
return {0, now + ms}

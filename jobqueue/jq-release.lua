-- jq-release.lua - RESERVED -> READY, at the front of its line, without counting the delivery
-- (jq_release: a graceful stop hands back what it did not start or finish). Fenced. A job
-- whose cancel was requested ends CANCELLED.
--
--   ARGV[5] id  ARGV[6] token
--
-- Returns {code}.

local id, token = ARGV[5], ARGV[6]
local j = load(id)
local code = lease_code(j, token)
if code ~= 0 then
    return {code}
end
unlease(id, j)
j.attempts = j.attempts - 1
if j.cancel then
    to_cancelled(id, j)
    return {E_CANCELLED}
end
to_ready(id, j, true)
wake(1)
return {0}

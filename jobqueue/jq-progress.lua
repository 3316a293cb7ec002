-- jq-progress.lua - records a RESERVED job's progress (jq_progress). Fenced. The reply says
-- whether a cancel was requested, as extend's does.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] progress
--
-- Returns {code}.

local id, token = ARGV[5], ARGV[6]
local j = load(id)
local code = lease_code(j, token)
if code ~= 0 then
    return {code}
end
set_cold(id, j, 'progress', ARGV[7])
j.updated = now
save(id, j)
if j.cancel then
    return {E_CANCELLED}
end
return {0}

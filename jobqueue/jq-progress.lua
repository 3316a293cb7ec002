-- jq-progress.lua - records a RESERVED job's progress (jq_progress). Fenced. The reply says
-- whether a cancel was requested, as extend's does.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] progress
--
-- Returns {code}.

local id, token = ARGV[5], ARGV[6]
local code = check_lease(id, token)
if code ~= 0 then
    return {code}
end
redis.call('HSET', jk(id), 'progress', ARGV[7], 'updated_at', fmt(now))
if redis.call('HGET', jk(id), 'cancel') == '1' then
    return {E_CANCELLED}
end
return {0}

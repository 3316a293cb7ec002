-- jq-cancel.lua - READY or DELAYED -> CANCELLED at once; RESERVED: flagged, and the job ends
-- CANCELLED when its worker next reports (extend, progress, ack, fail, release) or its lease
-- expires (jq_cancel). DONE, DEAD and CANCELLED jobs are left alone.
--
--   ARGV[5] id
--
-- Returns {code, the state the job was in}.

local id = ARGV[5]
local st = redis.call('HGET', jk(id), 'state')
if not st then
    return {E_NOTFOUND, ''}
end
if st == 'ready' then
    redis.call('ZREM', K_READY, id)
    redis.call('ZREM', K_SINCE, id)
    to_cancelled(id)
elseif st == 'delayed' then
    redis.call('ZREM', K_DELAYED, id)
    to_cancelled(id)
elseif st == 'reserved' then
    redis.call('HSET', jk(id), 'cancel', '1', 'updated_at', fmt(now))
else
    return {E_STATE, st}
end
return {0, st}

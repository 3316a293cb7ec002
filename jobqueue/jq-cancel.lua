-- jq-cancel.lua - READY or DELAYED -> CANCELLED at once; RESERVED: flagged, and the job ends
-- CANCELLED when its worker next reports (extend, progress, ack, fail, release) or its lease
-- expires (jq_cancel). DONE, DEAD and CANCELLED jobs are left alone.
--
--   ARGV[5] id
--
-- Returns {code, the state the job was in}.

local id = ARGV[5]
local j = load(id)
if not j then
    return {E_NOTFOUND, ''}
end
local st = j.state
if st == 'ready' then
    -- LREM reads the line up to the job: O(its place in line), the one transition that is not
    -- O(1) per job; a cancel is rare.
    redis.call('LREM', line(j.prio), 1, id)
    to_cancelled(id, j)
elseif st == 'delayed' then
    redis.call('ZREM', K_DELAYED, id)
    to_cancelled(id, j)
elseif st == 'reserved' then
    j.cancel, j.updated = true, now
    save(id, j)
else
    return {E_STATE, st}
end
return {0, st}

-- jq-get.lua - one job as field-value pairs, the way HGETALL would give a hash of them
-- (jq_job_get): its record, payload and cold fields together. Reads only.
--
--   ARGV[5] id
--
-- Returns {field, value, ...}, empty when the job is gone: state, attempts, max_attempts,
-- priority, created_at, updated_at, payload, lease_until (once reserved), cancel (when
-- requested), finished_at (in a terminal state), then the cold fields that were set: ikey,
-- run_at, result, progress, last_error, failed_at.

local id = ARGV[5]
local j = load(id)
if not j then
    return {}
end
local out = {'state', j.state, 'attempts', fmt(j.attempts), 'max_attempts', fmt(j.max),
    'priority', fmt(j.prio), 'created_at', fmt(j.created), 'updated_at', fmt(j.updated),
    'payload', redis.call('HGET', K_DATA, id) or ''}
if j.lease > 0 then
    out[#out + 1], out[#out + 2] = 'lease_until', fmt(j.lease)
end
if j.cancel then
    out[#out + 1], out[#out + 2] = 'cancel', '1'
end
if j.ends > 0 then
    out[#out + 1], out[#out + 2] = 'finished_at', fmt(j.updated)
end
if j.cold then
    for _, v in ipairs(redis.call('HGETALL', jk(id))) do
        out[#out + 1] = v
    end
end
return out

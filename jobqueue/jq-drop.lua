-- jq-drop.lua - deletes a queue's jobs, in every state, and once none is left the queue's
-- indexes (jq_queue_drop). One call deletes at most ARGV[5] jobs (1 to 1000): the client
-- repeats it, so no call runs long however big the queue is. Jobs go in the order ready,
-- delayed, reserved, done, cancelled, dead (the ones that would run next first), each with its
-- record, payload and cold keys. :seq stays: the ids and lease tokens of a queue made again
-- under the same name go on from it, so none is ever reused (jobqueue.c, invariant 2).
-- :idem:<key> records stay until their window ends; :fx:<name> keys are the caller's.
--
--   ARGV[5] count
--
-- Returns {0, jobs deleted, index entries taken, 1 while some index still holds an entry else 0}.
-- An entry past its retention (housekeeping not yet trimmed it) is taken, not counted as a job.

local count = tonumber(ARGV[5])
local taken, removed = 0, 0

local function forget(ids)
    local recs = load_many(ids)
    for _, id in ipairs(ids) do
        if recs[id] then
            removed = removed + 1
        end
    end
    delete_jobs(ids, recs)
    taken = taken + #ids
end

for _, p in ipairs(redis.call('ZRANGE', K_LINES, 0, -1)) do
    if taken >= count then
        break
    end
    local ids = redis.call('LPOP', line(p), count - taken) or {}
    if redis.call('EXISTS', line(p)) == 0 then
        redis.call('ZREM', K_LINES, p) -- the line is empty
    end
    if #ids > 0 then
        forget(ids)
    end
end
local zsets = {K_DELAYED, K_RESERVED, K_DONE, K_CANCELLED, K_DEAD}
for _, z in ipairs(zsets) do
    if taken >= count then
        break
    end
    if z == K_RESERVED or z == K_DONE then
        -- Their entries are lease deadlines or ends of retention, each naming a set or a list of
        -- at least one id.
        for _, e in ipairs(redis.call('ZRANGE', z, 0, count - taken - 1)) do
            if taken >= count then
                break
            end
            local group = z == K_RESERVED and lease_key(e) or done_key(e)
            local ids = redis.call(z == K_RESERVED and 'SPOP' or 'LPOP', group, count - taken) or {}
            if redis.call('EXISTS', group) == 0 then
                redis.call('ZREM', z, e)
            end
            if z == K_DONE then
                count_off_done(#ids)
            end
            forget(ids)
        end
    else
        local ids = redis.call('ZRANGE', z, 0, count - taken - 1)
        if #ids > 0 then
            bulk('ZREM', z, ids)
            forget(ids)
        end
    end
end
-- The indexes are empty: the queue's structure goes too (an empty list, zset or hash is no key
-- already; this also drops :wake and any record no index held).
local left = redis.call('EXISTS', K_LINES)
for _, z in ipairs(zsets) do
    if left == 0 and redis.call('EXISTS', z) == 1 then
        left = 1
    end
end
if left == 0 then
    redis.call('DEL', K_META, K_DATA, K_DELAYED, K_RESERVED, K_DONE, K_NDONE, K_CANCELLED, K_DEAD,
        K_WAKE)
end
return {0, removed, taken, left}

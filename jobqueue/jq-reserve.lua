-- jq-reserve.lua - READY -> RESERVED for up to n jobs, highest priority first, FIFO within a
-- priority (jq_reserve). Housekeeps first (jq-common.lua), so due delayed jobs and expired
-- leases are served by this very call. Every delivery counts as an attempt here, before the
-- handler runs: a job whose worker crashes still uses up its attempts.
--
--   ARGV[5]  n    ARGV[6]  visibility timeout (lease), ms
--
-- Returns {0, next, count, then per job: id, record, payload}: the record as saved (RECORD in
-- jq-common.lua; jobqueue.c reads the token, attempts, max attempts, priority, lease deadline
-- and created time from it), three values a job instead of eight fields, each of which would
-- cost Redis a conversion. next is the ms until housekeeping has work again when no job was
-- reserved (-1: nothing scheduled), else 0.

local n, vis = tonumber(ARGV[5]), tonumber(ARGV[6])
housekeep(math.max(BATCH, n))
-- Take from the front of the highest priority's line, then the next line's, until n.
local ids = {}
while #ids < n do
    local top = redis.call('ZRANGE', K_LINES, 0, 0)[1]
    if not top then
        break
    end
    local got = redis.call('LPOP', line(top), n - #ids) or {}
    for _, id in ipairs(got) do
        ids[#ids + 1] = id
    end
    if redis.call('EXISTS', line(top)) == 0 then
        redis.call('ZREM', K_LINES, top) -- the line is empty
    end
end
if #ids < n then
    -- No job is READY now, so every wake token left is stale: a wait that took one would only
    -- run a reserve that finds nothing. The next enqueue pushes a fresh one.
    redis.call('DEL', K_WAKE)
end
local out = {0, 0, 0}
local count = 0
if #ids > 0 then
    -- The batch is read with one HMGET of records and one of payloads, and written with one
    -- HSET; its leases end together, so it joins one lease set; the tokens come from one INCRBY.
    -- Each record is unpacked and packed again in place, without decode's table: this loop is
    -- the hottest in the queue (the fields are RECORD's, in order; jq-common.lua).
    local recs = redis.call('HMGET', K_META, unpack(ids))
    local payloads = redis.call('HMGET', K_DATA, unpack(ids))
    local token = redis.call('INCRBY', K_SEQ, #ids) - #ids
    local until_ms = now + vis
    local leased, saved = {}, {}
    for i, id in ipairs(ids) do
        token = token + 1
        if recs[i] then -- none: the job is gone
            local _, at, mx, pr, _, _, cr, _, en, cn, cd = struct.unpack(RECORD, recs[i])
            if en == 0 or en > now then -- the record is not past retention (load's check)
                local rec = struct.pack(RECORD, CODE.reserved, at + 1, mx, pr, fmt(token),
                    until_ms, cr, now, en, cn, cd)
                local s = #saved
                leased[#leased + 1] = id
                saved[s + 1], saved[s + 2] = id, rec
                count = count + 1
                local o = #out
                out[o + 1], out[o + 2], out[o + 3] = id, rec, payloads[i] or ''
            end
        end
    end
    if count > 0 then
        bulk('HSET', K_META, saved)
        lease(leased, until_ms)
    end
end
out[3] = count
if count == 0 then
    out[2] = next_event()
end
return out

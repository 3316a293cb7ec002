-- jq-ack.lua - RESERVED -> DONE for a batch of jobs (jq_ack, jq_ack_many). Fenced per job: a
-- stale token is refused and that job is left as it is. A job whose cancel was requested ends
-- CANCELLED, never DONE.
--
--   ARGV[5]  n    ARGV[6]  m, the jobs with a result
--   then per job: id, token; then per job with a result: its place in the call (from 1), result
--
-- Returns {i, code, i, code, ...} for the jobs refused (i: the job's place in the call); every
-- job not named was acked. A no-op job costs two arguments and no reply value.

local n, m = tonumber(ARGV[5]), tonumber(ARGV[6])
local ids, results = {}, {}
for i = 1, n do
    ids[i] = ARGV[6 + (i - 1) * 2 + 1]
end
for k = 1, m do
    local a = 6 + 2 * n + (k - 1) * 2
    results[tonumber(ARGV[a + 1])] = ARGV[a + 2]
end
-- The batch's records are read with one HMGET (the fence and the cancel flag together) and
-- written with one HSET; it leaves its lease set and joins a DONE list in one command each. The
-- common job (no cancel request, no result, no cold keys) is read and packed in place, as in
-- jq-reserve.lua; the others go through decode's table: a cancel requested ends the job
-- CANCELLED, and a result or an earlier failure makes the job's cold keys, which then get its
-- retention as their TTL.
local raw = redis.call('HMGET', K_META, unpack(ids))
local out, acked, saved, lease_of, seen = {}, {}, {}, {}, {}
local ends = now + DONE_TTL
for i, id in ipairs(ids) do
    local code = E_NOTFOUND
    if seen[id] then
        code = E_STALE
    elseif raw[i] then
        local st, at, mx, pr, tk, ls, cr, _, en, cn, cd = struct.unpack(RECORD, raw[i])
        if en == 0 or en > now then -- (else past retention: gone)
            code = fence(st, tk, ls, ARGV[6 + (i - 1) * 2 + 2]) -- a refused job is left as it is
        end
        if code == 0 then
            seen[id] = true -- its record changes: a second copy of it in the call is stale
        end
        if code == 0 and cn == 0 and cd == 0 and not results[i] then
            lease_of[id] = ls
            acked[#acked + 1] = id
            local s = #saved
            saved[s + 1], saved[s + 2] = id, struct.pack(RECORD, CODE.done, at, mx, pr, '0', ls,
                cr, now, ends, 0, 0)
        elseif code == 0 then
            local j = decode(raw[i])
            if j.cancel then
                unlease(id, j)
                to_cancelled(id, j)
                code = E_CANCELLED
            else
                if results[i] then
                    set_cold(id, j, 'result', results[i])
                end
                lease_of[id] = j.lease
                end_state(id, j, 'done', DONE_TTL)
                acked[#acked + 1] = id
                local s = #saved
                saved[s + 1], saved[s + 2] = id, encode(j)
            end
        end
    end
    if code ~= 0 then
        out[#out + 1], out[#out + 2] = i, code
    end
end
bulk('HSET', K_META, saved)
-- The acked jobs leave their lease sets: one call per deadline (a batch reserved together is
-- usually acked together, and its set is deleted whole).
local by_lease, deadlines = {}, {}
for _, id in ipairs(acked) do
    local ms = lease_of[id]
    if not by_lease[ms] then
        by_lease[ms] = {}
        deadlines[#deadlines + 1] = ms
    end
    local g = by_lease[ms]
    g[#g + 1] = id
end
for _, ms in ipairs(deadlines) do
    unlease_many(by_lease[ms], ms)
end
add_done(acked, ends)
return out

-- jq-ack.lua - RESERVED -> DONE for a batch of jobs (jq_ack, jq_ack_many). Fenced per job: a
-- stale token is refused and that job is left as it is. A job whose cancel was requested ends
-- CANCELLED, never DONE.
--
--   ARGV[5]  n, then per job: id, token, result
--
-- Returns {code per job}.

local n = tonumber(ARGV[5])
local ids = {}
for i = 1, n do
    ids[i] = ARGV[5 + (i - 1) * 3 + 1]
end
-- The batch's records are read with one HMGET (the fence and the cancel flag together) and
-- written with one HSET; it leaves :reserved and joins :done in one command each. A result or
-- an earlier failure makes the job's cold keys, which then get its retention as their TTL.
local recs = load_many(ids)
local out, acked, done = {}, {}, {}
local sends = fmt(now + DONE_TTL) -- the end of retention of every job acked here
for i, id in ipairs(ids) do
    local a = 5 + (i - 1) * 3
    local j = recs[id]
    local code = lease_code(j, ARGV[a + 2]) -- fenced: a refused job is left as it is
    if code == 0 and j.cancel then
        unlease(id)
        to_cancelled(id, j)
        code = E_CANCELLED
    elseif code == 0 then
        if ARGV[a + 3] ~= '' then
            set_cold(id, j, 'result', ARGV[a + 3])
        end
        end_state(id, j, 'done', DONE_TTL)
        acked[#acked + 1] = id
        done[#done + 1], done[#done + 2] = sends, id
    end
    out[i] = code
end
save_many(acked, recs)
bulk('ZREM', K_RESERVED, acked)
bulk('ZADD', K_DONE, done)
return out

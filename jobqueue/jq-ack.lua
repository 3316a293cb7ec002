-- jq-ack.lua - RESERVED -> DONE for a batch of jobs (jq_ack, jq_ack_many). Fenced per job: a
-- stale token is refused and that job is left as it is. A job whose cancel was requested ends
-- CANCELLED, never DONE.
--
--   ARGV[5]  n, then per job: id, token, result
--
-- Returns {code per job}.

local n = tonumber(ARGV[5])
local out = {}
-- Per job one HMGET (the fence and the cancel flag together) and one HSET and PEXPIRE; the batch
-- leaves :reserved and joins :done in one command each. The history list exists only when a
-- failure was logged, and every failure also sets last_error, so only then is it given its TTL.
local acked, done = {}, {}
local snow, sdone = fmt(now), fmt(now + DONE_TTL)
for i = 1, n do
    local a = 5 + (i - 1) * 3
    local id = ARGV[a + 1]
    local job = jk(id)
    local f = redis.call('HMGET', job, 'state', 'token', 'lease_until', 'cancel', 'last_error')
    local code = lease_code(f, ARGV[a + 2]) -- fenced: a refused job is left as it is
    if code == 0 and f[4] == '1' then
        unlease(id)
        to_cancelled(id)
        code = E_CANCELLED
    elseif code == 0 then
        redis.call('HSET', job, 'result', ARGV[a + 3], 'state', 'done', 'token', '', 'updated_at',
            snow, 'finished_at', snow)
        redis.call('PEXPIRE', job, DONE_TTL)
        if f[5] then
            redis.call('PEXPIRE', lk(id), DONE_TTL)
        end
        acked[#acked + 1] = id
        done[#done + 1], done[#done + 2] = sdone, id
    end
    out[i] = code
end
bulk('ZREM', K_RESERVED, acked)
bulk('ZADD', K_DONE, done)
return out

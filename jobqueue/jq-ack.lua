-- jq-ack.lua - RESERVED -> DONE for a batch of jobs (jq_ack, jq_ack_many). Fenced per job: a
-- stale token is refused and that job is left as it is. A job whose cancel was requested ends
-- CANCELLED, never DONE.
--
--   ARGV[5]  n, then per job: id, token, result
--
-- Returns {code per job}.

local n = tonumber(ARGV[5])
local out = {}
for i = 1, n do
    local a = 5 + (i - 1) * 3
    local id = ARGV[a + 1]
    local code = check_lease(id, ARGV[a + 2])
    if code == 0 then
        unlease(id)
        if redis.call('HGET', jk(id), 'cancel') == '1' then
            to_cancelled(id)
            code = E_CANCELLED
        else
            redis.call('HSET', jk(id), 'result', ARGV[a + 3])
            to_final(id, 'done', K_DONE, DONE_TTL)
        end
    end
    out[i] = code
end
return out

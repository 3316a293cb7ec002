-- jq-ack-effect.lua - RESERVED -> DONE together with one small write (jq_ack_effect): the
-- effect is applied if and only if the ack is, in one script, so a job acked once applies its
-- effect once however often it was delivered. The effect's key is KEYS[2], under the queue's
-- hash tag (jobqueue.c builds it), so it lives in the queue's slot.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] result  ARGV[8] op ('incrby', 'set', 'hset')
--   ARGV[9] the operand: the increment, the value, or the value stored under the job's id
--
-- Returns {code}.

local id, token = ARGV[5], ARGV[6]
local j = load(id)
local code = lease_code(j, token)
if code ~= 0 then
    return {code}
end
unlease(id, j)
if j.cancel then
    to_cancelled(id, j)
    return {E_CANCELLED}
end
local op, fx = ARGV[8], KEYS[2]
if op == 'incrby' then
    redis.call('INCRBY', fx, ARGV[9])
elseif op == 'set' then
    redis.call('SET', fx, ARGV[9])
else
    redis.call('HSET', fx, id, ARGV[9])
end
if ARGV[7] ~= '' then
    set_cold(id, j, 'result', ARGV[7])
end
end_state(id, j, 'done', DONE_TTL)
save(id, j)
add_done({id}, j.ends)
return {0}

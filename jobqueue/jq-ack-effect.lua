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
local code = check_lease(id, token)
if code ~= 0 then
    return {code}
end
unlease(id)
if redis.call('HGET', jk(id), 'cancel') == '1' then
    to_cancelled(id)
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
redis.call('HSET', jk(id), 'result', ARGV[7])
to_final(id, 'done', K_DONE, DONE_TTL)
return {0}

-- jq-fail.lua - RESERVED -> DELAYED (retry after a delay), READY (retry now) or DEAD (permanent,
-- or the attempts are used up) (jq_fail). Fenced. A job whose cancel was requested ends
-- CANCELLED.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] error text  ARGV[8] 'retry' or 'dead'
--   ARGV[9] retry delay, ms (the client computes the backoff: it knows the attempt number)
--
-- Returns {code, state reached}.

local id, token, err, mode, delay = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local code = check_lease(id, token)
if code ~= 0 then
    return {code, ''}
end
unlease(id)
local job = jk(id)
local f = redis.call('HMGET', job, 'attempts', 'max_attempts', 'priority', 'cancel')
if f[4] == '1' then
    to_cancelled(id)
    return {E_CANCELLED, 'cancelled'}
end
log_failure(id, f[1], err)
if mode == 'dead' or tonumber(f[1]) >= tonumber(f[2]) then
    to_dead(id, err)
    return {0, 'dead'}
end
redis.call('HSET', job, 'last_error', err, 'failed_at', fmt(now))
if delay > 0 then
    redis.call('HSET', job, 'state', 'delayed', 'token', '', 'run_at', fmt(now + delay),
        'updated_at', fmt(now))
    redis.call('ZADD', K_DELAYED, fmt(now + delay), id)
    return {0, 'delayed'}
end
to_ready(id, tonumber(f[3]), nil)
wake(1)
return {0, 'ready'}

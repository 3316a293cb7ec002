-- jq-fail.lua - RESERVED -> DELAYED (retry after a delay), READY (retry now) or DEAD (permanent,
-- or the attempts are used up) (jq_fail). Fenced. A job whose cancel was requested ends
-- CANCELLED.
--
--   ARGV[5] id  ARGV[6] token  ARGV[7] error text  ARGV[8] 'retry' or 'dead'
--   ARGV[9] retry delay, ms (the client computes the backoff: it knows the attempt number)
--
-- Returns {code, state reached}.

local id, token, err, mode, delay = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local j = load(id)
local code = lease_code(j, token)
if code ~= 0 then
    return {code, ''}
end
unlease(id, j)
if j.cancel then
    to_cancelled(id, j)
    return {E_CANCELLED, 'cancelled'}
end
log_failure(id, j, err)
if mode == 'dead' or j.attempts >= j.max then
    to_dead(id, j, err)
    return {0, 'dead'}
end
set_cold(id, j, 'last_error', err, 'failed_at', fmt(now))
if delay > 0 then
    set_cold(id, j, 'run_at', fmt(now + delay))
    j.state, j.token, j.updated = 'delayed', '0', now
    save(id, j)
    redis.call('ZADD', K_DELAYED, fmt(now + delay), id)
    return {0, 'delayed'}
end
to_ready(id, j, false)
wake(1)
return {0, 'ready'}

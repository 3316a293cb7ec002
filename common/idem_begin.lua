-- idem_begin.lua: the start of a request that carries an Idempotency-Key (common/idempotency.h).
-- KEYS[1] the record (hash), KEYS[2] the in-flight mark (string), one hash tag for both.
-- ARGV[1] the request's fingerprint (64 hex digits of SHA-256), ARGV[2] the mark's value (the
-- fingerprint followed by this attempt's random token), ARGV[3] the mark's expiry in ms.
-- Returns {'replay', status, headers, body}, {'mismatch'}, {'in_flight', pttl} or {'new'} (the
-- mark is now this attempt's).
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp then
    if fp ~= ARGV[1] then
        return {'mismatch'}
    end
    local r = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body')
    return {'replay', r[1], r[2], r[3]}
end
local mark = redis.call('GET', KEYS[2])
if mark then
    if string.sub(mark, 1, 64) ~= ARGV[1] then
        return {'mismatch'}
    end
    return {'in_flight', tostring(redis.call('PTTL', KEYS[2]))}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {'new'}

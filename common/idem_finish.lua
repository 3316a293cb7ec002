-- idem_finish.lua: records a response, only while the in-flight mark is still this attempt's
-- (a handler that outlived its mark records nothing: the key may have been taken over).
-- KEYS[1] the record, KEYS[2] the mark. ARGV[1] the mark's value, ARGV[2] the fingerprint,
-- ARGV[3] the status, ARGV[4] the headers (name NUL value NUL ...), ARGV[5] the body,
-- ARGV[6] the record's TTL in seconds. Returns 1 when recorded, 0 when the mark was lost.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('DEL', KEYS[2])
return 1

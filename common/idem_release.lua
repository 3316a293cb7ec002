-- idem_release.lua: frees a key whose response is not recorded (5xx and other transient
-- statuses), only while the in-flight mark is still this attempt's.
-- KEYS[1] the mark. ARGV[1] the mark's value. Returns 1 when released, 0 when the mark was lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0

-- wh-renew.lua: extends a receiver's in-flight mark, if it is still the caller's.
-- KEYS[1] the mark (<prefix>{<webhook-id>}); ARGV[1] "run:<token>"; ARGV[2] the lease in ms.
-- Returns 1 when renewed, 0 when the mark is gone or belongs to another run (the lease ran out
-- and a retry claimed it, or Redis lost it).
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0

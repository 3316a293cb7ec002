-- wh-release.lua: drops a receiver's in-flight mark after its command failed, so that the
-- sender's retry runs the command again. Only the caller's own mark is dropped.
-- KEYS[1] the mark; ARGV[1] "run:<token>". Returns 1 when dropped, 0 when it was not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0

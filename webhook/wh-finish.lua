-- wh-finish.lua: records that a receiver's command succeeded for one webhook-id.
-- KEYS[1] the mark; ARGV[1] "run:<token>"; ARGV[2] how long the done record is kept, in ms.
-- Returns 1 when the caller's mark became the done record; 2 when the mark had vanished (its
-- lease ran out, or Redis lost it) and the done record was written all the same (the command
-- did succeed, so a retry must not run it again); 3 when another run has already recorded done;
-- 0 when another run holds the mark now (it claimed after our lease ran out; it will record).
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or v == false then
    redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
    if v == false then
        return 2
    end
    return 1
end
if v == 'done' then
    return 3
end
return 0

-- wh-message.lua: stores an accepted message and answers which endpoints it fans out to, in one
-- round trip (the sender's POST /v1/messages; sender.c, "message_create").
-- KEYS[1]: the sender's key prefix, "wh1:{wh1}:" (every key below shares its hash tag).
-- ARGV: message id, event type, body (the exact bytes every attempt sends), created_ms,
-- retention in seconds, then the ids of the endpoints the sender holds back (backlogged: every
-- request slot taken, breaker open, disabled). A message for one of those is parked rather than
-- enqueued: its id joins the endpoint's ep:<id>:parked zset (scored by created_ms), stored with the
-- message in this same step, and the sender moves parked messages to the endpoint's queue in
-- batches (sender.c, "Parking").
-- Returns {ids of the endpoints to enqueue it for, ids of those it was parked for}: the
-- endpoints whose event types match (an endpoint without event types takes every event; a
-- disabled endpoint is included: its message, parked or queued, waits for it to be enabled).
local p = KEYS[1]
local id, etype = ARGV[1], ARGV[2]
local held = {}
for i = 6, #ARGV do
    held[ARGV[i]] = true
end
local enqueue, parked, all = {}, {}, {}
for _, ep in ipairs(redis.call('SMEMBERS', p .. 'eps')) do
    local types = redis.call('HGET', p .. 'ep:' .. ep, 'event_types')
    if types and (types == '*' or string.find(types, ',' .. etype .. ',', 1, true)) then
        all[#all + 1] = ep
        if held[ep] then
            redis.call('ZADD', p .. 'ep:' .. ep .. ':parked', ARGV[4], id)
            parked[#parked + 1] = ep
        else
            enqueue[#enqueue + 1] = ep
        end
    end
end
local msg = p .. 'msg:' .. id
redis.call('HSET', msg, 'event_type', etype, 'body', ARGV[3], 'created_ms', ARGV[4])
redis.call('EXPIRE', msg, ARGV[5])
if #all > 0 then
    redis.call('SADD', msg .. ':eps', unpack(all))
    redis.call('EXPIRE', msg .. ':eps', ARGV[5])
end
return {enqueue, parked}

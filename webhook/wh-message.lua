-- wh-message.lua: stores an accepted message and answers which endpoints it fans out to, in one
-- round trip (the sender's POST /v1/messages; sender.c, "message_create").
-- KEYS[1]: the sender's key prefix, "wh1:{wh1}:" (every key below shares its hash tag).
-- ARGV: message id, event type, body (the exact bytes every attempt sends), created_ms,
-- retention in seconds.
-- Returns the ids of the endpoints whose event types match (an endpoint without event types
-- takes every event; a disabled endpoint is included: its job waits for it to be enabled).
local p = KEYS[1]
local id, etype = ARGV[1], ARGV[2]
local targets = {}
for _, ep in ipairs(redis.call('SMEMBERS', p .. 'eps')) do
    local types = redis.call('HGET', p .. 'ep:' .. ep, 'event_types')
    if types and (types == '*' or string.find(types, ',' .. etype .. ',', 1, true)) then
        targets[#targets + 1] = ep
    end
end
local msg = p .. 'msg:' .. id
redis.call('HSET', msg, 'event_type', etype, 'body', ARGV[3], 'created_ms', ARGV[4])
redis.call('EXPIRE', msg, ARGV[5])
for _, ep in ipairs(targets) do
    redis.call('SADD', msg .. ':eps', ep)
end
if #targets > 0 then
    redis.call('EXPIRE', msg .. ':eps', ARGV[5])
end
return targets

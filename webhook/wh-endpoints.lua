-- wh-endpoints.lua: every endpoint's id and state, for the delivery workers' periodic refresh
-- (sender.c, "endpoints_refresh"), in one round trip.
-- KEYS[1]: the sender's key prefix, "wh1:{wh1}:". Returns {id1, state1, id2, state2, ...}; a
-- state is "" when the endpoint's hash is gone.
local p = KEYS[1]
local out = {}
for _, ep in ipairs(redis.call('SMEMBERS', p .. 'eps')) do
    out[#out + 1] = ep
    out[#out + 1] = redis.call('HGET', p .. 'ep:' .. ep, 'state') or ''
end
return out

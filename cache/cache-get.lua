-- cache-get.lua: one look-up in the Redis tier, and the lease when a load is needed.
-- KEYS[1] the value hash <prefix>{<key>}, KEYS[2] the lease <prefix>{<key>}:lease
-- ARGV[1] this caller's lease token, ARGV[2] lease ms, ARGV[3] rand in (0,1] for XFetch,
-- ARGV[4] XFetch beta (0: no early refresh)
-- Returns {kind, lead, status, value, fresh_left_ms, lease_pttl}
--   kind "hit": fresh value; lead = 1 when XFetch chose this caller to refresh it early
--   kind "stale": serve value now (stale-while-revalidate, or stale-if-error after a failed
--        load); lead = 1 when this caller got the lease to revalidate it
--   kind "err": a load failed recently (negative caching), no usable value
--   kind "miss": no usable value; lead = 1: this caller loads (value = a stale-if-error
--        fallback or false); lead = 0: another holds the lease for lease_pttl ms more
-- Hash fields: v value, st status (0 ok, 1 not found), fu fresh until, su stale-while-
-- revalidate until, eu stale-if-error until, ne error until, t stored at (ms, server clock),
-- d the load's measured ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'v', 'st', 'fu', 'su', 'eu', 'ne', 'd')
local v, st = h[1], tonumber(h[2] or '0')
local fu, su = tonumber(h[3] or '0'), tonumber(h[4] or '0')
local eu, ne = tonumber(h[5] or '0'), tonumber(h[6] or '0')
local d = tonumber(h[7] or '0')

local function lease()
    if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
        return 1
    end
    return 0
end

if v and fu > now then
    local lead = 0
    local beta = tonumber(ARGV[4])
    if beta > 0 and now - d * beta * math.log(tonumber(ARGV[3])) >= fu then
        lead = lease()
    end
    return {'hit', lead, st, v, fu - now, 0}
end
if ne > now then
    if v and eu > now then
        return {'stale', 0, st, v, 0, 0}
    end
    return {'err', 0, 2, false, ne - now, 0}
end
if v and su > now then
    return {'stale', lease(), st, v, 0, 0}
end
local fallback = false
if v and eu > now then
    fallback = v
end
if lease() == 1 then
    return {'miss', 1, st, fallback, 0, 0}
end
return {'miss', 0, st, false, 0, redis.call('PTTL', KEYS[2])}

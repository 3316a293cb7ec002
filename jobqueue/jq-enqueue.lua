-- jq-enqueue.lua - new jobs -> READY or DELAYED (jq_enqueue, jq_enqueue_many). Follows
-- jq-common.lua.
--
--   ARGV[5]  bound on READY jobs (0: none)    ARGV[6]  idempotency window, ms
--   ARGV[7]  n, then per job: payload, delay ms, priority, max attempts, idempotency key ('')
--
-- Returns {0, id, created, id, created, ...} (created 0: an earlier job with the same key) or
-- {E_FULL, ready count}. Everything is checked before anything is written, so a refused call
-- changes nothing: a key whose enqueue was refused is not consumed.

local max_ready, idem_ttl, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {0}
local known = {} -- idempotency key -> index of the job in this call that takes it
local fresh = 0
for i = 1, n do
    local a = 7 + (i - 1) * 5
    local key = ARGV[a + 5]
    if key ~= '' then
        local prev = redis.call('GET', base .. ':idem:' .. key)
        if prev then
            out[2 * i], out[2 * i + 1] = prev, 0
        elseif known[key] then
            out[2 * i], out[2 * i + 1] = known[key], 0
        else
            known[key] = i
            fresh = fresh + 1
        end
    else
        fresh = fresh + 1
    end
end
if max_ready > 0 and fresh > 0 then
    local ready = ready_count()
    if ready + fresh > max_ready then
        return {E_FULL, ready}
    end
end
-- The hot path writes no key per job: the ids come from one INCRBY for the whole call, and the
-- records, payloads and READY ids go in one HSET, HSET and RPUSH for the call (one RPUSH per
-- priority, in the order the jobs came).
local id = fresh > 0 and redis.call('INCRBY', K_SEQ, fresh) - fresh or 0
local lines, prios, metas, datas = {}, {}, {}, {}
for i = 1, n do
    if not out[2 * i] or type(out[2 * i]) == 'number' then
        local a = 7 + (i - 1) * 5
        local payload, delay, prio = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
        local key = ARGV[a + 5]
        local first = out[2 * i] -- an index into this call, for a repeated key
        if first then
            out[2 * i] = out[2 * first]
        else
            id = id + 1
            local sid = fmt(id)
            local j = {state = 'ready', attempts = 0, max = tonumber(ARGV[a + 4]), prio = prio,
                token = '0', lease = 0, created = now, updated = now, ends = 0, cancel = false,
                cold = false}
            if key ~= '' then
                redis.call('SET', base .. ':idem:' .. key, sid, 'PX', idem_ttl)
                set_cold(sid, j, 'ikey', key)
            end
            if delay > 0 then
                j.state = 'delayed'
                set_cold(sid, j, 'run_at', fmt(now + delay))
                redis.call('ZADD', K_DELAYED, fmt(now + delay), sid)
            else
                if not lines[prio] then
                    lines[prio] = {}
                    prios[#prios + 1] = prio
                end
                local l = lines[prio]
                l[#l + 1] = sid
            end
            local m = #metas
            metas[m + 1], metas[m + 2] = sid, encode(j)
            datas[m + 1], datas[m + 2] = sid, payload
            out[2 * i], out[2 * i + 1] = sid, 1
        end
    end
end
bulk('HSET', K_META, metas)
bulk('HSET', K_DATA, datas)
local woken = 0
for _, p in ipairs(prios) do
    bulk('RPUSH', line(p), lines[p])
    redis.call('ZADD', K_LINES, fmt(-p), fmt(p))
    woken = woken + #lines[p]
end
if woken > 0 then
    wake(woken)
end
return out

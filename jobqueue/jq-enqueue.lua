-- jq-enqueue.lua - new jobs -> READY or DELAYED (jq_enqueue, jq_enqueue_many). Follows
-- jq-common.lua.
--
--   ARGV[5]  bound on READY jobs (0: none)    ARGV[6]  idempotency window, ms
--   ARGV[7]  n    ARGV[8]  max attempts of a job sent with default options
--   then per job: payload, options: '' for the defaults (no delay, priority 0, ARGV[8] max
--            attempts, no idempotency key), else "<delay ms> <priority> <max attempts>" and, when
--            it has one, a space and its idempotency key (the rest of the text)
--
-- Returns {0, last, i, id, i, id, ...}: the jobs of the call that got new ids have last + 1,
-- last + 2, ... in call order, and each pair (i, id) names a job (its place in the call, from 1)
-- that got an earlier job's id for its idempotency key, and created nothing. Or {E_FULL, ready
-- count}. Two values for a call of new jobs however many it holds: a reply value costs Redis
-- about as much as a command argument. Everything is checked before anything is written, so a
-- refused call changes nothing: a key whose enqueue was refused is not consumed.

local max_ready, idem_ttl, n, max_default = tonumber(ARGV[5]), tonumber(ARGV[6]),
    tonumber(ARGV[7]), tonumber(ARGV[8])

-- Job i's payload, then delay, priority, max attempts and idempotency key ('' when none).
local function job_args(i)
    local a = 8 + (i - 1) * 2
    local o = ARGV[a + 2]
    if o == '' then
        return ARGV[a + 1], 0, 0, max_default, ''
    end
    local delay, prio, max, key = string.match(o, '^(%d+) (%-?%d+) (%d+) ?(.*)$')
    return ARGV[a + 1], tonumber(delay), tonumber(prio), tonumber(max), key
end

local out = {0, 0}
local earlier = {} -- job i -> the id it gets, or the index of the job in this call that takes it
local known = {} -- idempotency key -> index of the job in this call that takes it
local fresh = 0
for i = 1, n do
    local _, _, _, _, key = job_args(i)
    if key ~= '' then
        local prev = redis.call('GET', base .. ':idem:' .. key)
        if prev then
            earlier[i] = prev
        elseif known[key] then
            earlier[i] = known[key]
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
out[2] = id
local lines, prios, metas, datas = {}, {}, {}, {}
-- sid goes to the back of its priority's line, in the order the jobs came.
local function line_up(prio, sid)
    local l = lines[prio]
    if not l then
        l = {}
        lines[prio] = l
        prios[#prios + 1] = prio
    end
    l[#l + 1] = sid
end
local given = {} -- job i -> the new id it got
for i = 1, n do
    local prev = earlier[i]
    if prev then
        if type(prev) == 'number' then
            prev = given[prev]
        end
        out[#out + 1], out[#out + 2] = i, prev
    else
        local payload, delay, prio, max, key = job_args(i)
        id = id + 1
        local sid = fmt(id)
        given[i] = sid
        local rec
        if key == '' and delay == 0 then
            -- The common job: its record packed at once (a table to encode costs more than the
            -- rest of its enqueue), and its id to its priority's line.
            rec = struct.pack(RECORD, CODE.ready, 0, max, prio, '0', 0, now, now, 0, 0, 0)
            line_up(prio, sid)
        else
            local j = {state = 'ready', attempts = 0, max = max, prio = prio, token = '0',
                lease = 0, created = now, updated = now, ends = 0, cancel = false, cold = false}
            if key ~= '' then
                redis.call('SET', base .. ':idem:' .. key, sid, 'PX', idem_ttl)
                set_cold(sid, j, 'ikey', key)
            end
            if delay > 0 then
                j.state = 'delayed'
                set_cold(sid, j, 'run_at', fmt(now + delay))
                redis.call('ZADD', K_DELAYED, fmt(now + delay), sid)
            else
                line_up(prio, sid)
            end
            rec = encode(j)
        end
        local m = #metas
        metas[m + 1], metas[m + 2] = sid, rec
        datas[m + 1], datas[m + 2] = sid, payload
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

-- jq-common.lua - the part every job-queue script starts with (jobqueue.c sends each script as
-- this file followed by the script's own). It names the queue's keys, reads the clock, reads and
-- writes job records and holds the transitions that more than one script makes.
--
--   KEYS[1]  the queue's base name, "<prefix>{jq:<queue>}": every key below is this name plus a
--            suffix, so all of them share the hash tag and live in one cluster slot
--   ARGV[1]  retention of DONE jobs, ms          ARGV[2]  retention of CANCELLED jobs, ms
--   ARGV[3]  retention of DEAD jobs, ms          ARGV[4]  batch bound of the housekeeping
--   ARGV[5..] the script's own arguments
--
-- Replies are tables whose first element is 0 or one of the codes below (jobqueue.c maps them
-- to JQ_E* codes).
--
-- The clock is Redis TIME, in milliseconds: never a client's clock.
--
-- Storage. What every transition reads and writes lives in two hashes per queue, one field per
-- job: :meta holds the job's record (below) and :data its payload; READY ids wait in one list
-- per priority (a line: pushed at the back, taken from the front). So a batch of jobs is read
-- with one HMGET and written with one HSET, whatever its size: a per-job hash would cost a
-- Redis call per job and per transition, which is most of what a job costs. What is rare or
-- big (idempotency key, run_at, result, progress, last error) goes to a per-job hash :job:<id>
-- that exists only when one of them was set, and the failure history to :log:<id>; the record's
-- cold flag says whether they exist. Hash fields cannot expire, so a DONE, CANCELLED or DEAD
-- job's record stays until housekeeping trims its zset entry past retention; until then every
-- read treats a record past retention as gone (load).

local base = KEYS[1]
local K_META = base .. ':meta'           -- hash: id -> the job's record
local K_DATA = base .. ':data'           -- hash: id -> payload
local K_LINES = base .. ':lines'         -- zset: priority -> -priority, the READY lines in use
local K_DELAYED = base .. ':delayed'     -- zset: id -> ms when the job is due
local K_RESERVED = base .. ':reserved'   -- zset: lease deadline -> itself (ms), those in use
local K_DEAD = base .. ':dead'           -- zset: id -> ms when its retention ends
local K_DONE = base .. ':done'           -- zset: end of retention -> itself (ms), those in use
local K_NDONE = base .. ':ndone'         -- string: the DONE jobs in the :done:<e> lists
local K_CANCELLED = base .. ':cancelled' -- zset: id -> ms when its retention ends
local K_SEQ = base .. ':seq'             -- string: counter for ids and lease tokens
local K_WAKE = base .. ':wake'           -- list: at most WAKE_MAX tokens for blocked reservers
-- per priority p in use, ':ready:<p>' (list: its READY ids, first in line first); per lease
-- deadline d in use, ':lease:<d>' (set: the RESERVED ids whose lease ends at d ms); per end of
-- retention e in use, ':done:<e>' (list: the DONE ids whose retention ends at e ms); and per
-- job, only when needed: ':job:<id>' (hash) and ':log:<id>' (list: its failures, newest first)

local DONE_TTL = tonumber(ARGV[1])
local CANCELLED_TTL = tonumber(ARGV[2])
local DEAD_TTL = tonumber(ARGV[3])
local BATCH = tonumber(ARGV[4])

local E_STALE, E_NOTFOUND, E_FULL, E_CANCELLED, E_STATE = -1, -2, -3, -4, -5
local WAKE_MAX = 16
local LOG_MAX = 20 -- failures kept per job

local floor = math.floor
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)

local function jk(id)
    return base .. ':job:' .. id
end

local function lk(id)
    return base .. ':log:' .. id
end

local function fmt(n)
    return string.format('%d', n)
end

-- The READY line of a priority: a list, FIFO. K_LINES names the lines that hold jobs, highest
-- priority first; a reserve or drop that empties a line takes it off (a cancel that empties one
-- leaves it to them).
local function line(prio)
    return base .. ':ready:' .. prio
end

-- READY jobs, all lines (one LLEN per priority in use).
local function ready_count()
    local n = 0
    for _, p in ipairs(redis.call('ZRANGE', K_LINES, 0, -1)) do
        n = n + redis.call('LLEN', line(p))
    end
    return n
end

-- A job's record, packed with struct (part of Redis's Lua): every transition reads and writes
-- records, and a packed one costs a few times less Lua work than a line of text to parse and
-- format. In order: state (1 byte, CODE below), attempts and max attempts (2 bytes each),
-- priority (2, signed), token (text up to a 0 byte: the lease token, '0' when none; tokens come
-- from :seq, so never 0), lease until, created at, updated at, and the end of its retention in
-- a terminal state, 0 before (doubles, ms), cancel requested and cold keys exist (1 byte each,
-- 0 or 1). decode gives a table, encode packs one; jq-get.lua shows a record as fields
-- (jq_job_get).
local RECORD = '<BHHhsddddBB'
local CODE = {ready = 1, delayed = 2, reserved = 3, done = 4, dead = 5, cancelled = 6}
local NAME = {'ready', 'delayed', 'reserved', 'done', 'dead', 'cancelled'}

local function decode(s)
    if not s then
        return nil
    end
    local st, at, mx, pr, tk, ls, cr, up, en, cn, cd = struct.unpack(RECORD, s)
    return {state = NAME[st], attempts = at, max = mx, prio = pr, token = tk, lease = ls,
        created = cr, updated = up, ends = en, cancel = cn == 1, cold = cd == 1}
end

local function encode(j)
    return struct.pack(RECORD, CODE[j.state], j.attempts, j.max, j.prio, j.token, j.lease,
        j.created, j.updated, j.ends, j.cancel and 1 or 0, j.cold and 1 or 0)
end

-- A record past its retention counts as gone (housekeeping trims it later). The end was fixed
-- when the job finished, by the retention of the client that finished it.
local function expired(j)
    return j.ends > 0 and j.ends <= now
end

-- The job's record, or nil when there is none (or it is past retention).
local function load(id)
    local j = decode(redis.call('HGET', K_META, id))
    if j and expired(j) then
        return nil
    end
    return j
end

-- Writes one record.
local function save(id, j)
    redis.call('HSET', K_META, id, encode(j))
end

-- Sends cmd on key with the arguments in list, 2,000 at a time (unpack refuses a few thousand;
-- 2,000 is even, so field-value pairs stay together): the hot scripts read, write, add and
-- remove a whole batch in one command each instead of one per job.
local function bulk(cmd, key, list)
    for i = 1, #list, 2000 do
        local j = i + 1999
        if j > #list then
            j = #list
        end
        redis.call(cmd, key, unpack(list, i, j))
    end
end

-- The records of ids (one HMGET per 2,000): a table id -> record (absent for a job that is
-- gone). A repeated id maps to one table, so a batch sees its own earlier changes.
local function load_many(ids)
    local out = {}
    for i = 1, #ids, 2000 do
        local j = i + 1999
        if j > #ids then
            j = #ids
        end
        local got = redis.call('HMGET', K_META, unpack(ids, i, j))
        for k = 1, #got do
            local id = ids[i + k - 1]
            if not out[id] then
                local rec = decode(got[k])
                if rec and not expired(rec) then
                    out[id] = rec
                end
            end
        end
    end
    return out
end

-- Sets fields of the job's cold hash (field, value, ...) and marks the record (the caller
-- saves it).
local function set_cold(id, j, ...)
    redis.call('HSET', jk(id), ...)
    j.cold = true
end

-- Records a failed attempt in the job's history ("<ms> <attempt> <error>", newest first, at
-- most LOG_MAX): failures are rare, so this costs nothing on the common path.
local function log_failure(id, j, err)
    redis.call('LPUSH', lk(id), fmt(now) .. ' ' .. j.attempts .. ' ' .. err)
    redis.call('LTRIM', lk(id), 0, LOG_MAX - 1)
    j.cold = true
end

-- Pushes up to n wake tokens (the list never holds more than WAKE_MAX): a reserver blocked on
-- the list (BLPOP) wakes and tries again.
local function wake(n)
    local room = WAKE_MAX - redis.call('LLEN', K_WAKE)
    if n > room then
        n = room
    end
    if n > 0 then
        local ones = {}
        for i = 1, n do
            ones[i] = '1'
        end
        redis.call('RPUSH', K_WAKE, unpack(ones))
    end
end

-- -> READY, at the back of its priority's line, or at the front when front is true (a released
-- job goes back where it was). Saves the record.
local function to_ready(id, j, front)
    j.state, j.token, j.updated, j.ends = 'ready', '0', now, 0
    redis.call(front and 'LPUSH' or 'RPUSH', line(j.prio), id)
    redis.call('ZADD', K_LINES, fmt(-j.prio), fmt(j.prio))
    save(id, j)
end

-- A terminal state, kept for ttl ms: the record says when that ends, and the cold keys, if any,
-- expire then. A DEAD or CANCELLED job's zset holds its id scored by that moment, so their
-- counts (ZCOUNT from now) are exact and trims cheap; a DONE job joins the list of its end of
-- retention (add_done, below). end_state changes the record and the cold keys only (an ack
-- writes its batch's records and DONE list at once); finish does all of it.
local function end_state(id, j, state, ttl)
    j.state, j.token, j.updated, j.ends = state, '0', now, now + ttl
    if j.cold then
        redis.call('PEXPIRE', jk(id), ttl)
        redis.call('PEXPIRE', lk(id), ttl) -- no-op when there is no history
    end
end

local function finish(id, j, state, zset, ttl)
    end_state(id, j, state, ttl)
    redis.call('ZADD', zset, fmt(j.ends), id)
    save(id, j)
end

local function to_dead(id, j, err)
    set_cold(id, j, 'last_error', err, 'failed_at', fmt(now))
    finish(id, j, 'dead', K_DEAD, DEAD_TTL)
end

local function to_cancelled(id, j)
    finish(id, j, 'cancelled', K_CANCELLED, CANCELLED_TTL)
end

-- The fence: the job must be RESERVED under this token and its lease not past. Returns 0 or an
-- error code. fence takes a record's fields (state code, token, lease), lease_code a record.
local function fence(state, job_token, lease, token)
    if state ~= CODE.reserved or job_token ~= token or now >= lease then
        return E_STALE
    end
    return 0
end

local function lease_code(j, token)
    if not j then
        return E_NOTFOUND
    end
    return fence(CODE[j.state], j.token, j.lease, token)
end

-- Leases are grouped by deadline: a reserve leases its whole batch until one moment, so the
-- batch joins one set (:lease:<d>, ids are integers: Redis keeps it a compact array) and puts
-- one entry in :reserved, and an ack of the batch deletes one set. A zset entry per job costs
-- the reserve and the ack each a sorted insert or removal and two values a job. Every set
-- named in :reserved holds at least one id, and a RESERVED job is in the set of its record's
-- lease deadline, in no other.
local function lease_key(d)
    return base .. ':lease:' .. d
end

-- RESERVED until ms: ids (all of them) join the set of that deadline.
local function lease(ids, ms)
    local d = fmt(ms)
    bulk('SADD', lease_key(d), ids)
    redis.call('ZADD', K_RESERVED, d, d)
end

-- Leaves RESERVED, for ids all leased until ms, each named once (the caller then sets the next
-- state): when they are the whole set, it is deleted at once.
local function unlease_many(ids, ms)
    local d = fmt(ms)
    local k = lease_key(d)
    if redis.call('SCARD', k) == #ids then
        redis.call('DEL', k) -- the whole batch, the common case
    else
        bulk('SREM', k, ids)
    end
    if redis.call('EXISTS', k) == 0 then
        redis.call('ZREM', K_RESERVED, d)
    end
end

local function unlease(id, j)
    unlease_many({id}, j.lease)
end

-- DONE jobs are grouped the same way, by the end of their retention: an ack of a batch ends it
-- at one moment for all of them, so they join one list (RPUSH) with one :done entry, and
-- :ndone counts them. A zset entry per job would cost each ack a sorted insert a job, the
-- biggest single cost of a no-op job. The price is the count: stats reads :ndone after
-- trimming a batch of groups past retention, so it is exact unless more than a batch of DONE
-- jobs passed their retention since housekeeping last ran (jq-stats.lua).
local function done_key(e)
    return base .. ':done:' .. e
end

-- ids (all of them) are DONE until ms.
local function add_done(ids, ms)
    if #ids > 0 then
        local e = fmt(ms)
        bulk('RPUSH', done_key(e), ids)
        redis.call('ZADD', K_DONE, e, e)
        redis.call('INCRBY', K_NDONE, #ids)
    end
end

-- Deletes jobs for good: records, payloads and cold keys (those whose record says they exist;
-- a record past retention is not in recs, and its cold keys expired with it).
local function delete_jobs(ids, recs)
    bulk('HDEL', K_META, ids)
    bulk('HDEL', K_DATA, ids)
    for _, id in ipairs(ids) do
        if recs[id] and recs[id].cold then
            redis.call('DEL', jk(id), lk(id))
        end
    end
end

-- n ids left the DONE lists (a trim, a drop): :ndone counts them off, and goes at 0.
local function count_off_done(n)
    if n > 0 and redis.call('DECRBY', K_NDONE, n) <= 0 then
        redis.call('DEL', K_NDONE)
    end
end

-- Deletes up to n DONE jobs past retention, oldest group first (a group taken whole leaves
-- :done), and counts them off :ndone.
local function trim_done(n)
    local taken = 0
    for _, e in ipairs(redis.call('ZRANGEBYSCORE', K_DONE, '-inf', now, 'LIMIT', 0, n)) do
        if taken >= n then
            break
        end
        local ids = redis.call('LPOP', done_key(e), n - taken) or {}
        -- Their cold keys expired by their TTL: only the record and the payload are left.
        delete_jobs(ids, {})
        taken = taken + #ids
        if redis.call('EXISTS', done_key(e)) == 0 then
            redis.call('ZREM', K_DONE, e)
        end
    end
    count_off_done(taken)
end

-- Housekeeping, bounded per kind so no call runs long whatever piled up: due DELAYED jobs ->
-- READY (ties in due time FIFO by id) and expired leases -> READY, DEAD (delivery limit
-- reached) or CANCELLED (cancel requested), BATCH of each; terminal jobs past retention
-- deleted, trim of each terminal state (a reserve of n passes at least n, so the deletions keep
-- up with the jobs it can finish). Returns promoted, reclaimed, buried.
local function housekeep(trim)
    local promoted, reclaimed, buried = 0, 0, 0
    local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, BATCH)
    if #due > 0 then
        local list = {}
        for i = 1, #due, 2 do
            list[#list + 1] = {due[i], tonumber(due[i + 1])}
        end
        table.sort(list, function(a, b)
            if a[2] ~= b[2] then
                return a[2] < b[2]
            end
            return tonumber(a[1]) < tonumber(b[1])
        end)
        for _, e in ipairs(list) do
            redis.call('ZREM', K_DELAYED, e[1])
            local j = load(e[1])
            if j then
                to_ready(e[1], j, false)
                promoted = promoted + 1
            end
        end
    end
    -- Expired leases: the sets of the deadlines passed, earliest first, BATCH jobs at most; SPOP
    -- takes them out of their set (a set taken whole is deleted; from a bigger one, any BATCH of
    -- them), and the ids taken from one set are handled in id order.
    local ids = {}
    for _, d in ipairs(redis.call('ZRANGEBYSCORE', K_RESERVED, '-inf', now, 'LIMIT', 0, BATCH)) do
        if #ids >= BATCH then
            break
        end
        local got = redis.call('SPOP', lease_key(d), BATCH - #ids)
        table.sort(got, function(a, b)
            return tonumber(a) < tonumber(b)
        end)
        for _, id in ipairs(got) do
            ids[#ids + 1] = id
        end
        if redis.call('EXISTS', lease_key(d)) == 0 then
            redis.call('ZREM', K_RESERVED, d)
        end
    end
    for _, id in ipairs(ids) do
        local j = load(id)
        if not j or j.state ~= 'reserved' then
            -- gone (dropped), or not leased (the invariant above says never): nothing to move
        elseif j.cancel then
            to_cancelled(id, j)
        else
            log_failure(id, j, 'lease expired')
            if j.attempts >= j.max then
                to_dead(id, j, 'lease expired on delivery ' .. j.attempts .. ' of ' .. j.max)
                buried = buried + 1
            else
                set_cold(id, j, 'last_error', 'lease expired on delivery ' .. j.attempts)
                to_ready(id, j, false)
                reclaimed = reclaimed + 1
            end
        end
    end
    if promoted + reclaimed > 0 then
        wake(promoted + reclaimed)
    end
    trim_done(trim)
    for _, z in ipairs({K_CANCELLED, K_DEAD}) do
        local old = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, trim)
        if #old > 0 then
            redis.call('ZREM', z, unpack(old))
            -- Their cold keys expired by their TTL: only the record and the payload are left.
            delete_jobs(old, {})
        end
    end
    return promoted, reclaimed, buried
end

-- Milliseconds until housekeeping next has something to do (a delayed job due or a lease
-- expiring), or -1 when nothing is scheduled.
local function next_event()
    local best = -1
    for _, z in ipairs({K_DELAYED, K_RESERVED}) do
        local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
        if first[2] then
            local d = tonumber(first[2]) - now
            if d < 0 then
                d = 0
            end
            if best < 0 or d < best then
                best = d
            end
        end
    end
    return best
end

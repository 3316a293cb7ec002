-- rl-common.lua - the part every rate-limit script shares. The library sends each algorithm to
-- Redis as one script: this file followed by the algorithm's file (token-bucket.lua, gcra.lua,
-- sliding-window-log.lua, sliding-window-counter.lua), which ends with `return rl_run(alg)`.
--
-- One call decides a batch of checks, in order. Every check is charged against the same P
-- policies; a single check is simply a batch of one.
--
--   KEYS   the state keys: check i's key for policy j is KEYS[(i - 1) * P + j]
--   ARGV   P, then q_j and w_j (quota, window in whole seconds) for j = 1..P, then one cost per
--          check; so the number of checks is #ARGV - 1 - 2P
--
-- The reply is a flat array of integers, 2 + 2P per check:
--   allowed (1 or 0, always 1 for cost 0), retry_ms (0 when allowed, -1 for never: the cost
--   exceeds a quota; the library decides those itself and does not send them),
--   then remaining and reset_ms for each policy.
-- remaining is what is left after this check; reset_ms is the time until more quota becomes
-- available for that policy (0 when it is full), the "reset" of draft-ietf-httpapi-ratelimit-
-- headers; retry_ms is the time until the same check would be allowed.
--
-- Exact arithmetic. Time is Redis's TIME in microseconds (about 1.7e15, well inside the 2^53
-- integers a Lua double holds exactly). Each algorithm keeps its state as integers and multiplies
-- rather than divides, so a policy like 7 per 3 seconds never accumulates rounding: the library
-- refuses policies whose q * w * 1e6 would leave that range, and windows above 10^9 s, so that
-- instants (now + W) stay in it too. Divisions are written floor(x / y) or ceil(x / y), and for
-- integers with |x| < 2^53 and y >= 1 that is exact: a quotient that is an integer comes back
-- exactly, and one that is not lies at least 1/y from every integer, while the division's
-- rounding error is at most |x / y| * 2^-53 < 1/y, so rounding never reaches across an integer.
-- Waits are rounded up to the millisecond, so a client that waits exactly retry_ms is admitted.
--
-- Each algorithm provides four functions over a state table s that this file creates once per
-- policy and call (s.q, s.W: the window in microseconds, s.now) and reuses for every check:
--   load(s, key, v)   reads the key into s. When the algorithm keeps one string per key it sets
--                     alg.mget, and this file reads the values of all the call's keys with one
--                     MGET and passes each as v: one redis.call per batch instead of one per key
--   wait(s, m)        microseconds until m units are available (m <= q), 0 if now
--   remaining(s)      whole units available now
--   charge(s, cost)   takes cost units and writes the key back, always with a TTL (only called
--                     when every policy allows)
-- and may provide a fifth, when it can compute the pair more cheaply than the default does:
--   report(s)         remaining (at most q) and reset_ms, the reply's two values for the policy
-- and, for a single policy (P = 1), a sixth when it has a faster way for some policies:
--   single(s, first, last, out, decide)   decides the whole call and returns true, or returns
--                     false (before doing anything) to leave it to the general way; decide is
--                     the general way's decision of one check, for the checks it does not handle
--
-- Speed matters here: Redis runs one script at a time, so its cost per check caps the whole
-- system, and at a few microseconds per check the Lua interpreter's own work (function calls,
-- table lookups) is as large as the redis.call it wraps. So globals and the algorithm's functions
-- are read once into locals (each global access in Redis's Lua goes through a protected table),
-- no table is created per check, the reply is written by index rather than table.insert, and a
-- single policy (P = 1, by far the common case) takes a path without the inner loops.

local floor, ceil, format, match = math.floor, math.ceil, string.format, string.match
local tonumber, call, unpack = tonumber, redis.call, unpack

-- Values this call has written, by key. A batch may check one key twice, and the second check
-- must see the first one's charge, not the value MGET read before either.
local written = {}

-- Expiries of string keys fall on a grid of whole seconds: a value that matters until the
-- instant `needed` (microseconds of Redis time, inclusive) makes its key expire at the end of
-- the second in which `needed` falls. expiry_second(needed) is that instant in whole seconds
-- since the epoch (the grid second).
local function expiry_second(needed)
    -- floor(needed / 1e6) + 1, with `%` rather than a call to math.floor: this runs once or
    -- twice per check, and a call to a C function costs the interpreter more than the arithmetic.
    return (needed - needed % 1000000) / 1000000 + 1
end

-- The PXAT argument (milliseconds) for grid second `sec`, as text. A Lua number handed to
-- redis.call is turned into text by Redis with a "%.17g" printf, which costs about as much as
-- the SET it belongs to; the keys of one call share one or two grid seconds, so each is
-- formatted once per call.
local pxat_texts = {}
local function pxat_text(sec)
    local t = pxat_texts[sec]
    if not t then
        t = format('%d', sec * 1000)
        pxat_texts[sec] = t
    end
    return t
end

-- The four numbers of a value "<a> <b> <c> <e>" (the token bucket's and the counter's, whose last
-- number is the value's own expiry second), or nil for no key or for a value this script did not
-- write, which the algorithm then reads as no key and overwrites when it charges.
local function four_numbers(v)
    local a, b, c, e = match(v or '', '^(%d+) (%d+) (%d+) (%d+)$')
    if a then
        return tonumber(a), tonumber(b), tonumber(c), tonumber(e)
    end
end

-- Writes a string key that must expire at the end of grid second `sec`, changing its expiry as
-- rarely as possible: a SET that keeps the TTL (KEEPTTL) costs Redis markedly less than one that
-- sets a new expiry (measured in the README), and a key checked many times a second moves to a
-- new grid second about once a second.
--
-- `kept` is the grid second of the stored value, which the algorithm knows from the stored value
-- alone (derived from it, or stored in it), or nil for a new key. Every write of GCRA, the token
-- bucket and the sliding-window counter goes through here, so by induction a key's expiry is
-- always the grid second of its value, and KEEPTTL keeps exactly the expiry the new value needs.
-- (Under the policy that wrote it: see the README on policy changes.)
local function store(key, value, kept, sec)
    written[key] = value
    if sec == kept then
        call('SET', key, value, 'KEEPTTL')
    else
        call('SET', key, value, 'PXAT', pxat_text(sec))
    end
end

-- The bucket level, shared by token-bucket.lua (which stores it) and gcra.lua (which derives it
-- from the theoretical arrival time): s.level is the bucket's content in units of 1/W token, so
-- a full bucket is q * W and refilling q per W is exactly q units per microsecond.

local function level_wait(s, m)
    local need = m * s.W
    local level = s.level
    if level >= need then
        return 0
    end
    return ceil((need - level) / s.q)
end

local function level_remaining(s)
    return floor(s.level / s.W)
end

-- remaining and reset_ms in one step. The level is below q * W when r < q, so r + 1 units are
-- missing (r + 1) * W - level > 0, a wait of that over q microseconds; rounded up to the
-- millisecond, nested ceilings of whole numbers collapse into one division by q * 1000.
local function level_report(s)
    local level, W, q = s.level, s.W, s.q
    local r = floor(level / W)
    if r >= q then
        return q, 0
    end
    return r, ceil(((r + 1) * W - level) / (q * 1000))
end

-- alg.report, or the default built from alg.remaining and alg.wait: the reply's remaining and
-- reset_ms for one policy, where reset is the wait for one unit more than remains, in
-- milliseconds rounded up.
local function report_of(alg)
    if alg.report then
        return alg.report
    end
    local remaining, wait = alg.remaining, alg.wait
    return function(s)
        local r = remaining(s)
        if r >= s.q then
            return s.q, 0
        end
        return r, ceil(wait(s, r + 1) / 1000)
    end
end

-- The values of every key of the call, by index into KEYS, for an algorithm that sets alg.mget;
-- an empty table (every value nil) for the others, which read their keys themselves. unpack()
-- hands Lua at most about 8,000 values at once and a batch may have more keys (up to 4096 checks
-- of 8 policies), so a large batch is read in slices.
local function values_of(alg)
    if not alg.mget then
        return {}
    end
    local n, slice = #KEYS, 1000
    if n <= slice then
        return call('MGET', unpack(KEYS))
    end
    local values = {}
    for first = 1, n, slice do
        local last = first + slice - 1
        if last > n then
            last = n
        end
        local part = call('MGET', unpack(KEYS, first, last))
        for i = 1, last - first + 1 do
            values[first + i - 1] = part[i]
        end
    end
    return values
end

-- The decision of one check against the one policy s (P = 1): reads the key's value v into s,
-- charges the cost when it is allowed, and writes the check's 4 integers at out[n + 1 .. n + 4].
local function single_decider(alg)
    local load, wait, charge, report = alg.load, alg.wait, alg.charge, report_of(alg)
    return function(s, key, v, cost, out, n)
        load(s, key, v)
        local allowed, retry = 1, 0
        if cost > s.q then
            allowed, retry = 0, -1
        elseif cost > 0 then
            local w = wait(s, cost)
            if w > 0 then
                allowed, retry = 0, ceil(w / 1000)
            else
                charge(s, cost)
            end
        end
        local r, reset = report(s)
        out[n + 1] = allowed
        out[n + 2] = retry
        out[n + 3] = r
        out[n + 4] = reset
    end
end

-- rl_run for P = 1: decides the checks whose costs are ARGV[first..last] against the one policy
-- s (the check with cost ARGV[i] has key KEYS[i - first + 1]) and returns out, the reply, filled
-- with 4 integers per check. An algorithm with a faster way for some policies (alg.single) is
-- given the call first, with the decider above for the checks it leaves to the general way.
local function rl_run_single(alg, s, first, last, out)
    local decide = single_decider(alg)
    if alg.single and alg.single(s, first, last, out, decide) then
        return out
    end
    local values = values_of(alg)
    local n = 0
    for i = first, last do
        local k = i - first + 1
        local key = KEYS[k]
        decide(s, key, written[key] or values[k], tonumber(ARGV[i]), out, n)
        n = n + 4
    end
    return out
end

local function rl_run(alg)
    local P = tonumber(ARGV[1])
    local checks = #ARGV - 1 - 2 * P
    local t = call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local states = {}
    for j = 1, P do
        states[j] = {q = tonumber(ARGV[2 * j]), W = tonumber(ARGV[2 * j + 1]) * 1000000, now = now}
    end
    local out, n, k = {}, 0, 0
    if P == 1 then
        return rl_run_single(alg, states[1], 4, 3 + checks, out)
    end
    local load, wait, charge, report = alg.load, alg.wait, alg.charge, report_of(alg)
    local values = values_of(alg)
    for i = 1, checks do
        local cost = tonumber(ARGV[1 + 2 * P + i])
        local never, allowed = false, true
        for j = 1, P do
            local s = states[j]
            local key = KEYS[k + j]
            load(s, key, written[key] or values[k + j])
            if cost > s.q then
                never = true
            elseif allowed and cost > 0 and wait(s, cost) > 0 then
                -- A peek (cost 0) is always allowed. Waiting for 0 units can still be positive
                -- when a lowered quota leaves more in use than the new q (a log of 10 entries
                -- under q = 5), which must not turn a look into a denial.
                allowed = false
            end
        end
        k = k + P
        -- A check is all-or-nothing: one policy's denial means no policy is charged.
        local retry = 0
        if never then
            allowed = false
            retry = -1
        elseif not allowed then
            for j = 1, P do
                local w = wait(states[j], cost)
                if w > retry then
                    retry = w
                end
            end
            retry = ceil(retry / 1000)
        elseif cost > 0 then
            for j = 1, P do
                charge(states[j], cost)
            end
        end
        out[n + 1] = allowed and 1 or 0
        out[n + 2] = retry
        n = n + 2
        for j = 1, P do
            out[n + 1], out[n + 2] = report(states[j])
            n = n + 2
        end
    end
    return out
end

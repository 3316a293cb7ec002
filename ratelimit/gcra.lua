-- gcra.lua - the Generic Cell Rate Algorithm (follows rl-common.lua in the script sent to Redis).
--
-- GCRA comes from ATM networks (ATM Forum Traffic Management Specification 4.0, the "virtual
-- scheduling" form); Brandur Leach's "Rate Limiting, Cells, and GCRA" explains it for APIs. It
-- keeps a single value per key: the theoretical arrival time (TAT), the instant at which the
-- bucket would be full again. A request of cost c pushes the TAT c emission intervals (T = W / q)
-- later, and is allowed if the pushed TAT stays within one window of now. That is the token
-- bucket's contract exactly, with the level derived from the TAT rather than stored:
--   level = q * W - (TAT - now) * q      (in the token bucket's units of 1/W token)
-- so wait, remaining and report are the token bucket's, from rl-common.lua, on the derived level.
--
-- T is rarely a whole number of microseconds (3 s / 7), so the TAT is kept exactly, as whole
-- microseconds plus a remainder in units of 1/q microsecond.
--
-- Key: a string "<tat microseconds> <remainder>", or just "<tat microseconds>" when the remainder
-- is 0 (always, when T is a whole number of microseconds, as for 10 per second). It expires at
-- the end of the second in which its TAT falls (store() in rl-common.lua), after which the
-- bucket is full and the key is worth nothing.
--
-- Two ways to decide. The general one reads every key of a batch with one MGET (alg.mget) and
-- writes each charged key back with SET. The fast one (alg.single, at the end) serves the common
-- case of one policy whose T is a whole number of microseconds, with one INCRBY per check.

local alg = {mget = true}

function alg.load(s, key, v)
    local q, W = s.q, s.W
    s.key = key
    -- tonumber gives nil for the two-number form, which is then split.
    local tat, rem = v and tonumber(v), 0
    if v and not tat then
        local a, b = match(v, '^(%d+) (%d+)$')
        tat, rem = tonumber(a), tonumber(b)
    end
    if not tat then
        -- No key, or a value this script did not write: a full bucket, overwritten when charged.
        s.level, s.kept = q * W, nil
        return
    end
    -- After a quota change the remainder is reread in the new unit: under 1 us of error.
    if rem >= q then
        rem = q - 1
    end
    -- The stored TAT (at most 1 us more with its remainder) is what the key's expiry covers.
    s.kept = expiry_second(tat)
    local debt = (tat - s.now) * q + rem
    -- A TAT in the past is a full bucket; one beyond a (lowered) window is an empty one.
    if debt < 0 then
        debt = 0
    elseif debt > q * W then
        debt = q * W
    end
    s.level = q * W - debt
end

alg.wait, alg.remaining, alg.report = level_wait, level_remaining, level_report

function alg.charge(s, cost)
    local q = s.q
    local level = s.level - cost * s.W
    s.level = level
    local debt = q * s.W - level
    local us = floor(debt / q)
    local rem = debt - us * q
    -- When T is a whole number of microseconds, a remainder can only come from a value written
    -- under another policy. Round the TAT up instead (at most 1 us later, the cautious side), so
    -- that the key is a lone integer again and the next check takes the fast way.
    if rem > 0 and s.W % q == 0 then
        us, rem = us + 1, 0
    end
    -- The new TAT is us + rem / q microseconds from now: the key must last until then.
    local tat = s.now + us
    store(s.key, rem == 0 and format('%d', tat) or format('%d %d', tat, rem), s.kept,
          expiry_second(tat))
end

-- The fast way, for one policy whose emission interval T = W / q is a whole number of
-- microseconds (10 per second, 100 per minute, 1000 per day; not 7 per 3 seconds). The value is
-- then the TAT alone, a decimal integer, so Redis can do the arithmetic: INCRBY pushes the TAT by
-- cost * T and returns the pushed TAT as a number. For most checks that one command replaces the
-- general way's read, parse, format and write, and halves what a check costs Redis (README,
-- "Speed"). With old = pushed - cost * T, the TAT before the check:
--   old < now: the bucket is full (an idle key, or a new one: INCRBY counted from 0). The check
--     is allowed and the TAT becomes now + cost * T, written with SET.
--   pushed > now + W: denied. A second INCRBY takes the push back, so the value is as it was.
--   otherwise: allowed. When the push crossed into a new grid second, the key's expiry follows
--     (PEXPIREAT), which keeps store()'s rule: a key expires at the end of its TAT's second.
-- INCRBY on a missing key creates it without a TTL; the first case gives it one in the same
-- script, so no client ever sees it without. Three kinds of check take the general way, reading
-- the key with GET: peeks (cost 0) and costs above q, which must not write; values that are not a
-- lone integer (a TAT with a remainder written under another policy, or a value this script did
-- not write), on which INCRBY fails; and a TAT more than a window ahead (left by a policy since
-- lowered), which the general way clamps.

-- try: redis.pcall, which returns an error as a table instead of raising it.
local try, type = redis.pcall, type

function alg.single(s, first, last, out, decide)
    local q, W, now = s.q, s.W, s.now
    local T = W / q
    if T % 1 ~= 0 then
        return false
    end
    local horizon = now + W
    -- By cost text: the cost, and as text (see pxat_text on numbers) the push, the push taken
    -- back, and the value of a full bucket charged that cost.
    local costs, push, back, fresh = {}, {}, {}, {}
    local n = 0
    for i = first, last do
        local key, text = KEYS[i - first + 1], ARGV[i]
        local cost = costs[text]
        if not cost then
            cost = tonumber(text)
            costs[text] = cost
            push[text] = format('%d', cost * T)
            back[text] = format('%d', -cost * T)
            fresh[text] = format('%d', now + cost * T)
        end
        local inc = cost * T
        local pushed = cost > 0 and cost <= q and try('INCRBY', key, push[text])
        if type(pushed) ~= 'number' or pushed - inc > horizon then
            if type(pushed) == 'number' then
                call('INCRBY', key, back[text])
            end
            -- GET fails on a key of another type, which the general way overwrites like MGET.
            local v = try('GET', key)
            decide(s, key, type(v) == 'string' and v or nil, cost, out, n)
        else
            local old, allowed, retry = pushed - inc, 1, 0
            local tat = old
            if old < now then
                tat = now + inc
                store(key, fresh[text], expiry_second(old), expiry_second(tat))
            elseif pushed > horizon then
                call('INCRBY', key, back[text])
                allowed, retry = 0, ceil((pushed - horizon) / 1000)
            else
                tat = pushed
                local sec = expiry_second(tat)
                if sec ~= expiry_second(old) then
                    call('PEXPIREAT', key, pxat_text(sec))
                end
            end
            -- now <= tat <= now + W here, so the level needs no clamping.
            s.level = q * W - (tat - now) * q
            local r, reset = level_report(s)
            -- The check's 4 integers, as single_decider writes them (rl-common.lua). Written out
            -- rather than through a shared helper: a Lua call per check is 2.5% of Redis's
            -- instructions per check here (callgrind).
            out[n + 1] = allowed
            out[n + 2] = retry
            out[n + 3] = r
            out[n + 4] = reset
        end
        n = n + 4
    end
    return true
end

return rl_run(alg)

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
-- is 0 (always, when T is a whole number of microseconds, as for 10 per second), which saves
-- parsing two numbers. Being one string, every key of a batch is read with a single MGET
-- (alg.mget). It expires at the end of the second in which its TAT falls (store() in
-- rl-common.lua), after which the bucket is full and the key is worth nothing.

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
    -- The new TAT is us + rem / q microseconds from now: the key must last until then.
    local tat = s.now + us
    store(s.key, rem == 0 and format('%d', tat) or format('%d %d', tat, rem), s.kept,
          expiry_second(tat))
end

return rl_run(alg)

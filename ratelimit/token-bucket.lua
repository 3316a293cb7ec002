-- token-bucket.lua - the token bucket (follows rl-common.lua in the script sent to Redis).
--
-- A bucket holds up to q tokens and gains q tokens per window W, continuously; a check of cost c
-- takes c tokens if the bucket has them. Instead of fractional tokens, the level is kept in units
-- of 1/W of a token: a full bucket is q * W units and the refill is exactly q units per
-- microsecond, so no refill ever rounds.
--
-- Key: a string "<level> <t> <w> <e>": the level in units, the time it was measured (us), the W
-- it was measured in (us), and the grid second at whose end the key expires (store() in
-- rl-common.lua). The bucket is full again, and the key worth nothing, (q * W - level) / q
-- microseconds after t; that instant depends on q, which may have changed since the write, so
-- the value carries its own expiry second rather than have it recomputed. Being one string,
-- every key of a batch is read with a single MGET (alg.mget).

local alg = {mget = true}

function alg.load(s, key, v)
    local q, W = s.q, s.W
    local full = q * W
    s.key = key
    s.level = full
    s.kept = nil
    local level, at, w, e = four_numbers(v)
    if not level then
        return
    end
    s.kept = e
    -- A changed window keeps the whole tokens; a lowered quota clamps the bucket.
    if w ~= W then
        level = floor(level / w) * W
    end
    if level > full then
        level = full
    end
    -- The refill is q units per microsecond. A huge elapsed (a clock step) may make elapsed * q
    -- inexact, but it is then far above full and still clamps correctly.
    local elapsed = s.now - at
    if elapsed > 0 then
        level = level + elapsed * q
        if level > full then
            level = full
        end
    end
    s.level = level
end

alg.wait, alg.remaining, alg.report = level_wait, level_remaining, level_report

function alg.charge(s, cost)
    local q, W, now = s.q, s.W, s.now
    local level = s.level - cost * W
    s.level = level
    -- Full again (q * W - level) / q microseconds from now, rounded up to the microsecond.
    local e = expiry_second(now + ceil((q * W - level) / q))
    store(s.key, format('%d %d %d %d', level, now, W, e), s.kept, e)
end

return rl_run(alg)

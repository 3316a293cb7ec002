-- token-bucket.lua - the token bucket (follows rl-common.lua in the script sent to Redis).
--
-- A bucket holds up to q tokens and gains q tokens per window W, continuously; a check of cost c
-- takes c tokens if the bucket has them. Instead of fractional tokens, the level is kept in units
-- of 1/W of a token: a full bucket is q * W units and the refill is exactly q units per
-- microsecond, so no refill ever rounds.
--
-- Key: a hash {l = level in units, t = time of the level in microseconds, w = W the level was
-- measured in}; its TTL is the time until the bucket is full again, when the key is worth nothing.

local alg = {}

function alg.load(s, key)
    local q, W = s.q, s.W
    local full = q * W
    s.key = key
    s.level = full
    local h = call('HMGET', key, 'l', 't', 'w')
    if h[1] then
        local level, at, w = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
        -- A changed window keeps the whole tokens; a lowered quota clamps the bucket.
        if w ~= W then
            level = floor(level / w) * W
        end
        if level > full then
            level = full
        end
        -- The refill is q units per microsecond. A huge elapsed (a clock step) may make
        -- elapsed * q inexact, but it is then far above full and still clamps correctly.
        local elapsed = s.now - at
        if elapsed > 0 then
            level = level + elapsed * q
            if level > full then
                level = full
            end
        end
        s.level = level
    end
end

alg.wait, alg.remaining, alg.report = level_wait, level_remaining, level_report

function alg.charge(s, cost)
    local level = s.level - cost * s.W
    s.level = level
    call('HSET', s.key, 'l', format('%d', level), 't', format('%d', s.now), 'w', format('%d', s.W))
    -- The bucket is full again (and the key worthless) after (full - level) / q microseconds,
    -- which rounded up to the millisecond is ceil((full - level) / (q * 1000)): nested ceilings
    -- of whole numbers collapse into one.
    call('PEXPIRE', s.key, ceil((s.q * s.W - level) / (s.q * 1000)))
end

return rl_run(alg)

-- sliding-window-counter.lua - the approximate sliding window (follows rl-common.lua in the
-- script sent to Redis).
--
-- Cloudflare's "How we built rate limiting capable of scaling to millions of domains" (2017):
-- keep one counter per fixed window (aligned to multiples of W since the epoch) and estimate the
-- sliding window as the current window's count plus the previous window's count weighted by how
-- much of the previous window the sliding window still overlaps:
--   estimate = prev * (W - e) / W + cur          (e = time elapsed in the current window)
-- A check is allowed if estimate + cost <= q. It costs two counters per key whatever q is, but it
-- assumes the previous window's units were spread evenly: traffic bunched at the end of one
-- window lets up to about 2q through in the sliding window that straddles the edge (see the
-- README for the measured error). Both sides are multiplied by W so everything stays integral.
--
-- The wait for m units: first within the current window, as the previous window's weight decays
-- (possible when cur + m <= q and prev > 0); otherwise into the next window, where today's cur
-- becomes the previous count and decays in turn.
--
-- Key: a string "<i> <c> <p> <e>": the index of the current window, its count, the previous
-- window's count, and the second at whose end the key expires (store() in rl-common.lua): the
-- end of the next window, after which both counts are worth nothing. Every check within one
-- window keeps that expiry. Being one string, every key of a batch is read with a single MGET
-- (alg.mget).

local alg = {mget = true}

function alg.load(s, key, v)
    local W = s.W
    local index = floor(s.now / W)
    s.key, s.index, s.e, s.cur, s.prev, s.kept = key, index, s.now - index * W, 0, 0, nil
    local stored, c, p, e = four_numbers(v)
    if not stored then
        return
    end
    s.kept = e
    -- A stored window ahead of now (Redis's clock stepped back) is kept, to stay safe.
    if stored >= index then
        s.cur, s.prev = c, p
    elseif stored == index - 1 then
        s.prev = c
    end
end

function alg.wait(s, m)
    local q, W, e = s.q, s.W, s.e
    if s.prev * (W - e) + (s.cur + m) * W <= q * W then
        return 0
    end
    if s.cur + m <= q and s.prev > 0 then
        local at = W - floor((q - s.cur - m) * W / s.prev)
        if at < W then
            return at - e
        end
    end
    local at = 0
    if s.cur > 0 then
        at = W - floor((q - m) * W / s.cur)
        if at < 0 then
            at = 0
        end
    end
    return W - e + at
end

function alg.remaining(s)
    local r = floor((s.q * s.W - s.prev * (s.W - s.e)) / s.W) - s.cur
    return r > 0 and r or 0
end

function alg.charge(s, cost)
    s.cur = s.cur + cost
    -- Both counts matter until the next window ends, at (index + 2) * W: the last microsecond
    -- that matters is the one before.
    local e = expiry_second((s.index + 2) * s.W - 1)
    store(s.key, format('%d %d %d %d', s.index, s.cur, s.prev, e), s.kept, e)
end

return rl_run(alg)

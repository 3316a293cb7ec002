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
-- Key: a hash {i = index of the current window, c = its count, p = the previous window's count};
-- its TTL runs to the end of the next window, after which both counts are worth nothing.

local alg = {}

function alg.load(s, key)
    local W = s.W
    local index = floor(s.now / W)
    s.key, s.index, s.e, s.cur, s.prev = key, index, s.now - index * W, 0, 0
    local h = call('HMGET', key, 'i', 'c', 'p')
    if h[1] then
        local stored = tonumber(h[1])
        -- A stored window ahead of now (Redis's clock stepped back) is kept, to stay safe.
        if stored >= index then
            s.cur, s.prev = tonumber(h[2]), tonumber(h[3])
        elseif stored == index - 1 then
            s.prev = tonumber(h[2])
        end
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
    call('HSET', s.key, 'i', s.index, 'c', s.cur, 'p', s.prev)
    -- Both counts are worth nothing once the next window has ended.
    call('PEXPIRE', s.key, ceil(((s.index + 2) * s.W - s.now) / 1000))
end

return rl_run(alg)

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
-- Key "<prefix>{<key>}:<policy>:swc2": a string holding one decimal integer,
--   tag * 10^14 + p * 10^7 + c
-- where tag is the current window's index modulo 10, c its count and p the previous window's
-- count (so window ...3 with p = 8 and c = 2 reads 300000080000002). The key expires at the end of
-- the next window, after which both counts are worth nothing (store()'s grid in rl-common.lua),
-- so a value is never more than two windows old and the tag's one digit tells the current window
-- from the previous one. Counts fit in 7 digits when q < 5 * 10^6 (c <= q, and the fast way adds
-- a cost of at most q before it checks), and the value stays below 10^15, inside the integers a
-- Lua double holds exactly. Larger quotas, or counts left by one, are written as the string
-- "<i> <c> <p> <e>" instead (the window index, the counts, and the expiry second), which the fast
-- way hands to the general one. Being one string either way, every key of a batch is read with a
-- single MGET (alg.mget). The "2" of the tag is the layout's version: the earlier layout ("swc",
-- always the four numbers) is never read by this one (DESIGN.md, contract 11).
--
-- Two ways to decide, as for GCRA. The general one reads every key of a batch with one MGET and
-- writes each charged key back with SET. The fast one (alg.single, at the end) serves a single
-- policy with q < 5 * 10^6 with one INCRBY per check for most checks.

local alg = {mget = true}
local TAG, COUNT, COUNTS = 100000000000000, 10000000, 1000000000000000

-- Both counts are decimal fields of the integer form when they fit.
local function fits(s)
    return s.q * 2 < COUNT and s.cur < COUNT and s.prev < COUNT
end

function alg.load(s, key, v)
    local W = s.W
    local index = floor(s.now / W)
    s.key, s.index, s.e, s.cur, s.prev, s.kept = key, index, s.now - index * W, 0, 0, nil
    local stored, c, p, e = four_numbers(v)
    if not stored then
        local n = v and match(v, '^%d+$') and tonumber(v)
        if not n or n >= COUNTS then
            return
        end
        -- The integer form: its tag names the current window or the previous one; any other tag
        -- is a value this script did not write, read as no key.
        local tag = (n - n % TAG) / TAG
        if tag == index % 10 then
            stored = index
        elseif tag == (index - 1) % 10 then
            stored = index - 1
        else
            return
        end
        c, p = n % COUNT, (n % TAG - n % COUNT) / COUNT
        e = expiry_second((stored + 2) * W - 1)
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
    local value
    if fits(s) then
        value = format('%d', (s.index % 10) * TAG + s.prev * COUNT + s.cur)
    else
        value = format('%d %d %d %d', s.index, s.cur, s.prev, e)
    end
    store(s.key, value, s.kept, e)
end

-- The fast way, for one policy with q < 5 * 10^6. INCRBY adds the cost to the stored value, that
-- is to the current window's count, and returns the sum; b = sum - cost is the value before:
--   b holds the current window's tag (and is not the bare tag, which this script never writes):
--     the counts are b's; allowed if the estimate with the cost stays within q, and then the
--     INCRBY was the whole write (the key keeps the expiry it got when the window began);
--     otherwise denied, and a second INCRBY takes the cost back.
--   b is any other value below 10^15: the previous window's counts (its c becomes p), or 0 for a
--     key that did not exist (INCRBY counted from 0 and created it without a TTL), or another
--     tag, read as no key. A new window: if the check is allowed, SET writes the new counts with
--     the next window's end as expiry, in the same script, so no client ever sees the key
--     without a TTL; if not, the push is taken back, leaving the previous window's value.
--   otherwise (a negative or larger integer, not ours): the push is taken back and the general
--     way decides, reading the key with GET.
-- Peeks (cost 0), which must not write, and values that are not integers (the four-number form,
-- a foreign value), on which INCRBY fails, take the general way too.
local try, type = redis.pcall, type

function alg.single(s, first, last, out, decide)
    local q, W, now = s.q, s.W, s.now
    if q * 2 >= COUNT then
        return false
    end
    local index = floor(now / W)
    local e = now - index * W
    local tag = index % 10
    local base, before = tag * TAG, (index - 1) % 10
    local sec = expiry_second((index + 2) * W - 1)
    local report = report_of(alg)
    local n = 0
    for i = first, last do
        local key, text = KEYS[i - first + 1], ARGV[i]
        local cost = tonumber(text)
        local pushed = cost > 0 and try('INCRBY', key, text)
        local b = type(pushed) == 'number' and pushed - cost
        if not b or b < 0 or b >= COUNTS then
            if b then
                call('DECRBY', key, text)
            end
            local v = try('GET', key)
            decide(s, key, type(v) == 'string' and v or nil, cost, out, n)
        else
            local t = (b - b % TAG) / TAG
            local c, p
            if t == tag and b ~= base then
                c, p = b % COUNT, (b % TAG - b % COUNT) / COUNT
            else
                c, p = 0, t == before and b % COUNT or 0
            end
            s.index, s.e, s.cur, s.prev = index, e, c, p
            local allowed, retry = 1, 0
            if p * (W - e) + (c + cost) * W <= q * W then
                s.cur = c + cost
                if c == 0 then
                    call('SET', key, format('%d', base + p * COUNT + cost), 'PXAT', pxat_text(sec))
                end
            else
                call('DECRBY', key, text)
                allowed, retry = 0, ceil(alg.wait(s, cost) / 1000)
            end
            local r, reset = report(s)
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

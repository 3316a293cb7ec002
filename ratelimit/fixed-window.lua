-- fixed-window.lua - the fixed window counter (follows rl-common.lua in the script sent to Redis).
--
-- The simplest limiter there is, and the one most answers start with (Envoy's global rate limit
-- service keeps one counter per key and time unit the same way): time is cut into windows of W
-- aligned to the epoch, window i being [i * W, (i + 1) * W) of Redis time, and each key counts
-- the units admitted in the current window. A check is allowed if count + cost <= q; the count
-- starts again from 0 when the window ends. One integer per key, one INCRBY per check.
--
-- The price is the edge: the windows are fixed, not sliding, so q units at the end of one window
-- and q more at the start of the next are all admitted, 2q within a moment (measured by the test
-- fixed_window_admits_2q_across_an_edge, beside the sliding-window log's 0). A denied client
-- waits until the window ends, however little it asks for.
--
-- Key: a string holding one decimal integer, tag * 10^11 + count, where tag is the window's
-- index modulo 10^4 (so 4321 windows into the cycle with a count of 7 reads 432100000000007). A
-- count never exceeds 2q <= 1.8e10 < 10^11 (q * w <= 9e9, ratelimit.h), and the whole value stays
-- below 10^15, inside the integers a Lua double holds exactly. The key expires when its window
-- ends (a whole second, as W is whole seconds: store()'s grid in rl-common.lua), so a value
-- never outlives its window by more than an instant; the tag tells the current window's count
-- from a previous one's all the same, without trusting the moment Redis expires the key. A value
-- that is not such an integer (written by something else) reads as no key and is overwritten on
-- the next charge. After a policy change that alters W, a stored count reads as another
-- window's, so the new policy starts from an empty window.
--
-- Two ways to decide, as for GCRA. The general one reads every key of a batch with one MGET
-- (alg.mget) and writes each charged key back with SET. The fast one (alg.single, at the end)
-- serves every check of a single policy that is not a peek with one INCRBY.

local alg = {mget = true}
local SPAN, TAGS = 100000000000, 10000

-- The window of now: its tag, its end (microseconds) and the value of its empty count.
local function window(s)
    local W, now = s.W, s.now
    local index = (now - now % W) / W
    local tag = index % TAGS
    return tag, (index + 1) * W, tag * SPAN
end

function alg.load(s, key, v)
    local tag, ends, base = window(s)
    s.key, s.ends, s.base, s.count, s.kept = key, ends, base, 0, nil
    local n = v and match(v, '^%d+$') and tonumber(v)
    if n and n < TAGS * SPAN and n - n % SPAN == base then
        -- The current window's count; its key expires at the window's end.
        s.count, s.kept = n - base, ends / 1000000
    end
end

function alg.wait(s, m)
    if s.count + m <= s.q then
        return 0
    end
    return s.ends - s.now
end

function alg.report(s)
    local q, count = s.q, s.count
    if count == 0 then
        return q, 0
    end
    return count < q and q - count or 0, ceil((s.ends - s.now) / 1000)
end

function alg.remaining(s)
    return s.count < s.q and s.q - s.count or 0
end

function alg.charge(s, cost)
    s.count = s.count + cost
    store(s.key, format('%d', s.base + s.count), s.kept, s.ends / 1000000)
end

-- The fast way, for one policy: INCRBY adds the cost to the stored value and returns the sum, and
-- b = sum - cost is the value before the check:
--   b holds the current window's tag and a count c > 0: allowed if c + cost <= q, and then the
--     INCRBY was the whole write (the key keeps the expiry it got when the window began);
--     otherwise denied, and a second INCRBY takes the cost back.
--   b is any other value below 10^15: another window's count, or 0 for a key that did not exist
--     (INCRBY counted from 0, and created the key without a TTL), or a count of 0, which this
--     script never writes. A new window, so the check is allowed; SET writes tag + cost with the
--     window's end as expiry, in the same script, so no client ever sees the key without a TTL.
--   otherwise (a negative or larger integer, not ours): the push is taken back and the general
--     way decides, reading the key with GET.
-- Peeks (cost 0), which must not write, and values that are not integers, on which INCRBY fails,
-- take the general way too.
local try, type = redis.pcall, type

function alg.single(s, first, last, out, decide)
    local q = s.q
    local _, ends, base = window(s)
    local sec = ends / 1000000
    local reset = ceil((ends - s.now) / 1000)
    local limit = TAGS * SPAN
    -- The value of a new window charged a cost, as text (see pxat_text in rl-common.lua on
    -- numbers handed to redis.call), and the push taken back, by cost text.
    local fresh, back = {}, {}
    local n = 0
    for i = first, last do
        local key, text = KEYS[i - first + 1], ARGV[i]
        local cost = tonumber(text)
        local pushed = cost > 0 and try('INCRBY', key, text)
        local b = type(pushed) == 'number' and pushed - cost
        if not b or b < 0 or b >= limit then
            if b then
                call('DECRBY', key, text)
            end
            local v = try('GET', key)
            decide(s, key, type(v) == 'string' and v or nil, cost, out, n)
        else
            local count = b - base
            local allowed, retry, r = 1, 0, 0
            if count <= 0 or count >= SPAN then
                local f = fresh[text]
                if not f then
                    f = format('%d', base + cost)
                    fresh[text] = f
                end
                call('SET', key, f, 'PXAT', pxat_text(sec))
                r = q - cost
            elseif count + cost <= q then
                r = q - count - cost
            else
                call('DECRBY', key, text)
                allowed, retry = 0, reset
                r = count < q and q - count or 0
            end
            -- The check's 4 integers, written out as gcra.lua's fast way does.
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

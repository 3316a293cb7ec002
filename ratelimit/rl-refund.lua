-- rl-refund.lua - gives units back to the keys of one check: the refund for a check that Redis
-- charged after the library had already refused it (its reply came after the deadline; see
-- guard.c). It is its own script, not part of an algorithm's: it runs rarely, and only knows
-- the algorithms' key formats, which their files describe.
--
--   KEYS   the check's state keys, one per policy
--   ARGV   the algorithm's tag (tb2, gcra, swl, swc2, fw), the cost, P, q_j and w_j per policy,
--          then R: Redis made the charge at most R ms ago (the check started R ms ago)
--
-- Returns the number of keys changed. A key that has expired meanwhile needs nothing: its
-- state is already full. An unknown tag changes nothing (an algorithm this file does not know
-- yet keeps the charge: the quota shrinks, it is never exceeded).

local tag, cost, P = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local R = tonumber(ARGV[4 + 2 * P])
local floor, format, match = math.floor, string.format, string.match
local changed = 0
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)

-- Takes cost from the count held in the low digits (below span) of an integer value. The
-- windowed counters may give back only within the window that was charged: when the current
-- one began less than R ms ago the charge may sit in the previous window, and taking it from
-- this one would let this window pass q, so the charge stays (the quota shrinks, never grows).
local function refund_count(key, v, span, W_ms)
    local n = tonumber(v)
    if not n or now_ms % W_ms < R then
        return 0
    end
    local c = n % span
    local back = c < cost and c or cost
    redis.call('SET', key, format('%d', n - back), 'KEEPTTL')
    return 1
end

for j = 1, P do
    local key, q, W = KEYS[j], tonumber(ARGV[2 + 2 * j]), tonumber(ARGV[3 + 2 * j]) * 1000000
    if tag == 'swl' then
        -- The log's newest entries are the ones this charge wrote (or later ones: same count).
        if redis.call('EXISTS', key) == 1 then
            redis.call('ZPOPMAX', key, cost)
            changed = changed + 1
        end
    else
        local v = redis.call('GET', key)
        if v then
            if tag == 'fw' then
                -- tag * 10^11 + count (fixed-window.lua).
                changed = changed + refund_count(key, v, 100000000000, W / 1000)
            elseif tag == 'swc2' and tonumber(v) then
                -- tag * 10^14 + p * 10^7 + c: the charge went into c (sliding-window-counter.lua).
                changed = changed + refund_count(key, v, 10000000, W / 1000)
            elseif tag == 'gcra' or tag == 'tb2' then
                -- The token bucket keeps GCRA's state (token-bucket.lua): the instant it is full.
                -- "<tat>" or "<tat> <rem>": the TAT in us plus rem / q; a unit is W / q us.
                local tat, rem = tonumber(v), 0
                if not tat then
                    local a, b = match(v, '^(%d+) (%d+)$')
                    tat, rem = tonumber(a), tonumber(b)
                end
                if tat then
                    local total = tat * q + rem - cost * W
                    tat = floor(total / q)
                    rem = total - tat * q
                    redis.call('SET', key, rem == 0 and format('%d', tat) or
                                   format('%d %d', tat, rem), 'PXAT',
                               format('%d', ((tat - tat % 1000000) / 1000000 + 1) * 1000))
                    changed = changed + 1
                end
            elseif tag == 'swc2' then
                -- Large quotas keep "<i> <c> <p> <e>": the charge went into the count c of window i.
                local i, c, p, e = match(v, '^(%d+) (%d+) (%d+) (%d+)$')
                if i and now_ms % (W / 1000) >= R then
                    c = tonumber(c) - cost
                    if c < 0 then
                        c = 0
                    end
                    redis.call('SET', key, format('%s %d %s %s', i, c, p, e), 'KEEPTTL')
                    changed = changed + 1
                end
            end
        end
    end
end
return changed

-- rl-refund.lua - gives units back to the keys of one check: the refund for a check that Redis
-- charged after the library had already refused it (its reply came after the deadline; see
-- guard.c). It is its own script, not part of an algorithm's: it runs rarely, and only knows
-- the algorithms' key formats, which their files describe.
--
--   KEYS   the check's state keys, one per policy
--   ARGV   the algorithm's tag (tb, gcra, swl, swc), the cost, P, then q_j and w_j per policy
--
-- Returns the number of keys changed. A key that has expired meanwhile needs nothing: its
-- state is already full. An unknown tag changes nothing (an algorithm this file does not know
-- yet keeps the charge: the quota shrinks, it is never exceeded).

local tag, cost, P = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local floor, format, match = math.floor, string.format, string.match
local changed = 0

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
            if tag == 'tb' then
                -- "<level> <t> <w> <e>": the level is in units of 1/w token.
                local level, t, w, e = match(v, '^(%d+) (%d+) (%d+) (%d+)$')
                if level then
                    level, w = tonumber(level) + cost * tonumber(w), tonumber(w)
                    if level > q * w then
                        level = q * w
                    end
                    redis.call('SET', key, format('%d %s %d %s', level, t, w, e), 'KEEPTTL')
                    changed = changed + 1
                end
            elseif tag == 'gcra' then
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
            elseif tag == 'swc' then
                -- "<i> <c> <p> <e>": the charge went into the count c of window i.
                local i, c, p, e = match(v, '^(%d+) (%d+) (%d+) (%d+)$')
                if i then
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

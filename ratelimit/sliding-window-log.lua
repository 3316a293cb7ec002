-- sliding-window-log.lua - the exact sliding window (follows rl-common.lua in the script sent to
-- Redis).
--
-- Every admitted unit is logged with its time; a check counts the entries of the last W
-- microseconds, the window (now - W, now], and is allowed if count + cost <= q. Nothing is
-- approximated, so no window of W seconds ever holds more than q units, whatever the traffic and
-- wherever the window is placed. The price is memory: up to q entries per key.
--
-- Entries at or before now - W are trimmed on every check. The wait for m units is the time
-- until enough of the oldest entries leave the window: the (count + m - q)-th oldest entry leaves
-- it exactly W after it was logged.
--
-- Key: a sorted set, member "<time>-<n>" (n makes members logged in the same microsecond
-- distinct: the count only grows within one microsecond), score the time in microseconds; its TTL
-- is W, since an entry older than that counts for nothing.

local alg = {}

function alg.load(s, key)
    s.key = key
    call('ZREMRANGEBYSCORE', key, '-inf', format('%d', s.now - s.W))
    s.n = call('ZCARD', key)
end

function alg.wait(s, m)
    local k = s.n + m - s.q
    if k <= 0 then
        return 0
    end
    local e = call('ZRANGE', s.key, k - 1, k - 1, 'WITHSCORES')
    return tonumber(e[2]) + s.W - s.now
end

function alg.remaining(s)
    return s.n < s.q and s.q - s.n or 0
end

-- Large costs are logged in slices: Lua limits how many arguments one call may take. A cost is
-- at most q, which the library caps at 10,000 for this algorithm (RL_LOG_MAX_QUOTA): one check
-- writes at most that many entries while Redis serves nobody else.
function alg.charge(s, cost)
    local stamp = format('%d', s.now)
    local done = 0
    while done < cost do
        local args = {}
        local slice = math.min(cost - done, 1000)
        for i = 1, slice do
            args[2 * i - 1] = stamp
            args[2 * i] = stamp .. '-' .. format('%d', s.n + done + i)
        end
        call('ZADD', s.key, unpack(args))
        done = done + slice
    end
    s.n = s.n + cost
    -- The newest entry leaves the window after W: then the key is worth nothing.
    call('PEXPIRE', s.key, ceil(s.W / 1000))
end

return rl_run(alg)

-- jq-reap.lua - one bounded round of housekeeping (jq_reap; reserve does the same first).
--
-- Returns {0, promoted, reclaimed, buried, next}: next as in jq-reserve.lua.

local promoted, reclaimed, buried = housekeep(BATCH)
return {0, promoted, reclaimed, buried, next_event()}

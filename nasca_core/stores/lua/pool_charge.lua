-- pool_charge: add a settled call's cost to a pool's windows, once per hold id (SettleOp.pools).
-- Runs before the user's settle, in the same pipeline: a settle retried or replayed after either
-- ran finds its id marked here and charges nothing twice (safe to run twice). The check is on
-- ARGV 8 alone (the settle's own id), as settle.lua's: both parts of a settle skip or charge alike.
-- The cost is also taken off the chunk the call was drawn on (floored at 0; a chunk dropped or
-- never there: nothing), so a chunk's hold is what was admitted against it and not yet spent.
-- KEYS: 1 charged-holds zset (hold ids scored by when they may be forgotten, epoch ms),
--       2 day counter, 3 week counter, 4 month counter (nanos spent),
--       5 chunks hash (lease id -> nanos held)
-- ARGV: 1 now ms, 2 cost nanos, 3..5 day, week, month counter TTL ms, 6 marker expiry epoch ms,
--       7 the chunk's lease id ("" = none), 8.. the settle's hold id and those of its ``of``
--       (a fold's constituents)
-- Returns 1 charged, 0 skipped (the settle's id was charged before).
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local seen = redis.call('ZSCORE', KEYS[1], ARGV[8])
if seen and tonumber(seen) > now then return 0 end
for i = 2, 4 do
  redis.call('INCRBY', KEYS[i], ARGV[2])
  -- Only lengthened: a counter must outlive its window, whichever settle set it first.
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[i + 1]) then redis.call('PEXPIRE', KEYS[i], ARGV[i + 1]) end
end
if ARGV[7] ~= '' then
  local held = redis.call('HGET', KEYS[5], ARGV[7])
  -- '%d': a double's default format would write 1e+15 for a large amount.
  if held then redis.call('HSET', KEYS[5], ARGV[7], string.format('%d', math.max(0, tonumber(held) - tonumber(ARGV[2])))) end
end
local marker = tonumber(ARGV[6])
local marks = {}
for i = 8, #ARGV do marks[#marks + 1] = ARGV[6]; marks[#marks + 1] = ARGV[i] end
redis.call('ZADD', KEYS[1], unpack(marks))
if redis.call('PTTL', KEYS[1]) < marker - now then redis.call('PEXPIRE', KEYS[1], 2 * (marker - now)) end
return 1

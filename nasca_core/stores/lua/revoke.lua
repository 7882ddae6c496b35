-- revoke: take back what remains of one credit lot (a refund), or cap it (a partial refund);
-- idempotent either way.
-- KEYS: 1 credit lots hash
-- ARGV: 1 lot id, 2 keep: -1 = take all that remains and mark the lot revoked; else the
--       nanos the lot may keep at most (what remains above it is taken)
-- Returns the nanos revoked now (0 when the lot is unknown, spent, revoked or under the cap).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local lot = cjson.decode(raw)
if lot.r == 0 and lot.v == 1 then return 0 end
local keep = tonumber(ARGV[2])
local taken
if keep < 0 then
  taken = lot.r
  lot.r = 0
  lot.v = 1
else
  taken = lot.r - keep
  if taken <= 0 then return 0 end
  lot.r = keep
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(lot))
return taken

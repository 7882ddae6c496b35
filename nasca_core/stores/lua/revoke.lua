-- revoke: take back what remains of one credit lot (a refund); idempotent.
-- KEYS: 1 credit lots hash
-- ARGV: 1 lot id
-- Returns the nanos revoked (0 when the lot is unknown, spent or already revoked).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local lot = cjson.decode(raw)
local taken = lot.r
if taken == 0 and lot.v == 1 then return 0 end
lot.r = 0
lot.v = 1
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(lot))
return taken

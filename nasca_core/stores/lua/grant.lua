-- grant: add a credit lot once; a lot id seen before is a no-op (exactly-once grants).
-- KEYS: 1 meta hash, 2 credit lots hash
-- ARGV: 1 lot id, 2 lot JSON {p: paid (nanos of its currency), cur, g: granted nanos,
--       r: remaining nanos, x: expiry ms (0 = never), pk: pack id, t: created ms}
-- Returns 1 when granted, 0 when the lot already existed.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local lot = cjson.decode(ARGV[2])
lot.q = redis.call('HINCRBY', KEYS[1], 'lotseq', 1)
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(lot))
return 1

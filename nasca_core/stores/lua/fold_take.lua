-- fold_take: the first step of folding a forgotten user's month into the deleted users' row
-- (``_user_data``): tag the month hash with a token once (a retried delete finds the same
-- token, so ``fold_add`` adds the month once) and read it. Safe to run twice.
-- KEYS: 1 the user's ledger month hash
-- ARGV: 1 a fresh random token (kept only when the hash has none yet)
-- Returns {token, PTTL ms, field, value, ...} (nanos and counts as on the hash); {} when it is gone
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSETNX', KEYS[1], 'fold', ARGV[1])
local out = {redis.call('HGET', KEYS[1], 'fold'), redis.call('PTTL', KEYS[1])}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out

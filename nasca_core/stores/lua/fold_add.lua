-- fold_add: add a forgotten user's month (read by ``fold_take``) to the deleted users' month
-- hash, once per token: a retried delete adds nothing twice. Safe to run twice.
-- KEYS: 1 the deleted users' ledger month hash
-- ARGV: 1 the token fold_take returned, 2 the user's month TTL ms (<= 0: none),
--       3.. field, value pairs (nanos, calls, tokens) to add
-- Returns 1 when added, 0 when this token's month was added before
if redis.call('HSETNX', KEYS[1], 'f:' .. ARGV[1], 1) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1

-- pool_snapshot: a pool's spend and its live chunks (lapsed ones purged first, as a take does).
-- KEYS: 1 chunks zset (lease id scored by expiry ms), 2 chunks hash (lease id -> nanos),
--       3 day counter, 4 week counter, 5 month counter (nanos spent)
-- ARGV: 1 now ms
-- Returns {spent d, spent w, spent m, nanos held by the live chunks}
pool_purge(KEYS[1], KEYS[2], tonumber(ARGV[1]))
local spent = {tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[4]) or '0'),
               tonumber(redis.call('GET', KEYS[5]) or '0')}
return {spent[1], spent[2], spent[3], pool_held(KEYS[2])}

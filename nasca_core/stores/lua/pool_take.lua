-- pool_take: take a chunk of a pool (nasca_core/stores/_pools.py): a hold on the pool granted
-- only while spent + held + chunk <= limit in every window. Safe to run twice: a lease id that
-- holds a live chunk answers that chunk again, writing nothing.
-- KEYS: 1 chunks zset (lease id scored by expiry ms), 2 chunks hash (lease id -> nanos),
--       3 day counter, 4 week counter, 5 month counter (nanos spent)
-- ARGV: 1 now ms, 2 lease id, 3 want nanos, 4 least nanos (0 < least <= want, checked in
--       Python), 5..7 limits d, w, m nanos (-1 = none), 8 the chunk's expiry, epoch ms
-- Returns {granted nanos (0 = refused: nothing written), blocking window 1..3 (0 = none),
--          spent d, spent w, spent m, nanos held by the live chunks after this take}
local now = tonumber(ARGV[1])
local lease = ARGV[2]
pool_purge(KEYS[1], KEYS[2], now)
local spent = {tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[4]) or '0'),
               tonumber(redis.call('GET', KEYS[5]) or '0')}
local held = pool_held(KEYS[2])
local mine = redis.call('HGET', KEYS[2], lease)
if mine then return {tonumber(mine), 0, spent[1], spent[2], spent[3], held} end
local want, least = tonumber(ARGV[3]), tonumber(ARGV[4])
local room, window = -1, 0
for i = 1, 3 do
  local limit = tonumber(ARGV[4 + i])
  if limit >= 0 and (room < 0 or limit - spent[i] - held < room) then
    room, window = math.max(0, limit - spent[i] - held), i
  end
end
local granted = want
if room >= 0 then
  if room < least then return {0, window, spent[1], spent[2], spent[3], held} end
  granted = math.min(want, room)
end
local expiry = tonumber(ARGV[8])
redis.call('ZADD', KEYS[1], expiry, lease)
redis.call('HSET', KEYS[2], lease, string.format('%d', granted))
-- The keys outlive their last chunk (read by score, so a longer life only collects them later);
-- relative to ARGV 1, as every TTL here: the server's clock may differ from the caller's.
if redis.call('PTTL', KEYS[1]) < expiry - now then
  redis.call('PEXPIRE', KEYS[1], 2 * (expiry - now))
  redis.call('PEXPIRE', KEYS[2], 2 * (expiry - now))
end
return {granted, 0, spent[1], spent[2], spent[3], held + granted}

-- settle: replace a hold by the call's real cost on every window, drawing credits for the excess.
-- KEYS: 1 meta hash, 2 holds zset, 3 day counter, 4 week counter, 5 month hash, 6 credit lots hash,
--       7 settled-holds zset (hold ids scored by when they may be forgotten: dedupes retried settles),
--       8 sum of the live holds
-- ARGV: 1 now ms, 2 hold id, 3 hold estimate nanos, 4 real cost nanos, 5 requested tier,
--       6 tiers JSON, 7 day TTL ms, 8 week TTL ms, 9 month TTL ms, 10 settled-marker expiry ms,
--       11 input tokens, 12 output tokens (counted on the month hash for reports),
--       13..19 the requested tier compiled: limits d, w, m (-1 = none), hard flags d, w, m,
--       in-flight cap (unused here)
-- Returns {status (1 applied, 2 already settled), tier-funded nanos (cost - credit-funded), credit-funded nanos,
--          spent d, spent w, spent m}
-- A hold that expired (or never reached the store) is still charged: spend is never dropped.
local now = tonumber(ARGV[1])
local id = ARGV[2]
if redis.call('ZSCORE', KEYS[7], id) then return {2, 0, 0, 0, 0, 0} end
drop_hold(KEYS[2], KEYS[8], id .. ':' .. ARGV[3])
local cost = tonumber(ARGV[4])
local _, tier = resolve_tier(KEYS[1], ARGV[5], ARGV[6], 13)
local limits, hard = tier.l, tier.h
local spent = spent_of(KEYS[3], KEYS[4], KEYS[5])
local room = nil
for i = 1, 3 do
  if limits[i] ~= -1 and hard[i] == 0 then
    local left = math.max(0, limits[i] - spent[i])
    if room == nil or left < room then room = left end
  end
end
local tier_part = cost
if room ~= nil and room < cost then tier_part = room end
local credit_part = 0
if cost > tier_part then
  local need = cost - tier_part
  local lots = live_lots(KEYS[6], now)
  for k = 1, #lots do
    if need <= 0 then break end
    local lot = lots[k][2]
    local take = math.min(lot.r, need)
    lot.r = lot.r - take
    need = need - take
    credit_part = credit_part + take
    redis.call('HSET', KEYS[6], lots[k][1], cjson.encode(lot))
  end
end
local charges = {}
for i = 1, 3 do
  if hard[i] == 1 and limits[i] ~= -1 then charges[i] = cost else charges[i] = cost - credit_part end
end
local d = redis.call('INCRBY', KEYS[3], string.format('%d', charges[1]))
redis.call('PEXPIRE', KEYS[3], ARGV[7])
local w = redis.call('INCRBY', KEYS[4], string.format('%d', charges[2]))
redis.call('PEXPIRE', KEYS[4], ARGV[8])
local m = redis.call('HINCRBY', KEYS[5], 's', string.format('%d', charges[3]))
redis.call('HINCRBY', KEYS[5], 'c', ARGV[4])
if credit_part > 0 then redis.call('HINCRBY', KEYS[5], 'k', string.format('%d', credit_part)) end
redis.call('HINCRBY', KEYS[5], 'n', 1)
if ARGV[11] ~= '0' then redis.call('HINCRBY', KEYS[5], 'ti', ARGV[11]) end
if ARGV[12] ~= '0' then redis.call('HINCRBY', KEYS[5], 'to', ARGV[12]) end
redis.call('PEXPIRE', KEYS[5], ARGV[9])
local marker = tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
redis.call('ZADD', KEYS[7], marker, id)
redis.call('PEXPIRE', KEYS[7], marker - now)
return {1, cost - credit_part, credit_part, d, w, m}

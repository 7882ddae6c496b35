-- settle: replace a hold by the call's real cost on every window, drawing credits for the excess.
-- KEYS: 1 meta hash, 2 holds zset, 3 day counter, 4 week counter, 5 month hash, 6 credit lots hash,
--       7 settled-holds zset (hold ids scored by when they may be forgotten: dedupes retried settles),
--       8 sum of the live holds
-- ARGV: 1 now ms, 2 hold id, 3 hold estimate nanos, 4 real cost nanos, 5 requested tier,
--       6 tiers JSON, 7 day TTL ms, 8 week TTL ms, 9 month TTL ms, 10 settled-marker expiry ms,
--       11 input tokens, 12 output tokens (counted on the month hash for reports),
--       13 one ms before the call was reserved, epoch ms (a boost whose until is later counts:
--       _effective, SettleOp.boosts_at),
--       14..19 the requested tier compiled: limits d, w, m (-1 = none), hard flags d, w, m,
--       20 model calls this settle counts in the month's call count 'n' (SettleOp.calls: a
--       folded settle of a lease's calls counts them all, a lease's closing settle 0); missing
--       = 1, so a caller that omits it for one call (or predates it) counts one. (resolve_tier
--       reads ARGV 20 as the in-flight cap, which a settle never uses.)
--       21.. a folded settle's constituents' hold ids (SettleOp.of, at most _fold.MAX_OF = 1024:
--       unpack's stack takes 8000): each marked settled with ARGV 10, in the same step as the
--       fold's own id, so a later settle of one under its own id is a retry (status 2); none =
--       only ARGV 2 is marked. The check above the charge is on ARGV 2 alone (the fold's id).
-- Returns {status (1 applied, 2 already settled), tier-funded nanos (cost - credit-funded), credit-funded nanos,
--          spent d, spent w, spent m (each window's counter after this call, in the window it
--          landed in), limit d, w, m in force (-1 = none; 0s and -1s when already settled)}
-- A hold that expired (or never reached the store) is still charged: spend is never dropped.
local now = tonumber(ARGV[1])
local id = ARGV[2]
-- A marker counts until its score (a lapsed one may linger until the purge below).
local seen = redis.call('ZSCORE', KEYS[7], id)
if seen and tonumber(seen) > now then return {2, 0, 0, 0, 0, 0} end
drop_hold(KEYS[2], KEYS[8], id .. ':' .. ARGV[3])
local cost = tonumber(ARGV[4])
local calls = tonumber(ARGV[20] or '1')
local _, tier, stored = resolve_tier(KEYS[1], ARGV[5], ARGV[6], 14, tonumber(ARGV[13]))
local limits, hard = tier.l, tier.h
-- One read of each counter: whether it exists yet decides whether its expiry is set below.
local raw_d, raw_w = redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4])
local month = redis.call('HMGET', KEYS[5], 's', 'c', 'k', 'n', 'ti', 'to')
local spent = {tonumber(raw_d or '0'), tonumber(raw_w or '0'), tonumber(month[1] or '0')}
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
-- A counter's TTL ends at its window's end plus grace (a fixed instant), so it is set once,
-- by the settle that creates the counter, not on every call. (No local functions here: each
-- one is a closure built on every run.)
local fmt = string.format
local d, w = charges[1], charges[2]
if raw_d then d = redis.call('INCRBY', KEYS[3], fmt('%d', d)) else redis.call('SET', KEYS[3], fmt('%d', d), 'PX', ARGV[7]) end
if raw_w then w = redis.call('INCRBY', KEYS[4], fmt('%d', w)) else redis.call('SET', KEYS[4], fmt('%d', w), 'PX', ARGV[8]) end
-- The month hash's fields in one write (read above); numbers stay exact below 2^53.
local m = spent[3] + charges[3]
redis.call('HSET', KEYS[5], 's', fmt('%d', m), 'c', fmt('%d', tonumber(month[2] or '0') + cost),
           'k', fmt('%d', tonumber(month[3] or '0') + credit_part), 'n', fmt('%d', tonumber(month[4] or '0') + calls),
           'ti', fmt('%d', tonumber(month[5] or '0') + tonumber(ARGV[11])),
           'to', fmt('%d', tonumber(month[6] or '0') + tonumber(ARGV[12])),
           'r', stored ~= ARGV[5] and ARGV[5] or '')  -- r: the call's tier unless stored (get_usage's)
if not month[4] then redis.call('PEXPIRE', KEYS[5], ARGV[9]) end
-- Markers: lapsed ones purged on every settle (by score: the key holds one marker lifetime of
-- settles), the key's expiry extended with slack once per lifetime rather than per call.
local marker = tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
if #ARGV > 20 then
  local marks = {ARGV[10], id}
  for i = 21, #ARGV do marks[#marks + 1] = ARGV[10]; marks[#marks + 1] = ARGV[i] end
  redis.call('ZADD', KEYS[7], unpack(marks))
else
  redis.call('ZADD', KEYS[7], marker, id)
end
if redis.call('PTTL', KEYS[7]) < marker - now then redis.call('PEXPIRE', KEYS[7], 2 * (marker - now)) end
return {1, cost - credit_part, credit_part, d, w, m, limits[1], limits[2], limits[3]}

-- subscription: record one Stripe subscription event for a user and derive the user's tier.
-- Units: times are epoch seconds (Stripe's `created`); no money here.
-- KEYS: 1 the user's subscriptions hash (field = subscription id), 2 the user's meta hash
-- ARGV: 1 subscription id, 2 event created, 3 event id, 4 active 0|1, 5 plan tier,
--       6 subscription created, 7 final 0|1 (the subscription was deleted), 8 grace start:
--       '' = keep the record's, 0 = none (paid again), else the first failed payment (the
--       record keeps the earliest, g), 9 the grace in seconds (a failing subscription is
--       active only while event created < g + grace). Mirrors _billing_rules.subscription_step.
-- A subscription's record is replaced only by an event created no earlier than the one it
-- holds, or by its deletion (final whatever its time), and never after the deletion: late or
-- out-of-order deliveries can't revive a plan.
-- The user's stored tier is the tier of the active subscription started last; when none is
-- active the stored tier is cleared.
-- Returns {status (1 applied, 0 stale, 2 this event was applied before), tier now ('' = none)}
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local s = cjson.decode(raw)
  if s.i == ARGV[3] then return {2, redis.call('HGET', KEYS[2], 'tier') or ''} end
  if s.d == 1 or (ARGV[7] ~= '1' and s.e > tonumber(ARGV[2])) then
    return {0, redis.call('HGET', KEYS[2], 'tier') or ''}
  end
end
local began = 0
if raw then began = cjson.decode(raw).g or 0 end
local from = tonumber(ARGV[8])
if from then
  if began > 0 and from > 0 then began = math.min(began, from) else began = from end
end
local active = tonumber(ARGV[4])
if from and from > 0 and tonumber(ARGV[2]) >= began + tonumber(ARGV[9]) then active = 0 end
local record = {
  e = tonumber(ARGV[2]), i = ARGV[3], a = active, t = ARGV[5],
  c = tonumber(ARGV[6]), d = tonumber(ARGV[7]),
}
if began > 0 then record.g = began end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
local best, best_c, best_id = nil, nil, nil
local all = redis.call('HGETALL', KEYS[1])
for k = 1, #all, 2 do
  local s = cjson.decode(all[k + 1])
  if s.a == 1 and (best_c == nil or s.c > best_c or (s.c == best_c and all[k] > best_id)) then
    best, best_c, best_id = s.t, s.c, all[k]
  end
end
if best then redis.call('HSET', KEYS[2], 'tier', best) else redis.call('HDEL', KEYS[2], 'tier') end
return {1, best or ''}

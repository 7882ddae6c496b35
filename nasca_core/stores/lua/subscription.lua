-- subscription: record one Stripe subscription event for a user and derive the user's tier.
-- Units: times are epoch seconds (Stripe's `created`); no money here.
-- KEYS: 1 the user's subscriptions hash (field = subscription id), 2 the user's meta hash,
--       3, 4 (optional) the month counters (hash, s = spent nanos) of the calendar month now and
--       of ARGV[15]'s cycle's window holding now
-- ARGV: 1 subscription id, 2 event created, 3 event id, 4 active 0|1, 5 plan tier,
--       6 subscription created, 7 final 0|1 (the subscription was deleted), 8 grace start:
--       '' = keep the record's, 0 = none (paid again), else the first failed payment (the
--       record keeps the earliest, g), 9 the grace in seconds (a failing subscription is
--       active only while event created < g + grace), 10 the subscription's billing-cycle anchor
--       (epoch s; 0 = its plan doesn't anchor; '' = keep the record's, n, and leave the spec),
--       11 1 when 12 is the anchor spec the caller read (0: leave the spec), 13, 14 the start
--       and end (epoch s) of the billing-cycle window in force then (0, 0: none; the end moved to
--       a boundary of ARGV[15]'s cycle: _windows.cycle_end), 15 the anchor 14 and KEYS 3, 4 were
--       made for. Mirrors _billing_rules.subscription_step, stale_spec, new_anchor, recut,
--       carried and anchor_spec.
-- A subscription's record is replaced only by an event created no earlier than the one it
-- holds, or by its deletion (final whatever its time), and never after the deletion: late or
-- out-of-order deliveries can't revive a plan.
-- The user's stored tier is the tier of the active subscription started last; when none is
-- active the stored tier is cleared. The meta hash's anchor spec (an, "start,end,next") takes
-- that subscription's anchor as next, keeping the window in force; at once ("0,0,next") only
-- when no billing-cycle window is in force, the first window's spent raised to the calendar
-- month's (KEYS 3, 4). The spec is only changed while it is the one the caller read (the
-- window in force needs the timezone, which the caller has), and the next anchor is ARGV[15].
-- Returns {status (1 applied, 0 stale, 2 this event was applied before, -3 the spec is not the
-- one read, -4 the next anchor is not ARGV[15]: nothing written), tier now ('' = none)[, with
-- -4 the next anchor]}
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local s = cjson.decode(raw)
  if s.i == ARGV[3] then return {2, redis.call('HGET', KEYS[2], 'tier') or ''} end
  if s.d == 1 or (ARGV[7] ~= '1' and s.e > tonumber(ARGV[2])) then
    return {0, redis.call('HGET', KEYS[2], 'tier') or ''}
  end
end
local spec = redis.call('HGET', KEYS[2], 'an') or ''
local cas = ARGV[10] ~= '' and ARGV[11] == '1'
if cas and spec ~= ARGV[12] then return {-3, redis.call('HGET', KEYS[2], 'tier') or ''} end
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
local anchor = tonumber(ARGV[10] or '')
if anchor == nil then
  anchor = 0
  if raw then anchor = cjson.decode(raw).n or 0 end
end
if anchor ~= 0 then record.n = anchor end
local best, best_c, best_id, best_n = nil, nil, nil, 0
local function consider(id, s)
  if s.a == 1 and (best_c == nil or s.c > best_c or (s.c == best_c and id > best_id)) then
    best, best_c, best_id, best_n = s.t, s.c, id, s.n or 0
  end
end
consider(ARGV[1], record)
local all = redis.call('HGETALL', KEYS[1])
for k = 1, #all, 2 do
  if all[k] ~= ARGV[1] then consider(all[k], cjson.decode(all[k + 1])) end
end
local nxt = tonumber(string.match(spec, '(%d+)$') or '0')
local moves = cas and best_n ~= nxt and (best_n ~= 0 or tonumber(ARGV[14]) ~= 0)
if moves and best_n ~= tonumber(ARGV[15]) then
  return {-4, redis.call('HGET', KEYS[2], 'tier') or '', best_n}
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
if best then redis.call('HSET', KEYS[2], 'tier', best) else redis.call('HDEL', KEYS[2], 'tier') end
if moves and tonumber(ARGV[14]) ~= 0 then
  redis.call('HSET', KEYS[2], 'an', string.format('%d,%d,%d', tonumber(ARGV[13]), tonumber(ARGV[14]), best_n))
elseif moves then
  redis.call('HSET', KEYS[2], 'an', string.format('0,0,%d', best_n))
  local old = KEYS[3] and redis.call('HGET', KEYS[3], 's')
  if old and tonumber(old) > 0 then
    local fresh = redis.call('EXISTS', KEYS[4]) == 0
    if tonumber(old) > tonumber(redis.call('HGET', KEYS[4], 's') or '0') then
      redis.call('HSET', KEYS[4], 's', old)  -- raised, not added: safe to run twice
    end
    local ttl = redis.call('PTTL', KEYS[3])
    if fresh and ttl > 0 then redis.call('PEXPIRE', KEYS[4], ttl) end
  end
end
return {1, best or ''}

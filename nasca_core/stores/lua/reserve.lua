-- reserve: admit a call and hold its estimated cost, or say which window blocks it.
-- KEYS: 1 meta hash, 2 holds zset, 3 day counter, 4 week counter, 5 month hash,
--       6 credit lots hash, 7 sum of the live holds, [8 config version] (standalone only)
-- ARGV: 1 now ms, 2 hold member "<id>:<estimate>", 3 estimate nanos, 4 hold expiry ms,
--       5 strict 0|1, 6 requested tier, 7 tiers JSON {name: {l: [d,w,m], h: [d,w,m]}},
--       8 config version the caller holds ('' = don't check),
--       9..15 the requested tier compiled: limits d, w, m (-1 = none), hard flags d, w, m,
--       in-flight cap (-1 = none), 16..18 this process's deferred settles of the user: count,
--       their holds' nanos, their costs' nanos (counted as spend, not as holds in flight),
--       19 the call's uncapped ceiling nanos (cap_output; 0 = none): credits are read for the room
--       when the allowance left is below it, 20 the user's anchor spec the caller named the keys
--       with ('' = calendar months; _windows.anchored_month)
-- Safe to run twice: a hold id already held is admitted again without holding twice.
-- Returns {status (1 admitted, 0 blocked, 2 busy: the in-flight cap, -1 stale config, -2 stale
--          anchor: then the second value is the stored spec), tier, blocking window (0 = none),
--          spent d, spent w, spent m, held (incl. this hold when admitted), credit balance (-1 = not read),
--          room: what the user may spend beside the other holds, as _policy.room (-1 = no limit / blocked),
--          admitted only: what was applied, as ARGV[9..15] (the user's own limits and boosts counted)}
if KEYS[8] and ARGV[8] ~= '' and (redis.call('GET', KEYS[8]) or '0') ~= ARGV[8] then
  return {-1, '', 0, 0, 0, 0, 0, -1}
end
local now = tonumber(ARGV[1])
local est = tonumber(ARGV[3])
local strict = ARGV[5] == '1'
local name, tier, _, anchor = resolve_tier(KEYS[1], ARGV[6], ARGV[7], 9, now)
-- Before anything is written (held_total below purges expired holds): keys named from a
-- stale anchor are the wrong month's.
if anchor ~= (ARGV[20] or '') then return {-2, anchor, 0, 0, 0, 0, 0, -1} end
local held = held_total(KEYS[2], KEYS[7], now)
local spent = spent_of(KEYS[3], KEYS[4], KEYS[5])
local owed_n, owed_held, owed_cost = tonumber(ARGV[16] or '0'), tonumber(ARGV[17] or '0'), tonumber(ARGV[18] or '0')
if owed_n > 0 or owed_held > 0 or owed_cost > 0 then  -- as _policy.own_view
  for i = 1, 3 do spent[i] = spent[i] + owed_cost end
  held = math.max(held - owed_held, 0)
end
local function room(credits)  -- as _policy.room
  local left = -1
  for i = 1, 3 do
    if tier.l[i] ~= -1 then
      local r = tier.l[i] - spent[i] - held
      if credits > 0 and tier.h[i] == 0 then r = r + credits end
      if r < 0 then r = 0 end
      if left == -1 or r < left then left = r end
    end
  end
  return left
end
local function room_of(credits)  -- as _policy.room_of: credits read when the ceiling needs them
  local left, ceiling = room(credits), tonumber(ARGV[19] or '0')
  if credits == -1 and ceiling > 0 and left >= 0 and left < ceiling then
    credits = balance_of(live_lots(KEYS[6], now))
    left = room(credits)
  end
  return left, credits
end
-- The same hold id reserved again (a client retry after a lost reply) holds once; its room
-- is the first reply's (credits read as room_of does).
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  held = held - est
  local left, credits = room_of(-1)
  return {1, name, 0, spent[1], spent[2], spent[3], held + est, credits, left,
          tier.l[1], tier.l[2], tier.l[3], tier.h[1], tier.h[2], tier.h[3], tier.f}
end
-- The in-flight cap: held_total has just purged the expired holds, so ZCARD counts live ones.
if tier.f >= 0 and redis.call('ZCARD', KEYS[2]) - owed_n >= tier.f then
  return {2, name, 0, spent[1], spent[2], spent[3], held, -1}
end
local extra = strict and est or 0
local deficit, worst = nil, 0
for i = 3, 1, -1 do
  local limit = tier.l[i]
  if limit ~= -1 then
    local need = spent[i] + held + extra - limit
    local fits
    if strict then fits = need <= 0 else fits = need < 0 end
    if not fits then
      if tier.h[i] == 1 then return {0, name, i, spent[1], spent[2], spent[3], held, -1} end
      if deficit == nil or need > deficit then deficit, worst = need, i end
    end
  end
end
local credits = -1
if deficit ~= nil then
  credits = balance_of(live_lots(KEYS[6], now))
  local covered
  if strict then covered = deficit <= credits else covered = deficit < credits end
  if not covered then return {0, name, worst, spent[1], spent[2], spent[3], held, credits} end
end
add_hold(KEYS[2], KEYS[7], ARGV[2], ARGV[3], tonumber(ARGV[4]), now)
local left
left, credits = room_of(credits)
return {1, name, 0, spent[1], spent[2], spent[3], held + est, credits, left,
          tier.l[1], tier.l[2], tier.l[3], tier.h[1], tier.h[2], tier.h[3], tier.f}

-- Shared helpers, prepended to every script at load time (see stores/_scripts.py).
-- Units: every amount is an integer of nano-dollars (1e-9 USD); times are epoch ms.
-- A Lua number is a double: integers up to 2^53 nano-dollars ($9M) are exact.
-- Windows are indexed 1 = daily, 2 = weekly, 3 = monthly; NO_LIMIT = -1.
-- These rules mirror nasca_core/_policy.py line for line.

local function held_total(hkey, now)
  -- Holds are zset members "<hold id>:<amount>" scored by expiry; only live holds remain.
  redis.call('ZREMRANGEBYSCORE', hkey, '-inf', now)
  local members = redis.call('ZRANGE', hkey, 0, -1)
  local total = 0
  for i = 1, #members do
    total = total + tonumber(string.match(members[i], ':(%d+)$'))
  end
  return total
end

local function spent_of(dkey, wkey, mkey)
  return {
    tonumber(redis.call('GET', dkey) or '0'),
    tonumber(redis.call('GET', wkey) or '0'),
    tonumber(redis.call('HGET', mkey, 's') or '0'),
  }
end

local function live_lots(ckey, now)
  -- Lots with credit left and not expired, oldest first: {id, lot table}.
  local out = {}
  if redis.call('EXISTS', ckey) == 0 then return out end
  local raw = redis.call('HGETALL', ckey)
  for i = 1, #raw, 2 do
    local lot = cjson.decode(raw[i + 1])
    if lot.r > 0 and (lot.x == 0 or lot.x > now) then out[#out + 1] = {raw[i], lot} end
  end
  table.sort(out, function(a, b) return a[2].q < b[2].q end)
  return out
end

local function balance_of(lots)
  local b = 0
  for i = 1, #lots do b = b + lots[i][2].r end
  return b
end

local function resolve_tier(meta, requested, cfg_json, base)
  -- A tier stored for the user (set_user_tier, a subscription) beats the caller's. The
  -- caller's tier comes pre-compiled in ARGV[base .. base+5] (limits d, w, m; hard d, w, m),
  -- so the tiers JSON is decoded only for users with a stored tier.
  local name = redis.call('HGET', meta, 'tier')
  if name and name ~= requested then
    local cfg = cjson.decode(cfg_json)
    if cfg[name] then return name, cfg[name] end
  end
  local a = tonumber
  return requested, {l = {a(ARGV[base]), a(ARGV[base + 1]), a(ARGV[base + 2])},
                     h = {a(ARGV[base + 3]), a(ARGV[base + 4]), a(ARGV[base + 5])}}
end

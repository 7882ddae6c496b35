-- Shared helpers, prepended to every script at load time (see stores/_scripts.py).
-- Units: every amount is an integer of nano-dollars (1e-9 USD); times are epoch ms.
-- A Lua number is a double: integers up to 2^53 nano-dollars ($9M) are exact in arithmetic,
-- but cjson and tostring write numbers with 14 significant digits, so an amount a script
-- stores stays exact only below 10^14 nanos ($100,000): lots and call costs are capped there
-- in Python (_money.MAX_OP_NANOS) before any script runs.
-- Windows are indexed 1 = daily, 2 = weekly, 3 = monthly; NO_LIMIT = -1.
-- These rules mirror nasca_core/_policy.py line for line.

local function amount_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local function held_total(hkey, skey, now)
  -- Holds are zset members "<hold id>:<amount>" scored by expiry; skey keeps their sum, so
  -- a reserve costs O(expired holds), not O(live holds), however many calls are in flight.
  local raw = redis.call('GET', skey)
  local total = 0
  if raw then
    total = tonumber(raw)
    local expired = redis.call('ZRANGEBYSCORE', hkey, '-inf', now)
    if #expired > 0 then
      for i = 1, #expired do total = total - amount_of(expired[i]) end
      if total < 0 then total = 0 end
      redis.call('ZREMRANGEBYSCORE', hkey, '-inf', now)
      redis.call('SET', skey, string.format('%d', total), 'KEEPTTL')
    end
  else
    -- No sum (it expired with the holds, or predates it): rebuild it from the live holds.
    redis.call('ZREMRANGEBYSCORE', hkey, '-inf', now)
    local members = redis.call('ZRANGE', hkey, 0, -1)
    for i = 1, #members do total = total + amount_of(members[i]) end
    local ttl = redis.call('PTTL', hkey)
    if ttl > 0 then redis.call('SET', skey, string.format('%d', total), 'PX', ttl) end
  end
  return total
end

local function add_hold(hkey, skey, member, amount, expiry, now)
  -- NX and the count guard the running sum: a member added twice is summed once.
  if redis.call('ZADD', hkey, 'NX', expiry, member) == 1 then redis.call('INCRBY', skey, amount) end
  -- The keys' expiry only collects a user who stopped calling (live holds are read by score),
  -- so it is extended with slack, once per hold lifetime rather than per call. Both keys get
  -- the same expiry: a sum that outlived its holds would count holds that are gone.
  local ttl = expiry - now
  if redis.call('PTTL', hkey) < ttl then
    redis.call('PEXPIRE', hkey, 2 * ttl)
    redis.call('PEXPIRE', skey, 2 * ttl)
  end
end

local function drop_hold(hkey, skey, member)
  if redis.call('ZREM', hkey, member) == 1 then
    redis.call('DECRBY', skey, amount_of(member))
  end
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

local function resolve_tier(meta, requested, cfg_json, base, now)
  -- As nasca_core/stores/_effective.resolve. A tier stored for the user (set_user_tier, a
  -- subscription) beats the caller's. The caller's tier comes pre-compiled in ARGV[base ..
  -- base+6] (limits d, w, m; hard d, w, m; in-flight cap, -1 = none), so the tiers JSON is
  -- decoded only for users with a stored tier. Then the user's own limits ('lim', compiled
  -- JSON) replace the tier's limits, hard flags and cap, and each boost in force ('bo': JSON
  -- [[id, window 0..2, nanos, until ms]], until > now) adds to its window's limit when it has
  -- one; a settle passes its call's reserve time as now (a boost that admitted a call pays for it). The same HMGET reads all three. The third value is the stored tier (false = none),
  -- the fourth the user's billing-cycle anchor spec ('' = none: the reserve's stale check).
  local got = redis.call('HMGET', meta, 'tier', 'lim', 'bo', 'an')
  local name, out, tier = got[1], requested, nil
  if name and name ~= requested then
    local cfg = cjson.decode(cfg_json)
    if cfg[name] then
      out, tier = name, cfg[name]
      tier.f = tier.f or -1
    end
  end
  if not tier then
    local a = tonumber
    tier = {l = {a(ARGV[base]), a(ARGV[base + 1]), a(ARGV[base + 2])},
            h = {a(ARGV[base + 3]), a(ARGV[base + 4]), a(ARGV[base + 5])},
            f = a(ARGV[base + 6] or '-1')}
  end
  if got[2] then
    local o = cjson.decode(got[2])
    tier.l, tier.h, tier.f = o.l, o.h, o.f or tier.f  -- no 'f': the tier's cap
  end
  if got[3] then
    local boosts = cjson.decode(got[3])
    for k = 1, #boosts do
      local b = boosts[k]
      local w = b[2] + 1
      -- Capped at _money.MAX_NANOS (2^53): above it a double is no longer exact.
      if b[4] > now and tier.l[w] ~= -1 then tier.l[w] = math.min(tier.l[w] + b[3], 9007199254740992) end
    end
  end
  return out, tier, name, got[4] or ''
end

local function pool_purge(zkey, hkey, now)
  -- A pool's chunks: lease ids in zkey scored by expiry, their nanos in hkey. A lapsed chunk
  -- (its process died) is dropped from both before anything is counted.
  local lapsed = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  if #lapsed > 0 then
    redis.call('HDEL', hkey, unpack(lapsed))
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
  end
end

local function pool_held(hkey)
  -- Summed, not kept as a running sum: a pool holds one chunk or two per process, not per call.
  local total = 0
  local amounts = redis.call('HVALS', hkey)
  for i = 1, #amounts do total = total + tonumber(amounts[i]) end
  return total
end

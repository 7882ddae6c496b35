-- snapshot: read a user's state for get_usage (writes nothing but the purge of expired holds).
-- KEYS: 1 meta hash, 2 holds zset, 3 day counter, 4 week counter, 5 month hash, 6 credit lots hash,
--       7 sum of the live holds
-- ARGV: 1 now ms
-- Returns {stored tier ('' = none), held nanos, spent d, spent w, spent m,
--          month cost, month credit-funded, month calls, JSON array of live lots oldest first,
--          month input tokens, month output tokens, the caller's tier of the month's last settle ('' = none),
--          the user's own limits (compiled JSON, '' = none), their boosts (JSON, '' = none: _effective),
--          their billing-cycle anchor spec ('' = calendar months: _windows.anchored_month)}
local now = tonumber(ARGV[1])
local held = held_total(KEYS[2], KEYS[7], now)
local spent = spent_of(KEYS[3], KEYS[4], KEYS[5])
local month = redis.call('HMGET', KEYS[5], 'c', 'k', 'n', 'ti', 'to', 'r')
local lots = live_lots(KEYS[6], now)
local out = {}
for i = 1, #lots do out[i] = lots[i][2] end
local lots_json = '[]'
if #out > 0 then lots_json = cjson.encode(out) end
local meta = redis.call('HMGET', KEYS[1], 'tier', 'lim', 'bo', 'an')
return {meta[1] or '', held, spent[1], spent[2], spent[3],
        tonumber(month[1] or '0'), tonumber(month[2] or '0'), tonumber(month[3] or '0'), lots_json,
        tonumber(month[4] or '0'), tonumber(month[5] or '0'), month[6] or '', meta[2] or '', meta[3] or '',
        meta[4] or ''}

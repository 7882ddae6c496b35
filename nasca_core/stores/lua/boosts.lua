-- boosts: add one boost to a user's boosts, or end those of a window now, as
-- nasca_core/stores/_effective.changed (the memory and SQLite stores' rule).
-- KEYS: 1 meta hash (field 'bo': JSON [[id, window 0..2, nanos, until ms], ...])
-- ARGV: 1 now ms, 2 the boost's id ('' = add none), 3 its window 0..2, 4 its nanos,
--       5 its end, epoch ms, 6 the window to clear (0..2, 3 = all, '' = none), 7 at most this many
--       in force, 8 how long an ended boost is kept (ms), 9 at most this many ended ones kept
-- Safe to run twice: a boost whose id is there (in force or ended) is not added again.
-- Returns {1 changed | 0 refused (would be more than ARGV[7] in force), JSON of the boosts kept,
--          1 if the boost was added | 0}
-- Amounts are written with %d, not cjson.encode (which keeps only 14 significant digits).
local now = tonumber(ARGV[1])
local raw = redis.call('HGET', KEYS[1], 'bo')
local kept, seen, live = {}, false, 0
local clear = ARGV[6] ~= '' and tonumber(ARGV[6]) or nil
if raw then
  local all = cjson.decode(raw)
  for k = 1, #all do
    local b = all[k]
    if b[4] + tonumber(ARGV[8]) > now then
      if b[4] > now and clear ~= nil and (clear == 3 or b[2] == clear) then b[4] = now end
      if b[4] > now then live = live + 1 end
      kept[#kept + 1] = b
      if b[1] == ARGV[2] then seen = true end
    end
  end
end
local function text(list)
  local parts = {}
  for k = 1, #list do
    local b = list[k]
    parts[#parts + 1] = string.format('[%s,%d,%d,%d]', cjson.encode(b[1]), b[2], b[3], b[4])
  end
  return '[' .. table.concat(parts, ',') .. ']'
end
local added = 0
if ARGV[2] ~= '' and not seen then
  if live >= tonumber(ARGV[7]) then return {0, text(kept), 0} end
  kept[#kept + 1] = {ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
  added = 1
end
-- At most ARGV[9] ended boosts: the earliest ended go first (a stable order on ties, as Python's sort).
local ended = {}
for k = 1, #kept do if kept[k][4] <= now then ended[#ended + 1] = k end end
local drop = #ended - tonumber(ARGV[9])
if drop > 0 then
  table.sort(ended, function(a, b)
    if kept[a][4] ~= kept[b][4] then return kept[a][4] < kept[b][4] end
    return a < b
  end)
  local gone = {}
  for k = 1, drop do gone[ended[k]] = true end
  local rest = {}
  for k = 1, #kept do if not gone[k] then rest[#rest + 1] = kept[k] end end
  kept = rest
end
if #kept == 0 then redis.call('HDEL', KEYS[1], 'bo') else redis.call('HSET', KEYS[1], 'bo', text(kept)) end
return {1, text(kept), added}

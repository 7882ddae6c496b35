-- revoke_to: raise what refunds and disputes took back of one credit lot to a target (never
-- above what is left to take); with restore, lower it to the target too (a dispute won), but
-- never below the lot's floor (fl: the refunds' share, or all of it after an owner's revoke).
-- The running total lives in the lot (tk), so two refunds of one lot applied at the same
-- moment can't both take their share: each raises it to its own target, the highest wins.
-- Safe to run twice: a second run finds the lot at its target and changes nothing.
-- Mirrors stores/_billing_rules.py taken_to line for line.
-- KEYS: 1 credit lots hash
-- ARGV: 1 lot id, 2 target: nanos taken back in all (at or above the lot's grant: the whole
--       lot, marked revoked), 3 restore: 1 = the target may be below what was taken,
--       4 floor: nanos no restore gives back (the lot keeps the highest, at most the lot)
-- Returns the nanos taken now (negative: given back; 0 for an unknown lot).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local lot = cjson.decode(raw)
local taken = lot.tk or 0
local target = tonumber(ARGV[2])
local whole = taken + lot.r
local kept = math.max(lot.fl or 0, math.min(math.max(tonumber(ARGV[4] or '0'), 0), whole))
local new = math.max(math.min(math.max(target, 0), whole), kept)
if new < taken and ARGV[3] ~= '1' then new = taken end
lot.r = lot.r - (new - taken)
lot.tk = new
lot.fl = kept
if target >= lot.g then
  lot.v = 1
elseif ARGV[3] == '1' and kept < whole then
  lot.v = nil
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(lot))
return new - taken

-- tally: a counter over a fixed window that starts at its first count (the login throttle).
-- KEYS: 1 the counter
-- ARGV: 1 add (0 = read only), 2 the window in ms
-- Returns {the count, ms until the window ends (0 when nothing is counted)}. A retried call
-- counts twice: for a throttle that errs towards refusing, which is the safe side.
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local add = tonumber(ARGV[1])
if add > 0 then
  n = redis.call('INCRBY', KEYS[1], add)
  if n == add then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
if n == 0 then return {0, 0} end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then  -- a counter without its expiry (an interrupted write): give it one
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  left = tonumber(ARGV[2])
end
return {n, left}

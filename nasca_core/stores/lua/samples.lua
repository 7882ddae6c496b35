-- samples: add a batch of calibration observations to a model's capped list of recent ones
-- and read the list back, in one step (no process's batch is lost to another's).
-- KEYS: 1 the list of observations, 2 the count of every observation added, 3 the batch's marker
--       (all in the namespace's calibration slot, none in a user's)
-- ARGV: 1 how many observations to keep, 2 the statistics' TTL ms, 3 the marker's TTL ms,
--       4.. observations "<counted prompt>:<reported input>:<output>" (tokens; none = only read)
-- Safe to run twice: a batch whose marker exists is not added again.
-- Returns {count, the kept observations oldest first}
if #ARGV > 3 and redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
  redis.call('INCRBY', KEYS[2], #ARGV - 3)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('LRANGE', KEYS[1], 0, -1)}

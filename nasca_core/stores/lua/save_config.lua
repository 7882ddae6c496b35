-- save_config: set (or delete) one config entry and bump the version every process checks.
-- KEYS: 1 config hash, 2 config version counter
-- ARGV: 1 field "<section>\0<name>", 2 '1' to set / '0' to delete, 3 JSON text
-- Returns the new version.
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[2])

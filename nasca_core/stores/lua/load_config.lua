-- load_config: the owner-editable config and its version, read together.
-- KEYS: 1 config hash (fields "<section>\0<name>" -> JSON text), 2 config version counter
-- ARGV: none
-- Returns {version, flat list of field, value, ...}
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HGETALL', KEYS[1])}

-- pool_release: drop a chunk's hold on a pool. Idempotent: an unknown or lapsed lease id is a no-op.
-- KEYS: 1 chunks zset (lease id scored by expiry ms), 2 chunks hash (lease id -> nanos)
-- ARGV: 1 lease id
-- Returns 1 when a chunk was dropped, else 0.
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])

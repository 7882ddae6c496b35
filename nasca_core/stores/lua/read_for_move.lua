-- read_for_move: a key's DUMP and its TTL, read in one step (``nasca migrate``): a key that
-- expired between two separate reads would come back with no expiry at all. Reads only.
-- KEYS: 1 the key to move
-- ARGV: none
-- Returns {DUMP payload or false, PTTL ms (-1 none, -2 gone)}
return {redis.call('DUMP', KEYS[1]), redis.call('PTTL', KEYS[1])}

-- release: drop a call's hold (the call failed before it cost anything).
-- KEYS: 1 holds zset, 2 sum of the live holds
-- ARGV: 1 hold member "<id>:<estimate nanos>"
-- Returns nothing.
drop_hold(KEYS[1], KEYS[2], ARGV[1])
return 0

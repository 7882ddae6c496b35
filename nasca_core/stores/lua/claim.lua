-- claim: a first-time marker that a retried claim still wins (Store.claim_marker with a token).
-- KEYS: 1 the marker
-- ARGV: 1 the claimant's token (a text), 2 the marker's life in ms
-- Returns 1 when the marker is this token's (set now, or by this token's earlier try whose
-- reply was lost), else 0. Safe to run twice: the second run finds its own token.
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0

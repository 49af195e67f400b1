-- Advance the phase only if nobody changed it since it was read (two watchdogs, or an operator).
-- KEYS: run. ARGV: expected phase, new phase.
if redis.call('HGET', KEYS[1], 'phase') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[2])
return 1

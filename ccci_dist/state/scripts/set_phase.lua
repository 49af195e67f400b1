-- Set the phase only if nobody changed it since it was read (two watchdogs, or an operator).
-- KEYS: run. ARGV: expected phase, new phase, target phase to clear ('' or absent = keep).
if (redis.call('HGET', KEYS[1], 'phase') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[2])
if ARGV[3] and ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'target_phase') == ARGV[3] then
  redis.call('HSET', KEYS[1], 'target_phase', '')
end
return 1

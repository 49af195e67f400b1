-- Apply a watchdog tick's phase decision only if the run is still as the tick read it: each field
-- the decision was made from (phase, target, machine docs, plan) still has the SHA-1 digest it had.
-- A start, an `enqueue phase` or a finished iteration's new docs since the read make the decision
-- stale: nothing is written and the next tick decides again from what it reads then.
-- KEYS: run. ARGV: new phase, '1' to clear the target phase (it is complete) or '', then pairs of
-- field name and the SHA-1 hex digest of the value read ('' for an absent field).
for i = 3, #ARGV, 2 do
  if redis.sha1hex(redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 0 end
end
redis.call('HSET', KEYS[1], 'phase', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'target_phase', '') end
return 1

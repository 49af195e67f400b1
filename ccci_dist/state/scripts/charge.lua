-- Add one iteration's cost to its run's UTC day once: a retry after a lost reply (the write landed,
-- the answer did not) must not bill the iteration twice, so the charge's id is remembered beside it.
-- KEYS[1]: cost:{run}:{day} (role -> cost); KEYS[2]: its charge ids. ARGV: role, cost, keep_s, charge id.
-- Returns the day's values (summed by the caller: Lua numbers come back as integers).
if redis.call('SADD', KEYS[2], ARGV[4]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return redis.call('HVALS', KEYS[1])

-- Give back a claim whose writes did not reach a replica in time: drop our lease and queue the
-- same task again, so its retry claims the same iteration (attempt + 1). KEYS: lease, next.
-- ARGV: owner, task id. 1 = given back.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return 1

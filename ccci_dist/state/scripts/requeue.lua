-- Replace a queued iteration that was lost (never claimed): the old task, if it ever
-- arrives, is superseded. ARGV: old task id, new task id, now, queue.
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'next_at', ARGV[3], 'next_queue', ARGV[4])
return 1

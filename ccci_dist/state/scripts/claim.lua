-- Claim the loop for one iteration: the task must be the loop's queued one, the loop active
-- and the lease free. Returns {ok, token|reason, iteration, attempt}.
local state = redis.call('HGET', KEYS[1], 'state')
local run_status = redis.call('HGET', KEYS[5], 'status')
if state ~= 'active' or (run_status and run_status ~= 'active') then
  -- consumed: a paused or stopped loop gets a fresh message from the watchdog when it resumes
  if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
  return {0, 'inactive:' .. tostring(state) .. '/' .. tostring(run_status)}
end
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return {0, 'superseded'} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {0, 'busy'} end
redis.call('DEL', KEYS[4])
local token = redis.call('INCR', KEYS[3])
local running = redis.call('HGET', KEYS[1], 'running')
local n, attempt
if running and running ~= '' then
  n = tonumber(running)
  attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1') + 1
else
  n = tonumber(redis.call('HGET', KEYS[1], 'iteration') or '0') + 1
  attempt = 1
end
redis.call('HSET', KEYS[1], 'running', n, 'attempt', attempt, 'host', ARGV[4], 'owner', ARGV[2],
           'token', token, 'started_at', ARGV[5], 'task_id', ARGV[1])
redis.call('HDEL', KEYS[1], 'next_at', 'next_queue')
return {1, token, n, attempt}

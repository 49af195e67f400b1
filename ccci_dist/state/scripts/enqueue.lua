-- Enqueue the loop's next iteration unless one is live or queued or its start time has not come
-- (idempotent across concurrent watchdogs). ARGV: task id, now, queue. 1 = this caller sends it.
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
-- checked here, not from an earlier read: an iteration that just finished may have set it
local not_before = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '') or 0
if not_before > tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[3], ARGV[1], 'NX') then
  redis.call('HSET', KEYS[1], 'next_at', ARGV[2], 'next_queue', ARGV[3])
  return 1
end
return 0

-- Finish an iteration (fenced). ARGV: token, owner, loop fields JSON, history JSON,
-- next-task-id ('' = none), now, run-hash fields JSON, inbox ack id ('' = none), stream maxlen.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'kind', 'stale_write_refused',
             'detail', 'finish refused: fencing token ' .. ARGV[1] .. ' is no longer current', 'at', ARGV[6])
  return 0
end
-- finished already under this token: a retry whose first call ran but whose reply was lost (Redis
-- went away mid-call) must not record the iteration twice
if redis.call('HGET', KEYS[1], 'finished_token') == ARGV[1] then return 1 end
local f = cjson.decode(ARGV[3])
for k, v in pairs(f) do redis.call('HSET', KEYS[1], k, tostring(v)) end
redis.call('HSET', KEYS[1], 'running', '', 'finished_token', ARGV[1])
local h = cjson.decode(ARGV[4])
local flat = {}
for k, v in pairs(h) do table.insert(flat, k); table.insert(flat, tostring(v)) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', unpack(flat))
local rf = cjson.decode(ARGV[7])
for k, v in pairs(rf) do redis.call('HSET', KEYS[6], k, tostring(v)) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'inbox_acked', ARGV[8]) end
if ARGV[10] ~= '' then
  -- nudges: this iteration's own first, then the pending ones its prompt did not carry (a boot
  -- or start may have added one while it ran); read here, not before, so none is lost
  local nz = cjson.decode(ARGV[10])
  local out, drop = {}, {}
  for _, n in ipairs(nz.add) do if not drop[n] then table.insert(out, n); drop[n] = true end end
  for _, n in ipairs(nz.seen) do drop[n] = true end
  for _, n in ipairs(cjson.decode(redis.call('HGET', KEYS[1], 'nudges') or '[]')) do
    if not drop[n] then table.insert(out, n); drop[n] = true end
  end
  redis.call('HSET', KEYS[1], 'nudges', #out == 0 and '[]' or cjson.encode(out))
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
local run_status = redis.call('HGET', KEYS[6], 'status')
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'state') == 'active'
   and (not run_status or run_status == 'active') then
  redis.call('SET', KEYS[7], ARGV[5])
  redis.call('HSET', KEYS[1], 'next_at', ARGV[6])
end
return 1

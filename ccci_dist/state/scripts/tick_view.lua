-- Everything one watchdog tick reads, in one round trip whatever the number of runs and loops:
-- per run (sorted) its name, its hash, and per role of its `roles` field the loop hash, the lease's
-- PTTL and the queued task id (false when none). Read-only. ARGV[1]: the key prefix ("ccci:").
local p = ARGV[1]
local runs = redis.call('SMEMBERS', p .. 'runs')
table.sort(runs)
local out = {}
for i, run in ipairs(runs) do
  local rk = p .. 'run:' .. run
  local loops = {}
  local ok, roles = pcall(cjson.decode, redis.call('HGET', rk, 'roles') or '[]')
  if ok and type(roles) == 'table' then
    for _, role in ipairs(roles) do
      if type(role) == 'string' then
        local k = run .. ':' .. role
        loops[#loops + 1] = {role, redis.call('HGETALL', p .. 'loop:' .. k), redis.call('PTTL', p .. 'lease:' .. k),
                             redis.call('GET', p .. 'next:' .. k)}
      end
    end
  end
  out[i] = {run, redis.call('HGETALL', rk), loops}
end
return out

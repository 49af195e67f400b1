-- Everything one watchdog tick reads, in one round trip whatever the number of runs and loops:
-- per run (sorted) its name, its hash without the `plan` field, per role of its `roles` field the
-- loop hash, the lease's PTTL and the queued task id (false when none), then the plan's digest and
-- the plan itself only when the caller does not hold that digest (false otherwise): a plan snapshot
-- is large (KBs to tens of KBs) and changes almost never, so it is not shipped every tick.
-- Read-only. ARGV[1]: the key prefix ("ccci:"); ARGV[2..]: the plan digests the caller holds.
local p = ARGV[1]
local known = {}
for i = 2, #ARGV do known[ARGV[i]] = true end
local runs = redis.call('SMEMBERS', p .. 'runs')
table.sort(runs)
local out = {}
for i, run in ipairs(runs) do
  local rk = p .. 'run:' .. run
  -- the fields by name, then their values without the plan's: the plan never enters Lua when known
  local names = redis.call('HKEYS', rk)
  local want, has_plan = {}, false
  for _, f in ipairs(names) do
    if f == 'plan' then has_plan = true else want[#want + 1] = f end
  end
  local flat, digest, roles_json = {}, false, '[]'
  if #want > 0 then
    local vals = redis.call('HMGET', rk, unpack(want))
    for j, f in ipairs(want) do
      local v = vals[j]  -- never false: nothing runs between the two calls inside a script
      flat[#flat + 1] = f
      flat[#flat + 1] = v
      if f == 'plan_sha' then digest = v elseif f == 'roles' then roles_json = v end
    end
  end
  local plan = false
  if has_plan then
    if not digest then  -- a hash written without its digest (an older writer): compute it
      plan = redis.call('HGET', rk, 'plan')
      digest = redis.sha1hex(plan)
    end
    if known[digest] then
      plan = false
    elseif not plan then
      plan = redis.call('HGET', rk, 'plan')
    end
  else
    digest = false  -- a digest without a plan stands for nothing
  end
  local loops = {}
  local ok, roles = pcall(cjson.decode, roles_json)
  if ok and type(roles) == 'table' then
    for _, role in ipairs(roles) do
      if type(role) == 'string' then
        local k = run .. ':' .. role
        loops[#loops + 1] = {role, redis.call('HGETALL', p .. 'loop:' .. k), redis.call('PTTL', p .. 'lease:' .. k),
                             redis.call('GET', p .. 'next:' .. k)}
      end
    end
  end
  out[i] = {run, flat, loops, digest, plan}
end
return out

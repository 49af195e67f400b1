-- Everything one watchdog tick reads, in one round trip whatever the number of runs and loops:
-- per run (sorted) its name, its hash without the `plan` field, per role of its `roles` field the
-- loop hash, the lease's PTTL and the queued task id (false when none), then the plan's digest and
-- the plan itself only when the caller does not hold that digest (false otherwise): a plan snapshot
-- is large (KBs to tens of KBs) and changes almost never, so it is not shipped every tick.
-- Read-only. ARGV[1]: the key prefix ("ccci:"); ARGV[2..]: the plan digests the caller holds.
-- Each redis.call costs more than copying a plan string inside Lua: one HGETALL per run, and the
-- queued tasks of all loops in MGETs.
local p = ARGV[1]
local known = {}
for i = 2, #ARGV do known[ARGV[i]] = true end
local runs = redis.call('SMEMBERS', p .. 'runs')
table.sort(runs)
local out, nexts, slots = {}, {}, {}
for i, run in ipairs(runs) do
  local all = redis.call('HGETALL', p .. 'run:' .. run)
  local flat, plan, digest, roles_json = {}, false, false, '[]'
  for j = 1, #all, 2 do
    local f, v = all[j], all[j + 1]
    if f == 'plan' then
      plan = v
    else
      flat[#flat + 1] = f
      flat[#flat + 1] = v
      if f == 'plan_sha' then digest = v elseif f == 'roles' then roles_json = v end
    end
  end
  if not plan then
    digest = false  -- a digest without a plan stands for nothing
  else
    digest = digest or redis.sha1hex(plan)  -- a hash written without its digest (an older writer)
    if known[digest] then plan = false end
  end
  local loops = {}
  local ok, roles = pcall(cjson.decode, roles_json)
  if ok and type(roles) == 'table' then
    for _, role in ipairs(roles) do
      if type(role) == 'string' then
        local k = run .. ':' .. role
        local lv = {role, redis.call('HGETALL', p .. 'loop:' .. k), redis.call('PTTL', p .. 'lease:' .. k), false}
        loops[#loops + 1] = lv
        nexts[#nexts + 1] = p .. 'next:' .. k
        slots[#slots + 1] = lv
      end
    end
  end
  out[i] = {run, flat, loops, digest, plan}
end
-- the queued task ids (false: none), in chunks that stay below Lua's limit on unpack
for c = 1, #nexts, 1000 do
  local got = redis.call('MGET', unpack(nexts, c, math.min(c + 999, #nexts)))
  for j = 1, #got do slots[c + j - 1][4] = got[j] end
end
return out

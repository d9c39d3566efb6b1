"""The job store's Lua scripts (``digitflow/jobs.py``): each is one atomic step in Redis."""

from __future__ import annotations

# KEYS: job hashes. ARGV[1]: JSON list, one entry per key: [job_id, terminal(0|1), {field: value}]
# and, for a write that must hold the job's fence, [..., condition, claim(0|1)]: condition
# ["token", t] holds when the job's fence is t (the delivery that claimed it last); ["msg", f, m]
# when the fence is still f (the sender's token, so no delivery of this hop claimed it yet) or
# the last claim was made by a delivery of message m (this very message, delivered again).
# A claim makes the writer the fence's holder: the fence goes up by one and m is recorded.
# ARGV[2]: done channel. ARGV[3]: image key prefix. ARGV[4]: active-jobs zset.
# Returns per key: 0 not live (finished or expired), -1 live but fenced off (another delivery
# owns it), else 1, or the new fence for a claim. allow-oom (Redis 7): at maxmemory
# (noeviction) Redis refuses ordinary writes, but this script must still be able to fail or
# finish a job; a terminal update deletes the job's parked image, so it frees more than it takes.
UPDATE_LUA = """#!lua flags=allow-oom
local updates = cjson.decode(ARGV[1])
local live, done = {}, {}
local function holds(key, cond)
  if cond == nil then return true end
  local f = redis.call('HMGET', key, 'fence', 'fence_holder')
  local fence = f[1] or ''
  if cond[1] == 'token' then return fence == cond[2] end
  return fence == cond[2] or f[2] == cond[3]
end
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  local u = updates[i]
  if status and status ~= 'succeeded' and status ~= 'failed' then
    if holds(key, u[4]) then
      local args = {}
      for k, v in pairs(u[3]) do args[#args + 1] = k; args[#args + 1] = v end
      if #args > 0 then redis.call('HSET', key, unpack(args)) end
      if u[2] == 1 then
        done[#done + 1] = u[1]
        redis.call('DEL', ARGV[3] .. u[1])
        redis.call('ZREM', ARGV[4], u[1])
      end
      live[i] = 1
      if u[5] == 1 then
        live[i] = redis.call('HINCRBY', key, 'fence', 1)
        redis.call('HSET', key, 'fence_holder', u[4][3])
      end
    else
      live[i] = -1
    end
  else
    live[i] = 0
    if not status then redis.call('ZREM', ARGV[4], u[1]) end
  end
end
if #done > 0 then redis.call('PUBLISH', ARGV[2], table.concat(done, ',')) end
return live
"""


# KEYS[1]: a job hash, ARGV[1]: the strike field. A strike for a job whose record expired
# would re-create its hash without a TTL (HINCRBY creates what is missing): return -1 instead.
STRIKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


# Creation, one atomic step. KEYS[1] (optional): the idempotency record. ARGV[1]: JSON spec
# (jobs [[id, model, item JSON for the backlog]], owner, fp, now, ttl, outage codes, backlog zset);
# ARGV[2..4]: job prefix, image prefix, active-jobs zset; ARGV[5..]: one image per job.
# Returns {'created', ''}, {'replay', record} or {'conflict', record}.
CREATE_LUA = """
local spec = cjson.decode(ARGV[1])
if #KEYS == 1 then
  local prior = redis.call('GET', KEYS[1])
  if prior then
    local record = cjson.decode(prior)
    if record.fp ~= spec.fp then return {'conflict', prior} end
    local outage, replay = {}, true
    for _, code in ipairs(spec.outage) do outage[code] = true end
    for _, id in ipairs(record.ids) do
      local fields = redis.call('HMGET', ARGV[2] .. id, 'status', 'error')
      if not fields[1] then
        replay = false
      elseif fields[1] == 'failed' and fields[2] then
        local ok, err = pcall(cjson.decode, fields[2])
        if ok and type(err) == 'table' and outage[err.code] then replay = false end
      end
    end
    if replay then return {'replay', prior} end
  end
end
local ids = {}
for i, job in ipairs(spec.jobs) do
  local key = ARGV[2] .. job[1]
  redis.call('HSET', key, 'status', 'queued', 'model', job[2], 'created_at', spec.now, 'owner', spec.owner)
  redis.call('EXPIRE', key, spec.ttl)
  redis.call('SET', ARGV[3] .. job[1], ARGV[4 + i], 'EX', spec.ttl)
  redis.call('ZADD', ARGV[4], spec.now, job[1])
  if spec.backlog ~= '' then
    redis.call('HSET', key, 'item', job[3])
    redis.call('ZADD', spec.backlog, spec.now, job[1])
  end
  ids[i] = job[1]
end
if #KEYS == 1 then
  redis.call('SET', KEYS[1], cjson.encode({ids = ids, fp = spec.fp}), 'EX', spec.ttl)
end
return {'created', ''}
"""
# KEYS[1]: a job hash; ARGV: field, value. Written only while the record lives (an HSET on an
# expired record would re-create it without a TTL).
SET_IF_LIVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

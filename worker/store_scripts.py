"""The job store's server-side scripts (Lua, run atomically by Redis >= 7 or Valkey): each step of
a job's hot path in one round trip. Used by ``worker.store.JobStore``; the keys they touch are
listed there."""
from __future__ import annotations

from .metrics import COUNT_FINAL_LUA

# Compare-and-set of the state: a cancel and a finishing worker cannot overwrite each other.
CAS = """
local s = redis.call('HGET', KEYS[1], 'state')
if (not s) or (not string.find(ARGV[1], ',' .. s .. ',', 1, true)) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# A worker takes a job in one round trip: queued/running -> running, one more delivery counted,
# the record and the input hashes (KEYS[2..]) read. Nil when the job has ended or expired.
CLAIM = """
local s = redis.call('HGET', KEYS[1], 'state')
if s ~= 'queued' and s ~= 'running' then return false end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1], 'worker', ARGV[2])
local out = {redis.call('HINCRBY', KEYS[1], 'attempts', 1), redis.call('HGETALL', KEYS[1])}
for i = 2, #KEYS do out[#out + 1] = redis.call('HGETALL', KEYS[i]) end
return out
"""

# Arrays stored as hashes under the job's key (``worker.codec``'s fields), with a TTL: ``n`` of them from
# ARGV[i], four values each (name, dtype, shape, data); returns the index after them.
PUT_ARRAYS_LUA = """
local function put_arrays(job, role, n, i, ttl)
  for _ = 1, n do
    local key = job .. ':' .. role .. ':' .. ARGV[i]
    redis.call('HSET', key, 'dtype', ARGV[i + 1], 'shape', ARGV[i + 2], 'data', ARGV[i + 3])
    redis.call('EXPIRE', key, ttl)
    i = i + 4
  end
  return i
end
"""

# A new job in one step (``JobStore.create``): its record and input arrays with the TTL, its entry in
# the owner's listing (expired entries dropped), then optionally an entry pushed on a list (a known
# fast lane) and the live workers' info read (as WORKERS). With the shebang (no flags) the server
# refuses the whole script when it is at maxmemory: no half-written job. KEYS: job record, owner's
# listing, workers index (read when ARGV[5] is "1"), list to push on (pushed when ARGV[6] is not
# empty). ARGV: job id, now, TTL, listing cut-off (now - TTL), read workers, entry to push, worker-key
# prefix, n fields, the record's field/value pairs, n arrays, (name, dtype, shape, data) per array.
CREATE = "#!lua\n" + PUT_ARRAYS_LUA + """
local job, id, ttl = KEYS[1], ARGV[1], tonumber(ARGV[3])
local nf = tonumber(ARGV[8])
redis.call('HSET', job, unpack(ARGV, 9, 8 + 2 * nf))
redis.call('EXPIRE', job, ttl)
put_arrays(job, 'in', tonumber(ARGV[9 + 2 * nf]), 10 + 2 * nf, ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], id)
redis.call('EXPIRE', KEYS[2], ttl)
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[6]) end
if ARGV[5] ~= '1' then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local ids = redis.call('ZRANGE', KEYS[3], 0, -1)
if #ids == 0 then return {} end
for j, w in ipairs(ids) do ids[j] = ARGV[7] .. w end
return redis.call('MGET', unpack(ids))
"""

# Ending a job in one step (``finish``): the CAS on the state, inputs dropped, outputs stored with
# the record's TTL, the record's fields, the waiters woken and the job counted (once: only the
# step that changed the state counts). ARGV: allowed states, final state, n outputs, then
# (name, dtype, shape, data) per output, then the record's field/value pairs.
FINISH_BODY = COUNT_FINAL_LUA + PUT_ARRAYS_LUA + """
local job = KEYS[1]
local s = redis.call('HGET', job, 'state')
if (not s) or (not string.find(ARGV[1], ',' .. s .. ',', 1, true)) then return 0 end
local inputs = redis.call('HGET', job, 'inputs')
if inputs then
  for name in string.gmatch(inputs, '[^,]+') do redis.call('DEL', job .. ':in:' .. name) end
end
local ttl, n = redis.call('TTL', job), tonumber(ARGV[3])
if n > 0 and ttl <= 0 then return 0 end
local i = put_arrays(job, 'out', n, 4, ttl)
redis.call('HSET', job, 'state', ARGV[2], unpack(ARGV, i))
redis.call('RPUSH', job .. ':done', '1')
redis.call('EXPIRE', job .. ':done', math.max(ttl, 1))
count_final(KEYS[2], job, ARGV[2])
return 1
"""
# With the shebang (no flags) the server refuses the whole script when it is at maxmemory as it
# starts: no half-written outputs; ``finish`` then takes the stepwise path that drops the inputs
# first. That path ends the job with the allow-oom form (outputs already handled, n = 0): its few
# small writes go through even at the limit, so the job still ends (507 when the outputs did not fit).
FINISH = "#!lua\n" + FINISH_BODY
FINISH_STEPWISE = "#!lua flags=allow-oom\n" + FINISH_BODY

# A job's record and, when it succeeded and ARGV[1] is "1", its output hashes (the names its
# result lists): {record fields, name, fields, name, fields, ...}. Sent right behind a wait's
# BLPOP, so the answer to a waiting call is read in the same round trip as the wake-up.
READ = """
local flat = redis.call('HGETALL', KEYS[1])
local out = {flat}
local fields = {}
for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
if ARGV[1] == '1' and fields['state'] == 'succeeded' and fields['result'] then
  local ok, result = pcall(cjson.decode, fields['result'])
  if ok and type(result) == 'table' and type(result['outputs']) == 'table' then
    for _, name in ipairs(result['outputs']) do
      out[#out + 1] = name
      out[#out + 1] = redis.call('HGETALL', KEYS[1] .. ':out:' .. name)
    end
  end
end
return out
"""

# Live workers' info in one round trip: expired heartbeats dropped from the index, the rest read.
WORKERS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
for i, id in ipairs(ids) do ids[i] = ARGV[2] .. id end
return redis.call('MGET', unpack(ids))
"""


-- Apply one start plan atomically (routinely/start_plan.py builds it and documents the
-- KEYS/ARGV layout). Order: configuration version, claim, then per session the admission
-- rule of routinely/admission.py `decide` over its three counters and the daily budget; admitted sessions get
-- their record, index entries and RQ job; finally the event record and installations.
-- Record field names live here, not in ARGV: every argument costs Redis ~1k instructions
-- to parse, and a name is the same on every call. The event record is one JSON string
-- (Python writes all of it but the outcome, which is appended here): a hash of a dozen
-- fields costs Redis ~5x more to write.
-- Returns {0} stale, {1} duplicate, or {2, #admitted, (id, metered)..., (routine, reason,
-- retry_after)...}.
local KEYS_PER_SESSION = 8  -- routinely/start_plan.py KEYS_PER_SESSION
local PER_SESSION = 19  -- routinely/start_plan.py PER_SESSION
local REASONS = {'routine_rate_limit', 'account_rate_limit', 'daily_cap', 'daily_budget'}
local score, now_ms, now_iso = ARGV[4], math.floor(tonumber(ARGV[4])), ARGV[5]
local event_id, event_key, event_ttl, session_ttl = ARGV[8], KEYS[2], ARGV[9], ARGV[10]
local n_sess, n_refused, n_inst = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local chain_depth, trigger = ARGV[18], ARGV[20]
local job_from = 21  -- the job template's fields
local inst_from = job_from + tonumber(ARGV[14])

local function record_event(duplicate, sessions, dropped, skipped)
  redis.call('SET', event_key, ARGV[19] .. ',"duplicate":' .. duplicate .. ',"sessions":' .. sessions ..
    ',"dropped":' .. dropped .. ',"skipped":' .. skipped .. '}', 'EX', event_ttl)
  redis.call('ZADD', KEYS[3], score, event_id)
  if ARGV[7] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[7]) end
end

-- the payload was SET just before, in the same MULTI: it stays only when a session is made
local function drop_payload()
  if ARGV[3] == '1' then redis.call('DEL', KEYS[9]) end
end

if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
  drop_payload()
  return {0}
end

if ARGV[2] ~= '0' and not redis.call('SET', KEYS[8], event_id, 'NX', 'EX', ARGV[2]) then
  record_event('true', '[]', '[]', '[]')  -- a redelivery: its own event, starts nothing
  drop_payload()
  return {1}
end

local admitted, dropped, out_dropped, ids = {}, {}, {}, {}
local a = inst_from + 3 * n_inst
for i = 1, n_sess do
  local k = 9 + (i - 1) * KEYS_PER_SESSION
  local sid, routine = ARGV[a], ARGV[a + 1]
  local reason, retry, metered = nil, 0, '0'
  local counts = redis.call('MGET', KEYS[k + 1], KEYS[k + 2], KEYS[k + 3])
  for w = 0, 1 do
    if tonumber(counts[w + 1] or '0') >= tonumber(ARGV[a + 2 + 3 * w]) then
      reason, retry = REASONS[w + 1], ARGV[a + 4 + 3 * w]
      break
    end
  end
  local budget = tonumber(ARGV[a + 14])
  if not reason and budget >= 0 and tonumber(redis.call('HGET', KEYS[k + 8], 'cost_usd') or '0') >= budget then
    reason, retry = REASONS[4], ARGV[a + 15]
  end
  if not reason and tonumber(counts[3] or '0') >= tonumber(ARGV[a + 8]) then
    if ARGV[a + 11] == '1' then metered = '1' else reason, retry = REASONS[3], ARGV[a + 10] end
  end
  if reason then
    redis.call('HINCRBY', KEYS[k + 4], reason, 1)
    redis.call('HSET', KEYS[k + 4], 'last_at', now_iso, 'last_reason', reason, 'retry_at_ms', now_ms + tonumber(retry) * 1000)
    redis.call('EXPIRE', KEYS[k + 4], session_ttl)
    table.insert(dropped, {routine = routine, reason = reason, retry_after = tonumber(retry)})
    table.insert(out_dropped, routine)
    table.insert(out_dropped, reason)
    table.insert(out_dropped, tonumber(retry))
  else
    for w = 0, 2 do
      if redis.call('INCR', KEYS[k + 1 + w]) == 1 then redis.call('EXPIRE', KEYS[k + 1 + w], ARGV[a + 3 + 3 * w]) end
    end
    redis.call('HSET', KEYS[k + 5], 'id', sid, 'routine', routine, 'routine_key', ARGV[a + 16], 'account', ARGV[a + 17],
      'trigger', trigger, 'event_id', event_id, 'status', 'queued', 'created_at', now_iso, 'chain_depth', chain_depth,
      'metered', metered)
    redis.call('EXPIRE', KEYS[k + 5], session_ttl)
    redis.call('ZADD', KEYS[k + 6], score, sid)  -- the routine's own index (its key: account and name)
    redis.call('EXPIRE', KEYS[k + 6], session_ttl)  -- a removed routine's index goes with its last session
    if ARGV[a + 18] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[k + 6], '-inf', ARGV[a + 18]) end
    redis.call('HSET', KEYS[k + 7], 'data', ARGV[12], 'created_at', ARGV[13], 'enqueued_at', ARGV[13],
      'timeout', ARGV[a + 12], 'description', ARGV[a + 13], unpack(ARGV, job_from, inst_from - 1))
    table.insert(ids, sid)
    table.insert(admitted, sid)
    table.insert(admitted, metered)
  end
  a = a + PER_SESSION
end

-- firings refused before admission (roles, chain depth: routinely/gate.py), recorded like every drop
for i = 1, n_refused do
  local k = 9 + n_sess * KEYS_PER_SESSION + i
  local routine, reason = ARGV[a], ARGV[a + 1]
  redis.call('HINCRBY', KEYS[k], reason, 1)
  redis.call('HSET', KEYS[k], 'last_at', now_iso, 'last_reason', reason, 'retry_at_ms', now_ms)
  redis.call('EXPIRE', KEYS[k], session_ttl)
  table.insert(dropped, {routine = routine, reason = reason, detail = ARGV[a + 2], retry_after = 0})
  table.insert(out_dropped, routine)
  table.insert(out_dropped, reason)
  table.insert(out_dropped, 0)
  a = a + 3
end

if #ids > 0 then
  local scored = {}
  for _, sid in ipairs(ids) do
    table.insert(scored, score)
    table.insert(scored, sid)
  end
  redis.call('ZADD', KEYS[4], unpack(scored))
  if ARGV[6] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[6]) end
  if ARGV[6] ~= '' then redis.call('SADD', KEYS[6], KEYS[5]) end  -- RQ's queue listing (rq info): once is enough
  redis.call('RPUSH', KEYS[5], unpack(ids))
else
  drop_payload()
end

record_event('false', #ids > 0 and cjson.encode(ids) or '[]', #dropped > 0 and cjson.encode(dropped) or '[]', ARGV[11])

for i = inst_from, inst_from + 3 * n_inst - 1, 3 do
  if ARGV[i] == 'set' then
    redis.call('HSET', KEYS[7], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[7], ARGV[i + 1])
  end
end

local out = {2, #ids}
for _, v in ipairs(admitted) do table.insert(out, v) end
for _, v in ipairs(out_dropped) do table.insert(out, v) end
return out

-- One firing, atomically: stale-configuration check, delivery dedup, admission of each
-- matched routine (routine window, account window, daily cap: check all, then count),
-- session records, their RQ jobs, the event record and its indexes.
-- ARGV[1]: control JSON (see routinely/start.py); ARGV[1+i]: RQ job data of candidate i.
-- A delivery's raw payload is not an argument (Lua copies a big argument at ~1.3 ns a
-- byte, twice): the same MULTI SETs it at c.payload_key just before this script, and the
-- script deletes it again unless a session was made.
local c = cjson.decode(ARGV[1])

local function drop_payload()
  if c.payload_key ~= '' then redis.call('DEL', c.payload_key) end
end

local current = redis.call('GET', c.version_key) or '0'
if current ~= c.version then
  drop_payload()
  return cjson.encode({stale = true})
end

local event_fields = c.event.fields
if c.dedup_key ~= '' and redis.call('EXISTS', c.dedup_key) == 1 then
  -- a redelivery: recorded as its own event, starts nothing
  redis.call('HSET', c.event.key, 'duplicate', '1', 'sessions', '[]', 'dropped', '[]', 'skipped', '[]', unpack(event_fields))
  redis.call('EXPIRE', c.event.key, c.event.ttl)
  redis.call('ZADD', c.events_key, c.now_ms, c.event.id)
  redis.call('ZREMRANGEBYSCORE', c.events_key, '-inf', c.events_trim)
  drop_payload()
  return cjson.encode({duplicate = true})
end

local sessions, dropped, session_ids = {}, {}, {}
for i, cand in ipairs(c.candidates) do
  local reason, retry = nil, 0
  for _, lim in ipairs(cand.limits) do
    if tonumber(redis.call('GET', lim.key) or '0') >= lim.max then
      reason, retry = lim.reason, lim.retry_after
      break
    end
  end
  local metered = '0'
  if not reason and cand.cap and tonumber(redis.call('GET', cand.cap.key) or '0') >= cand.cap.max then
    if cand.cap.extra_usage then metered = '1' else reason, retry = 'daily_cap', cand.cap.retry_after end
  end
  if reason then
    redis.call('HINCRBY', cand.drops_key, reason, 1)
    redis.call('HSET', cand.drops_key, 'last_at', c.now_iso, 'last_reason', reason, 'retry_at_ms', c.now_ms + retry * 1000)
    redis.call('EXPIRE', cand.drops_key, c.session_ttl)
    table.insert(dropped, {routine = cand.routine, reason = reason, retry_after = retry})
  else
    for _, lim in ipairs(cand.limits) do
      if redis.call('INCR', lim.key) == 1 then redis.call('EXPIRE', lim.key, lim.ttl) end
    end
    if cand.cap and redis.call('INCR', cand.cap.key) == 1 then redis.call('EXPIRE', cand.cap.key, cand.cap.ttl) end
    local s = cand.session
    redis.call('HSET', s.key, 'metered', metered, unpack(s.fields))
    redis.call('EXPIRE', s.key, c.session_ttl)
    for _, index in ipairs(s.indexes) do
      redis.call('ZADD', index, c.now_ms, s.id)
      redis.call('ZREMRANGEBYSCORE', index, '-inf', c.sessions_trim)
    end
    redis.call('HSET', cand.job.key, 'data', ARGV[1 + i], unpack(cand.job.fields))
    redis.call('SADD', c.queues_key, c.queue_key)
    redis.call('RPUSH', c.queue_key, s.id)
    table.insert(sessions, {id = s.id, routine = cand.routine, metered = metered == '1'})
    table.insert(session_ids, s.id)
  end
end

-- firings refused before admission (roles, chain depth: routinely/gate.py), recorded like every drop
for _, r in ipairs(c.refused) do
  redis.call('HINCRBY', r.drops_key, r.reason, 1)
  redis.call('HSET', r.drops_key, 'last_at', c.now_iso, 'last_reason', r.reason, 'retry_at_ms', c.now_ms)
  redis.call('EXPIRE', r.drops_key, c.session_ttl)
  table.insert(dropped, {routine = r.routine, reason = r.reason, detail = r.detail, retry_after = 0})
end

if #sessions == 0 then drop_payload() end

local function json_list(t)
  if #t == 0 then return '[]' end
  return cjson.encode(t)
end
redis.call('HSET', c.event.key, 'duplicate', '0', 'sessions', json_list(session_ids),
  'dropped', json_list(dropped), 'skipped', c.skipped, unpack(event_fields))
redis.call('EXPIRE', c.event.key, c.event.ttl)
redis.call('ZADD', c.events_key, c.now_ms, c.event.id)
redis.call('ZREMRANGEBYSCORE', c.events_key, '-inf', c.events_trim)

for _, op in ipairs(c.installations) do
  if op[1] == 'set' then
    redis.call('HSET', c.installations_key, op[2], op[3])
  else
    redis.call('HDEL', c.installations_key, op[2])
  end
end
if c.dedup_key ~= '' then
  redis.call('SET', c.dedup_key, c.event.id, 'EX', c.dedup_ttl)
end
return cjson.encode({sessions = sessions, dropped = dropped})

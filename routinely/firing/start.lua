-- Apply one start plan atomically. routinely/firing/start_plan.py builds it, declares every KEYS and
-- ARGV slot by name, and puts those names in front of this script as Lua locals: K_name and
-- A_name for the fixed slots, KS_/AS_ for a session's block (KEYS[k + KS_name],
-- ARGV[a + AS_name]), KR_/AR_ for a refused firing's, AI_ for an installation change, and
-- REASONS in routinely/firing/admission.py's order.
-- Order: configuration version, claim, then per session the admission rule over its three
-- counters and the daily budget; admitted sessions get their record, index entries and RQ
-- job; finally the event record and installations.
-- The admission rule lives here alone: a firing is dropped at the first window that is full
-- (routine, then account), then at a daily budget that is spent; past the daily cap it is
-- metered when the account allows extra usage, else dropped. Tests drive this script.
-- Record field names live here, not in ARGV: every argument costs Redis ~1k instructions
-- to parse, and a name is the same on every call. The event record is one JSON string
-- (Python writes all of it but the outcome, which is appended here): a hash of a dozen
-- fields costs Redis ~5x more to write.
-- Concurrency groups (routinely/routine_file/concurrency.py): an admitted session of a group
-- takes the group when no session holds it; replaces the group's session that has not started
-- (queued, or held by its debounce) and the one waiting; and waits (its job "deferred", in no
-- RQ list) behind a running one, which `cancel_in_progress` flags for cancel as
-- routinely.records.sessions.cancel does. Each session replaced or canceled so is a drop `superseded`.
-- The group's sessions are read before the script, so their keys are declared; a group that
-- changed since is a conflict ({3}): nothing is written, routinely.firing.start reads it again.
-- Returns {0} stale, {1} duplicate, {3} a group changed, or {2, #admitted, (id, metered)...,
-- (routine, reason, retry_after)...}.
local score, now_ms, now_iso = ARGV[A_score], math.floor(tonumber(ARGV[A_score])), ARGV[A_now_iso]
local event_id, event_key, event_ttl, session_ttl = ARGV[A_event_id], KEYS[K_event], ARGV[A_event_ttl], ARGV[A_session_ttl]
local n_sess, n_refused, n_inst = tonumber(ARGV[A_sessions]), tonumber(ARGV[A_refused]), tonumber(ARGV[A_installation_ops])
local chain_depth, trigger = ARGV[A_chain_depth], ARGV[A_trigger]
local job_from = N_FIXED_ARGS + 1  -- the job template's fields
local inst_from = job_from + tonumber(ARGV[A_job_fields])

local function record_event(duplicate, sessions, dropped, skipped, superseded)
  redis.call('SET', event_key, ARGV[A_event_json] .. ',"duplicate":' .. duplicate .. ',"sessions":' .. sessions ..
    ',"dropped":' .. dropped .. ',"skipped":' .. skipped .. (superseded or '') .. '}', 'EX', event_ttl)
  redis.call('ZADD', KEYS[K_events_index], score, event_id)
  if ARGV[A_events_trim] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[K_events_index], '-inf', ARGV[A_events_trim]) end
end

-- the payload was SET just before, in the same MULTI: it stays only when a session is made
local function drop_payload()
  if ARGV[A_keep_payload] == '1' then redis.call('DEL', KEYS[K_payload]) end
end

local function record_drop(drops_key, reason, retry_at_ms)
  redis.call('HINCRBY', drops_key, reason, 1)
  redis.call('HSET', drops_key, 'last_at', now_iso, 'last_reason', reason, 'retry_at_ms', retry_at_ms)
  redis.call('EXPIRE', drops_key, session_ttl)
end

if (redis.call('GET', KEYS[K_version]) or '0') ~= ARGV[A_version] then
  drop_payload()
  return {0}
end

-- every concurrency group as it was read, or nothing is written
do
  local a = inst_from + AI_N * n_inst
  for i = 1, n_sess do
    local k = N_FIXED_KEYS + 1 + (i - 1) * KS_N
    if ARGV[a + AS_group] ~= '' then
      local g = redis.call('HMGET', KEYS[k + KS_group], 'active', 'waiting')
      if (g[1] or '') ~= ARGV[a + AS_active] or (g[2] or '') ~= ARGV[a + AS_waiting] then
        drop_payload()
        return {3}
      end
    end
    a = a + AS_N
  end
end

if ARGV[A_claim_ttl] ~= '0' and not redis.call('SET', KEYS[K_claim], event_id, 'NX', 'EX', ARGV[A_claim_ttl]) then
  record_event('true', '[]', '[]', '[]')  -- a redelivery: its own event, starts nothing
  drop_payload()
  return {1}
end

-- a counter of an admitted firing, made to expire with its window
local function count(key, ttl)
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ttl) end
end

-- a session of the group that has not started gives way: canceled as routinely.records.sessions.cancel
-- cancels a queued one (its record, then its job off every RQ list and gone), recorded
local superseded = {}
local function supersede(session, job, id, by, routine, drops_key)
  redis.call('HSET', session, 'status', 'canceled', 'finished_at', now_iso, 'reason', 'superseded by session ' .. by,
    'superseded_by', by)
  redis.call('LREM', KEYS[K_queue], 0, id)
  redis.call('ZREM', KEYS[K_scheduled], id)
  redis.call('DEL', job)
  record_drop(drops_key, 'superseded', now_ms)
  table.insert(superseded, {routine = routine, session = id, by = by})
end

-- where an admitted session of a group goes: 'queue', 'scheduled' (its debounce) or 'deferred'
local function take_group(k, a, sid, routine)
  local group, active, waiting = KEYS[k + KS_group], ARGV[a + AS_active], ARGV[a + AS_waiting]
  if waiting ~= '' and redis.call('HGET', KEYS[k + KS_waiting_session], 'status') == 'queued' then
    supersede(KEYS[k + KS_waiting_session], KEYS[k + KS_waiting_job], waiting, sid, routine, KEYS[k + KS_drops])
  end
  local status = active ~= '' and redis.call('HGET', KEYS[k + KS_active_session], 'status')
  if status == 'queued' then
    supersede(KEYS[k + KS_active_session], KEYS[k + KS_active_job], active, sid, routine, KEYS[k + KS_drops])
  elseif status == 'running' and ARGV[a + AS_cancel_in_progress] == '1'
      and redis.call('HSETNX', KEYS[k + KS_active_session], 'superseded_by', sid) == 1 then  -- once a session
    redis.call('SET', KEYS[k + KS_active_cancel], '1', 'EX', CANCEL_TTL)  -- its runner stops it within a second
    record_drop(KEYS[k + KS_drops], 'superseded', now_ms)
    table.insert(superseded, {routine = routine, session = active, by = sid})
  end
  local place
  if status == 'running' then  -- it runs until it ends (canceled or not): this one waits behind it
    redis.call('HSET', group, 'waiting', sid)
    place = JOB_DEFERRED
  else  -- nobody holds the group (or a finished session the release missed): this one does
    redis.call('HSET', group, 'active', sid)
    redis.call('HDEL', group, 'waiting')
    place = ARGV[a + AS_start_at] ~= '0' and JOB_SCHEDULED or 'queue'
  end
  redis.call('EXPIRE', group, GROUP_TTL)
  return place
end

local admitted, dropped, out_dropped, ids, queued = {}, {}, {}, {}, {}
local a = inst_from + AI_N * n_inst
for i = 1, n_sess do
  local k = N_FIXED_KEYS + 1 + (i - 1) * KS_N
  local sid, routine = ARGV[a + AS_id], ARGV[a + AS_routine]
  local reason, retry, metered = nil, 0, '0'
  local counts = redis.call('MGET', KEYS[k + KS_routine_window], KEYS[k + KS_account_window], KEYS[k + KS_daily_cap])
  if tonumber(counts[1] or '0') >= tonumber(ARGV[a + AS_routine_max]) then
    reason, retry = REASONS[1], ARGV[a + AS_routine_retry]
  elseif tonumber(counts[2] or '0') >= tonumber(ARGV[a + AS_account_max]) then
    reason, retry = REASONS[2], ARGV[a + AS_account_retry]
  end
  local budget = tonumber(ARGV[a + AS_budget_max])
  if not reason and budget >= 0 and tonumber(redis.call('HGET', KEYS[k + KS_spend], 'cost_usd') or '0') >= budget then
    reason, retry = REASONS[4], ARGV[a + AS_budget_retry]
  end
  if not reason and tonumber(counts[3] or '0') >= tonumber(ARGV[a + AS_cap_max]) then
    if ARGV[a + AS_extra_usage] == '1' then metered = '1' else reason, retry = REASONS[3], ARGV[a + AS_cap_retry] end
  end
  if reason then
    record_drop(KEYS[k + KS_drops], reason, now_ms + tonumber(retry) * 1000)
    table.insert(dropped, {routine = routine, reason = reason, retry_after = tonumber(retry)})
    table.insert(out_dropped, routine)
    table.insert(out_dropped, reason)
    table.insert(out_dropped, tonumber(retry))
  else
    count(KEYS[k + KS_routine_window], ARGV[a + AS_routine_ttl])
    count(KEYS[k + KS_account_window], ARGV[a + AS_account_ttl])
    count(KEYS[k + KS_daily_cap], ARGV[a + AS_cap_ttl])
    local session, index = KEYS[k + KS_session], KEYS[k + KS_routine_sessions]
    redis.call('HSET', session, 'id', sid, 'routine', routine, 'routine_key', ARGV[a + AS_routine_key],
      'account', ARGV[a + AS_account], 'trigger', trigger, 'event_id', event_id, 'status', 'queued',
      'created_at', now_iso, 'chain_depth', chain_depth, 'metered', metered)
    if ARGV[a + AS_role_check] ~= '' then redis.call('HSET', session, 'role_check', ARGV[a + AS_role_check]) end
    redis.call('EXPIRE', session, session_ttl)
    redis.call('ZADD', index, score, sid)  -- the routine's own index (its key: account and name)
    redis.call('EXPIRE', index, session_ttl)  -- a removed routine's index goes with its last session
    if ARGV[a + AS_routine_trim] ~= '' then redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[a + AS_routine_trim]) end
    redis.call('HSET', KEYS[k + KS_job], 'data', ARGV[A_job_data], 'created_at', ARGV[A_job_stamp],
      'enqueued_at', ARGV[A_job_stamp], 'timeout', ARGV[a + AS_job_timeout], 'description', ARGV[a + AS_job_description],
      unpack(ARGV, job_from, inst_from - 1))
    local place = 'queue'
    if ARGV[a + AS_group] ~= '' then
      place = take_group(k, a, sid, routine)
      redis.call('HSET', session, 'group', ARGV[a + AS_group], 'group_key', KEYS[k + KS_group])
      if ARGV[a + AS_start_at] ~= '0' then redis.call('HSET', session, 'start_at', ARGV[a + AS_start_at_iso]) end
    end
    if place == 'queue' then
      table.insert(queued, sid)
    else
      redis.call('HSET', KEYS[k + KS_job], 'status', place)  -- RQ's own word for a job held back
      if place == JOB_SCHEDULED then redis.call('ZADD', KEYS[K_scheduled], ARGV[a + AS_start_at], sid) end
    end
    table.insert(ids, sid)
    table.insert(admitted, sid)
    table.insert(admitted, metered)
  end
  a = a + AS_N
end

-- firings refused before admission (roles, chain depth: routinely/firing/gate.py), recorded like every drop
for i = 1, n_refused do
  local k = N_FIXED_KEYS + 1 + n_sess * KS_N + (i - 1) * KR_N
  local routine, reason = ARGV[a + AR_routine], ARGV[a + AR_reason]
  record_drop(KEYS[k + KR_drops], reason, now_ms)
  table.insert(dropped, {routine = routine, reason = reason, detail = ARGV[a + AR_detail], retry_after = 0})
  table.insert(out_dropped, routine)
  table.insert(out_dropped, reason)
  table.insert(out_dropped, 0)
  a = a + AR_N
end

if #ids > 0 then
  local scored = {}
  for _, sid in ipairs(ids) do
    table.insert(scored, score)
    table.insert(scored, sid)
  end
  redis.call('ZADD', KEYS[K_sessions_index], unpack(scored))
  if ARGV[A_sessions_trim] ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[K_sessions_index], '-inf', ARGV[A_sessions_trim])
    redis.call('SADD', KEYS[K_queues], KEYS[K_queue])  -- RQ's queue listing (rq info): once is enough
  end
  if #queued > 0 then redis.call('RPUSH', KEYS[K_queue], unpack(queued)) end
else
  drop_payload()
end

record_event('false', #ids > 0 and cjson.encode(ids) or '[]', #dropped > 0 and cjson.encode(dropped) or '[]',
  ARGV[A_skipped], #superseded > 0 and (',"superseded":' .. cjson.encode(superseded)) or nil)

for i = inst_from, inst_from + AI_N * (n_inst - 1), AI_N do
  if ARGV[i + AI_op] == 'set' then
    redis.call('HSET', KEYS[K_installations], ARGV[i + AI_repo], ARGV[i + AI_id])
  else
    redis.call('HDEL', KEYS[K_installations], ARGV[i + AI_repo])
  end
end

local out = {2, #ids}
for _, v in ipairs(admitted) do table.insert(out, v) end
for _, v in ipairs(out_dropped) do table.insert(out, v) end
return out

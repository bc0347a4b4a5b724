-- keys=[index, entries, reasons, trimmed, stores] args=[entry_id | "", dead_lettered_at, entry_json, reason, store_id, max_entries, min_dead_lettered_at]
-- Adds an entry unless one with that id exists (a redelivered message must not park the
-- same job twice), then trims by age and by count, oldest first. An empty entry_id only
-- trims (DeadLetterStore.trim). Every trimmed entry is counted by reason in `trimmed` and
-- returned, so the caller can log it: retention is never silent.
-- Returns {added, trimmed_id, trimmed_reason, ...}.
local function decrement(hash, field)
  if redis.call('HINCRBY', hash, field, -1) <= 0 then redis.call('HDEL', hash, field) end
end

local added = 0
if ARGV[1] ~= '' then
  added = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3])
  if added == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
    redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
    redis.call('HINCRBY', KEYS[5], ARGV[5], 1)
  end
end
local result = {added}
local function drop(ids)
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', KEYS[2], id)
    local reason = 'unknown'
    if raw then
      local ok, entry = pcall(cjson.decode, raw)
      local store = ''
      if ok and type(entry) == 'table' then
        if type(entry.reason) == 'string' then reason = entry.reason end
        if type(entry.store_id) == 'string' then store = entry.store_id end
      end
      decrement(KEYS[3], reason)
      decrement(KEYS[5], store)
      redis.call('HINCRBY', KEYS[4], reason, 1)
      redis.call('HDEL', KEYS[2], id)
    end
    redis.call('ZREM', KEYS[1], id)
    result[#result + 1] = id
    result[#result + 1] = reason
  end
end
-- Bounded per call so one call never blocks Redis for long; later calls finish the job.
drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[7], 'LIMIT', 0, 1000))
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if excess > 0 then
  drop(redis.call('ZRANGE', KEYS[1], 0, math.min(excess, 1000) - 1))
end
return result

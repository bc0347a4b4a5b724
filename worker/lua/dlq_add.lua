-- keys=[index, entries, reasons, trimmed] args=[entry_id, dead_lettered_at, entry_json, reason, max_entries, min_dead_lettered_at]
-- Adds an entry unless one with that id exists (a redelivered message must not park the
-- same job twice), then trims by age and by count. Returns {added, trimmed_id, trimmed_reason, ...}.
local added = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3])
if added == 1 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
end
local result = {added}
local function drop(ids)
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', KEYS[2], id)
    local reason = 'unknown'
    if raw then
      local ok, entry = pcall(cjson.decode, raw)
      if ok and type(entry) == 'table' and entry.reason then reason = entry.reason end
      redis.call('HINCRBY', KEYS[3], reason, -1)
      redis.call('HINCRBY', KEYS[4], reason, 1)
      redis.call('HDEL', KEYS[2], id)
    end
    redis.call('ZREM', KEYS[1], id)
    result[#result + 1] = id
    result[#result + 1] = reason
  end
end
-- Bounded per call so one add never blocks Redis for long; later adds finish the job.
drop(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6], 'LIMIT', 0, 1000))
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
if excess > 0 then
  drop(redis.call('ZRANGE', KEYS[1], 0, math.min(excess, 1000) - 1))
end
return result

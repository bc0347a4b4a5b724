-- keys=[scheduled, scheduled_messages, queue] args=[now, limit]
-- Moves due jobs onto the delivery queue. Atomic, so a job is never in both places or in
-- neither, and any number of workers may run it at once.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job_id in ipairs(due) do
  local message = redis.call('HGET', KEYS[2], job_id)
  if message then
    redis.call('LPUSH', KEYS[3], message)
    redis.call('HDEL', KEYS[2], job_id)
  end
  redis.call('ZREM', KEYS[1], job_id)
end
return #due

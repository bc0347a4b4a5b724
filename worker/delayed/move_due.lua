-- keys=[scheduled, scheduled_messages, queue] args=[now | "", limit]
-- Moves due jobs onto the delivery queue. Atomic, so a job is never in both places or in
-- neither, and any number of workers may run it at once.
-- A blank `now` reads Redis TIME, the clock schedule.lua wrote the due times on (a worker
-- whose own clock runs ahead must not move jobs early); tests pass `now` to drive time.
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = string.format('%d.%06d', t[1], t[2])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, job_id in ipairs(due) do
  local message = redis.call('HGET', KEYS[2], job_id)
  if message then
    redis.call('LPUSH', KEYS[3], message)
    redis.call('HDEL', KEYS[2], job_id)
  end
  redis.call('ZREM', KEYS[1], job_id)
end
return #due

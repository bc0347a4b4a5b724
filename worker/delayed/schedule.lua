-- keys=[scheduled, scheduled_messages, generation?] args=[job_id, delay_seconds, message, replay_count?, generation?, generation_ttl_seconds?]
-- Parks a job for delay_seconds. One entry per job id: a message redelivered after a crash
-- reschedules the same job instead of adding a twin.
-- The due time is on the Redis clock (TIME), the one clock every host shares: move_due.lua
-- compares against the same clock, so a worker whose own clock is off parks and moves jobs
-- on time. Redis >= 5 replicates a script's effects, so reading TIME before writing is
-- allowed. Returns the due time in epoch seconds, as a string (a Lua number would come
-- back truncated to an integer).
-- With the job's generation key (the done-check in worker/keys.py): `message` is of
-- generation g (one more than the run that parks it), and "replay:g" is recorded in the
-- same atomic step, so a copy kombu restores after this (its worker died before the ack)
-- finds it and stands down. A run whose (replay, generation) is not above the recorded one
-- is such a stale copy itself, racing a parking that won: nothing is written, and it
-- returns 0.
if KEYS[3] then
  local latest = redis.call('GET', KEYS[3])
  if latest then
    local r, g = tonumber(ARGV[4]), tonumber(ARGV[5])
    local lr, lg = string.match(latest, '^(%d+):(%d+)$')
    lr, lg = tonumber(lr), tonumber(lg)
    if lr and (r < lr or (r == lr and g <= lg)) then return 0 end
  end
  redis.call('SET', KEYS[3], ARGV[4] .. ':' .. ARGV[5], 'EX', ARGV[6])
end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + math.max(tonumber(ARGV[2]), 0)
local due_text = string.format('%.6f', due)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], due_text, ARGV[1])
return due_text

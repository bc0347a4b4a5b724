-- keys=[scheduled, scheduled_messages, generation?] args=[job_id, due_at, message, replay_count?, generation?, generation_ttl_seconds?]
-- Parks a job until due_at. One entry per job id: a message redelivered after a crash
-- reschedules the same job instead of adding a twin.
-- With the job's generation key (worker/marks.py): `message` is of generation g (one more
-- than the run that parks it), and "replay:g" is recorded in the same atomic step, so a
-- copy kombu restores after this (its worker died before the ack) finds it and stands
-- down. A run whose (replay, generation) is not above the recorded one is such a stale
-- copy itself, racing a parking that won: nothing is written, and it returns 0.
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
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1

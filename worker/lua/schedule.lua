-- keys=[scheduled, scheduled_messages] args=[job_id, due_at, message]
-- Parks a job until due_at. One entry per job id: a message redelivered after a crash
-- reschedules the same job instead of adding a twin.
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1

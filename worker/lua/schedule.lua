-- keys=[scheduled, scheduled_messages] args=[job_id, delay_seconds, message]
-- Parks a job for delay_seconds. One entry per job id: a message redelivered after a crash
-- reschedules the same job instead of adding a twin.
-- The due time is on the Redis clock (TIME), the one clock every host shares: move_due.lua
-- compares against the same clock, so a worker whose own clock is off parks and moves jobs
-- on time. Redis >= 5 replicates a script's effects, so reading TIME before writing is
-- allowed. Returns the due time in epoch seconds, as a string (a Lua number would come
-- back truncated to an integer).
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + math.max(tonumber(ARGV[2]), 0)
local due_text = string.format('%.6f', due)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], due_text, ARGV[1])
return due_text

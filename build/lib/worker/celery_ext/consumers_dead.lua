-- keys=[consumers] args=[dead_after_seconds, limit]
-- The consumer incarnations whose last heartbeat is older than dead_after, on the Redis
-- clock (TIME): the messages they took go back to the queue (worker/celery_ext/ownership.py).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local before = string.format('%.6f', now - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', before, 'LIMIT', 0, tonumber(ARGV[2]))

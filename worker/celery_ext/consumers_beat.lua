-- keys=[consumers] args=[incarnation, ...]
-- Heartbeat: each live consumer incarnation of one process gets the Redis clock (TIME) as
-- its score, so hosts whose clocks disagree still agree on who is dead
-- (worker/celery_ext/ownership.py).
local t = redis.call('TIME')
local now = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
for _, incarnation in ipairs(ARGV) do
  redis.call('ZADD', KEYS[1], now, incarnation)
end
return #ARGV

-- keys=[consumers, taken, taking] args=[incarnation, dead_after_seconds, retired]
-- Forgets a consumer incarnation once its set of taken messages and its taking list are
-- empty (each was restored, handed back or acked), provided it is still dead: a heartbeat that came back while its
-- messages were restored means the process lives on (it was only slow), and it keeps its
-- entry. An incarnation its own process retired ("1") is forgotten either way.
-- Returns 1 when forgotten.
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('LLEN', KEYS[3]) > 0 then return 0 end
if ARGV[3] ~= '1' then
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
  if score then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    if score > now - tonumber(ARGV[2]) then return 0 end
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1

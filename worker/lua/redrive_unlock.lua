-- keys=[lock] args=[token]
-- Releases the redrive lock only if this run still holds it: a run that outlived the
-- lock's TTL must not delete the lock a later run has taken since.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

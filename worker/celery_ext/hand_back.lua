-- keys=[taking, queue] args=[message]
-- Puts a taken message back at the end of the queue that is popped next (RPUSH: kombu pops
-- from the right), as if never taken, and out of the taking list. Only while the taking
-- list still holds it: a message handed back already (by its consumer, or by a sweep of a
-- dead one) is not pushed twice. Push before remove: on a full Redis the push is refused
-- and the message stays where it was. Returns 1 when handed back.
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1

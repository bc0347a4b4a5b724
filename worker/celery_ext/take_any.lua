-- keys=[taking, list1, list2, ...] args=[]
-- Takes the next message of the first non-empty list, moving it into this consumer's
-- taking list in the same step (RPOPLPUSH: one command, so a full noeviction Redis refuses
-- it whole instead of popping what it could not push). Returns {list, message} or false.
for i = 2, #KEYS do
  local item = redis.call('RPOPLPUSH', KEYS[i], KEYS[1])
  if item then return {KEYS[i], item} end
end
return false

-- keys=[index, entries, reasons, queue] args=[(entry_id, message | "") * n]
-- Removes entries that still exist and, where a message is given, pushes it onto the
-- queue in the same step: a replayed job is never in both places or in neither, and two
-- operators replaying at once push it once. Returns the ids actually taken.
local taken = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    local reason = 'unknown'
    if ok and type(entry) == 'table' and entry.reason then reason = entry.reason end
    redis.call('HINCRBY', KEYS[3], reason, -1)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
    if ARGV[i + 1] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[i + 1]) end
    taken[#taken + 1] = id
  end
end
return taken

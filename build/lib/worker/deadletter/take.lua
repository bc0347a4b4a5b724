-- keys=[index, entries, reasons, queue, stores, (taken) * n] args=[taken_ttl_ms, (entry_id, message | "") * n]
-- Removes entries that still exist and, where a message is given, pushes it onto the
-- queue in the same step: a replayed job is never in both places or in neither, and two
-- operators (or two redrive runs) replaying at once push it once. Returns the ids taken.
-- The i-th pair's `taken` key (snackvideo:dlq:taken:{entry_id}) becomes a tombstone with
-- a TTL: a stale copy of the parked run's message (its worker died before the ack) that
-- comes back after this take must still find that run done (the done-check in
-- worker/keys.py).
local function decrement(hash, field)
  if redis.call('HINCRBY', hash, field, -1) <= 0 then redis.call('HDEL', hash, field) end
end

local taken_ttl_ms = tonumber(ARGV[1])
local taken = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    local reason = 'unknown'
    local store = ''
    if ok and type(entry) == 'table' then
      if type(entry.reason) == 'string' then reason = entry.reason end
      if type(entry.store_id) == 'string' then store = entry.store_id end
    end
    decrement(KEYS[3], reason)
    decrement(KEYS[5], store)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
    local replayed = ARGV[i + 1] ~= ''
    if replayed then redis.call('LPUSH', KEYS[4], ARGV[i + 1]) end
    redis.call('SET', KEYS[5 + i / 2], replayed and 'replayed' or 'purged', 'PX', taken_ttl_ms)
    taken[#taken + 1] = id
  end
end
return taken

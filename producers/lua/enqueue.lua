-- keys=[queue, enqueued_counter] args=[idempotency_ttl_seconds, count, (idempotency_key | "", job_id, message) * count]
-- Publishes a batch atomically. Returns one job id per item: the new job's id, or the id
-- of the job that already holds the item's idempotency key (then nothing is pushed for it).
-- Idempotency keys travel in ARGV because an item may have none; the project runs on a
-- single Redis (kombu's Redis transport is not cluster-aware either).
local ttl = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local result = {}
local claimed = {}
local messages = {}
for i = 0, count - 1 do
  local idem = ARGV[3 + i * 3]
  local job_id = ARGV[4 + i * 3]
  local message = ARGV[5 + i * 3]
  local winner = job_id
  if idem ~= "" then
    local existing = redis.call('GET', idem)
    if existing then
      winner = existing
    else
      redis.call('SET', idem, job_id, 'EX', ttl)
      claimed[#claimed + 1] = idem
    end
  end
  if winner == job_id then
    messages[#messages + 1] = message
  end
  result[#result + 1] = winner
end
-- unpack() stops at a few thousand values ("too many results to unpack"), an error that
-- would end the script with the keys above claimed and nothing pushed: so push and release
-- in chunks. Only the first LPUSH can fail (WRONGTYPE), and it fails before any push.
local CHUNK = 1000
local function chunk(list, first)
  return unpack(list, first, math.min(first + CHUNK - 1, #list))
end
if #messages > 0 then
  for first = 1, #messages, CHUNK do
    local pushed = redis.pcall('LPUSH', KEYS[1], chunk(messages, first))
    if type(pushed) == 'table' and pushed.err then
      -- Release the idempotency keys again: a retry must be able to claim them.
      for done = 1, #claimed, CHUNK do redis.call('DEL', chunk(claimed, done)) end
      return redis.error_reply(pushed.err)
    end
  end
  -- Counted with the push, in the same atomic call, so the count is exact. KEYS[2] is
  -- optional for callers of the older one-key signature.
  if KEYS[2] then redis.call('INCRBY', KEYS[2], #messages) end
end
return result

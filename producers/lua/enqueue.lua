-- keys=[queue] args=[idempotency_ttl_seconds, count, (idempotency_key | "", job_id, message) * count]
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
if #messages > 0 then
  local pushed = redis.pcall('LPUSH', KEYS[1], unpack(messages))
  if type(pushed) == 'table' and pushed.err then
    -- Release the idempotency keys again: a retry must be able to claim them.
    if #claimed > 0 then redis.call('DEL', unpack(claimed)) end
    return redis.error_reply(pushed.err)
  end
end
return result

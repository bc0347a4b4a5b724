-- keys=[queue, enqueued_counter, call_key]
-- args=[idempotency_ttl_seconds, count, call_ttl_seconds, (idempotency_key | "", job_id, message) * count]
-- Publishes a batch atomically. Returns one job id per item: the new job's id, or the id
-- of the job that already holds the item's idempotency key (then nothing is pushed for it).
-- Idempotency keys travel in ARGV because an item may have none; the project runs on a
-- single Redis (kombu's Redis transport is not cluster-aware either).
--
-- call_key is unique to one enqueue call and the same for each of its retries. The producer
-- retries a timeout or a dropped connection, and the run whose reply it lost may have
-- pushed everything: a later run of the same call finds call_key and returns that run's
-- result without pushing again. It is written only after a successful push, so a run that
-- failed leaves nothing behind and the retry does the work.
local ttl = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local call_ttl = tonumber(ARGV[3])
local FIRST = 4
local OWN_IDS = '='  -- stored instead of the list when every item got its own job id

local done = redis.call('GET', KEYS[3])
if done then
  -- A write, so that a WAIT after this run covers the run that did the work: replication
  -- is in order, and a replica that has this write has every earlier one.
  redis.call('EXPIRE', KEYS[3], call_ttl)
  if done ~= OWN_IDS then return cjson.decode(done) end
  local own = {}
  for i = 0, count - 1 do own[#own + 1] = ARGV[FIRST + 1 + i * 3] end
  return own
end

local result = {}
local claimed = {}
local messages = {}
local all_own = true
for i = 0, count - 1 do
  local idem = ARGV[FIRST + i * 3]
  local job_id = ARGV[FIRST + 1 + i * 3]
  local message = ARGV[FIRST + 2 + i * 3]
  local winner = job_id
  if idem ~= "" then
    -- A key that exists was claimed by an earlier call, or by an earlier run of this one
    -- (then it holds this very job_id): either way that job is queued; never push again.
    local existing = redis.call('GET', idem)
    if existing then
      winner = existing
      all_own = false
    else
      redis.call('SET', idem, job_id, 'EX', ttl)
      claimed[#claimed + 1] = idem
      messages[#messages + 1] = message
    end
  else
    messages[#messages + 1] = message
  end
  result[#result + 1] = winner
end
-- unpack() stops at a few thousand values ("too many results to unpack"), an error that
-- would end the script with the keys above claimed and nothing pushed: so push and release
-- in chunks, well inside that limit and smaller than the largest batch a producer sends
-- (MAX_BATCH_PAYLOADS), so that batch is pushed in several. Only the first LPUSH can fail
-- (WRONGTYPE), and it fails before any push.
local CHUNK = 400
local function chunk(list, first)
  return unpack(list, first, math.min(first + CHUNK - 1, #list))
end
if #messages > 0 then
  for first = 1, #messages, CHUNK do
    local pushed = redis.pcall('LPUSH', KEYS[1], chunk(messages, first))
    if type(pushed) == 'table' and pushed.err then
      -- Release the idempotency keys again: a retry must be able to claim them.
      for done_upto = 1, #claimed, CHUNK do redis.call('DEL', chunk(claimed, done_upto)) end
      return redis.error_reply(pushed.err)
    end
  end
  -- Counted with the push, in the same atomic call, so the count is exact.
  redis.call('INCRBY', KEYS[2], #messages)
end
-- The common case stores one byte: a retry rebuilds the list from its own ARGV.
redis.call('SET', KEYS[3], all_own and OWN_IDS or cjson.encode(result), 'EX', call_ttl)
return result

-- keys=[state, in_flight, delivered?, dlq_entries?, dlq_taken?, generation?] args=[now, token, lease_seconds, default_interval_seconds, ttl_seconds, fallback_window_seconds, dlq_entry_id | "", take_slot, replay_count?, generation?]
-- Takes one request slot from a scope's shared budget, or says how long to wait.
-- Returns {wait_seconds, now} as strings (a Lua number would come back truncated to an
-- integer). wait "0": the slot is taken and `token` counts as in flight until
-- record.lua releases it or its lease ends (a worker killed mid-request must not hold
-- budget for ever). Otherwise nothing is taken.
--
-- The job's done-check (worker/keys.py) rides along, so a delivery pays one round trip
-- for both: with a dlq_entry_id (and the `?` keys: the job's delivered-marker, the
-- dead-letter entries hash, the entry's tombstone, the job's generation record), a job
-- that is delivered, dead-lettered, replayed or parked since as a later generation
-- answers {"done", now} before anything else, and nothing is taken. take_slot
-- "0" stops after that check ({"0", now}: not done), for the throttle turned off and for
-- jobs about to be dead-lettered without a request.
--
-- Clock: a blank `now` reads Redis TIME, the one clock all hosts share, so a skewed worker
-- clock cannot move a window. Redis >= 5 replicates a script's effects, not the script, so
-- reading TIME and then writing is allowed. Tests pass `now` to drive time by hand.
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local token = ARGV[2]
local lease = tonumber(ARGV[3])
local default_interval = tonumber(ARGV[4])
local ttl_ms = math.floor(tonumber(ARGV[5]) * 1000)
local fallback_window = tonumber(ARGV[6])
local dlq_entry_id = ARGV[7]

local function fmt(x) return string.format('%.6f', x) end
local function wait(seconds) return {fmt(math.max(seconds, 0.001)), fmt(now)} end

if dlq_entry_id ~= '' then
  if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HEXISTS', KEYS[4], dlq_entry_id) == 1
      or redis.call('EXISTS', KEYS[5]) == 1 then
    return {'done', fmt(now)}
  end
  -- delayed/schedule.lua records "replay:generation" of the job's latest parked message; a copy
  -- behind it is one kombu restored after its run had parked the job: stand down.
  local latest = KEYS[6] and redis.call('GET', KEYS[6])
  if latest then
    local r, g = string.match(latest, '^(%d+):(%d+)$')
    r, g = tonumber(r), tonumber(g)
    local my_r, my_g = tonumber(ARGV[9]), tonumber(ARGV[10])
    if r and (my_r < r or (my_r == r and my_g < g)) then
      return {'done', fmt(now)}
    end
  end
end
if ARGV[8] == '0' then
  return {'0', fmt(now)}
end

-- Leases that ran out belong to requests whose worker died: give their budget back.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local in_flight = redis.call('ZCARD', KEYS[2])

local raw = redis.call('HMGET', KEYS[1], 'limit', 'remaining', 'reset_at', 'window_s',
  'blocked_until', 'next_slot_at', 'adaptive_rate')
local limit, remaining, reset_at = tonumber(raw[1]), tonumber(raw[2]), tonumber(raw[3])
local window_s, blocked_until, next_slot_at = tonumber(raw[4]), tonumber(raw[5]), tonumber(raw[6])
local adaptive_rate = tonumber(raw[7])

if blocked_until and now < blocked_until then
  return wait(blocked_until - now)
end

if remaining and not reset_at then
  reset_at = now + (window_s or fallback_window)
  redis.call('HSET', KEYS[1], 'reset_at', fmt(reset_at))
end
-- The end of the window the spread (next_slot_at) was set in, before any refill below.
local window_end = reset_at
if reset_at and now >= reset_at then
  -- The window we tracked is over. Refill optimistically; the first response of the new
  -- window replaces the provisional reset with the server's own. Never to less than one:
  -- a window refilled to nothing (X-Ratelimit-Limit: 0) would say "wait a window" for ever
  -- and never send the one request that could learn another limit. So every window lets
  -- at least one probe through, and its answer teaches the throttle again.
  if limit then
    remaining = math.max(limit, 1)
    reset_at = now + (window_s or fallback_window)
    redis.call('HSET', KEYS[1], 'remaining', remaining, 'reset_at', fmt(reset_at),
      'provisional', 1, 'window_started_at', fmt(now))
    -- window_opened_at stays: it is the ended window's until an answer opens this one,
    -- and record.lua bounds the ended window's length with it at the rollover.
  else
    remaining, reset_at = nil, nil
    redis.call('HDEL', KEYS[1], 'remaining', 'reset_at', 'provisional', 'window_opened_at')
  end
end

local interval
if remaining then
  -- Requests in flight have not been counted in `remaining` yet (as far as we know).
  local effective = remaining - in_flight
  if effective <= 0 then
    return wait(reset_at - now)
  end
  -- Spread what is left over what is left of the window, instead of bursting it.
  interval = (reset_at - now) / effective
else
  -- No budget announced: the adaptive rate (record.lua), which starts at the default.
  interval = adaptive_rate and (1 / adaptive_rate) or default_interval
end

-- A spread set on a longer window than the server has since announced (a provisional
-- guess, a day-long reset) must not hold requests past the end of the tracked window.
if next_slot_at and window_end and next_slot_at > window_end then
  next_slot_at = window_end
end
if next_slot_at and next_slot_at > now then
  return wait(next_slot_at - now)
end

redis.call('ZADD', KEYS[2], fmt(now + lease), token)
redis.call('HSET', KEYS[1], 'next_slot_at', fmt(now + interval))
redis.call('HINCRBY', KEYS[1], 'taken', 1)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], math.floor((lease + 1) * 1000))
return {'0', fmt(now)}

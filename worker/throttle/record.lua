-- keys=[state, in_flight, scopes, delivered?] args=[now, token, acquired_at, rate_limited, limit, remaining, reset_in, reset_resolution, retry_after, fallback_window_seconds, ttl_seconds, scope, delivered_ttl_seconds | "", scopes_max, status | "", default_rate, adaptive_max_rate, adaptive_step, adaptive_factor, reset_relative]
-- Releases a slot taken by acquire.lua and learns from the response's headers.
-- After a 2xx the dispatcher also passes the job's delivered-marker key (`delivered`) and
-- its TTL: the marker is set in this same call, so a delivery's bookkeeping after the
-- POST is one round trip (the done-check in worker/keys.py). It is written first: Redis
-- does not roll back a script that fails halfway, and the marker matters more than what
-- the headers teach.
-- Header values arrive parsed (worker/throttle/headers.py): numbers, or "" when a header was
-- missing or unreadable, in which case the last known state stands. Times are seconds on
-- the Redis clock (blank `now`: TIME; see acquire.lua); `reset_in` is relative.
-- The state hash layout is documented in worker/keys.py.
if ARGV[13] and ARGV[13] ~= '' then
  redis.call('SET', KEYS[4], '1', 'EX', math.floor(tonumber(ARGV[13])))
end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- Counted before our own token goes: how many answers may still be racing this one.
local in_flight_before = redis.call('ZCARD', KEYS[2])
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
local acquired_at = tonumber(ARGV[3]) or now
local rate_limited = ARGV[4] == '1'
local h_limit, h_remaining, h_reset_in = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local resolution = tonumber(ARGV[8]) or 1
local retry_after = tonumber(ARGV[9])
local fallback_window = tonumber(ARGV[10])
local ttl_ms = math.floor(tonumber(ARGV[11]) * 1000)

local flat = redis.call('HGETALL', KEYS[1])
local s = {}
for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
local function num(field) return tonumber(s[field]) end
local limit, remaining, reset_at = num('limit'), num('remaining'), num('reset_at')
local window_s, window_bound = num('window_s'), num('window_bound')
local started, opened = num('window_started_at') or 0, num('window_opened_at')
-- The rollover, bounded: `rollover_after` is a send time the tracked window began after
-- (the latest request the window before answered for); `sent_max` is that for the
-- tracked window itself, the bound of the next rollover.
local rollover_after, sent_max = num('rollover_after'), num('sent_max')
-- The lowest count an answer gave in the tracked window, and when that answer came back: a
-- request sent after it reached the server after it, so within the same window it must
-- report a lower count. One that does not is from a later window, however few requests
-- race (with one request in flight, "one more than the lowest" is otherwise ambiguous).
local count_seen, count_seen_at = num('count_seen'), num('count_seen_at')
-- Set by a 429 (below): the server's windows do not start at our first request (they run
-- on its clock, or another client opens them), so what assumes they do is not believed.
-- A reset sent as delta seconds says nothing of when the window began (rounded up, it
-- is `1` all through a 1 s window), so neither: only the rollover teaches the phase then.
local own_phase = s['foreign_phase'] ~= '1' and ARGV[20] ~= '1'
-- Even then, only of a window we saw begin: sent soon after a request the window before
-- answered for (`after`, its rollover_after). The first window a state tracks, or the first
-- after an idle spell, may have begun long before our request on a server whose windows run
-- on its clock: taking its `reset - sent` as the window's length cost a 429 at the next
-- window (the whole-second clock windows with epoch-second resets, in every bench run).
-- A rollover seen this long before the tracked reset is not clock skew between us and
-- the server (Redis TIME against the server's clock; NTP keeps them closer).
local EARLY_ROLLOVER_SECONDS = 0.25
local function opened_after(sent, after)
  return after ~= nil and sent - after < math.max(window_bound or 0, window_s or 0, fallback_window)
end
local blocked_until = num('blocked_until')
local provisional = s['provisional'] == '1'
-- How long the tracked window is, to narrow an epoch-second reset from the answer of the
-- request that opened it: the learned bound, or, on our own phase, a whole number of
-- seconds. Rate limiters count whole seconds (1 s, a minute, an hour), and the bound of
-- such a window is its length plus a round trip (1.02-1.05 s for 1 s windows in
-- bench.throttle_windows): taken as it is, each window's tracked reset was that much
-- late, 2-5 % of every 1 s window. Nothing bounds the first window a state sees; a 1 s
-- window is assumed when the reset allows one (less than two seconds away): a window of
-- one second that held our request ends no later than a second after its answer, so it
-- is never refilled early, however the server's windows are phased. A longer window
-- taken for a 1 s one (a 2 s window the backlog joined in its first second) or a bound
-- a little over a whole second that is the length (a 1.1 s window) refills early once:
-- the 429 sets `foreign_phase`, and only the learned bound counts from then on.
local function window_length(bound, reset_hint)
  if not own_phase then return bound end
  if bound then
    -- Just under a whole second: the bound assumed a window began at our request, and
    -- it began up to a latency before (whole-second clock windows: hypothesis found a
    -- bound of 0.9993 s and a refill 1 ms early; bench.throttle_windows at 3-80 ms
    -- latencies one of 0.955 s). Rounding a bound up is always safe; it costs a window
    -- shorter than 0.9 s of a whole second up to a tenth of it.
    local whole = math.ceil(bound)
    if whole - bound < 0.1 then return whole end
    whole = math.floor(bound)
    if whole >= 1 then return whole end
    return bound
  end
  if reset_hint - now < 2 then return 1 end
  return nil
end

if h_limit then
  if limit ~= h_limit then window_bound = nil end  -- a new policy: relearn its window
  limit = h_limit
end
if h_remaining and limit and h_remaining > limit then h_remaining = limit end
local reset_hint = h_reset_in and (now + h_reset_in)  -- no earlier than the true reset
local informative = h_remaining ~= nil or reset_hint ~= nil
local tracked = remaining ~= nil and reset_at ~= nil

-- Is this the answer of a later server window than the one we track? Either the server's
-- count went back up by more than reordered answers could explain, or its reset is later
-- than rounding could explain.
-- An epoch reset names its window: the next window of one a second or longer ends at
-- least a second later, so its reset is at least one rounding step later. An answer whose
-- reset is the tracked window's (`reset_seen`) is from that window, whatever its count
-- says: a request that landed early in the window and was answered after later ones
-- (latencies of 3-80 ms in bench.throttle_windows) otherwise looked like a rollover,
-- raised the count and taught a window of 0.13 s. Delta resets name nothing (`1` all
-- through a 1 s window).
local reset_seen = num('reset_seen')
local absolute_reset = ARGV[20] ~= '1' and reset_hint ~= nil
local same_window = tracked and absolute_reset and reset_seen ~= nil
  and reset_hint < reset_seen + 0.5
local new_window = false
if informative and not same_window then
  if not tracked then
    new_window = true
  elseif h_remaining and acquired_at >= started and h_remaining - remaining > in_flight_before then
    -- Only of a request sent since the tracked window began: one sent before it may have
    -- landed first in that same window and be answered after the later ones (latencies
    -- differ). Its higher count is then no rollover, and taking it as one learned a
    -- window of 0.05 s from it: the next refill came early, a 429 (delta-second resets,
    -- clock windows, 3-80 ms latencies in bench.throttle_windows).
    new_window = true
  elseif h_remaining and count_seen and count_seen_at and acquired_at >= count_seen_at
      and h_remaining >= count_seen then
    new_window = true
  elseif reset_hint and not provisional and reset_hint > reset_at + resolution + 0.05 then
    new_window = true
  end
end

local remaining_before = remaining
if new_window then
  if tracked then
    -- Remaining jumped back up: the window that ended began after `rollover_after` (a
    -- request it answered for left then), and the one this answer is from began by `now`.
    -- A window is no longer than that, whether the server starts one at the first request
    -- after the last (INCR + EXPIRE) or on its own clock: the rollover is the server's phase.
    -- On a server of the first kind, the window began no earlier than the request that
    -- opened it (`opened`), a tighter bound, if we saw that window open (`opened_after`).
    -- The first window a state sees (or the first after an idle spell) may instead have
    -- been joined half-way on a server whose windows run on its clock; `now - opened` is
    -- then shorter than the window, and a refill that early is a 429. It is taken only
    -- if it is at least a second (a window of a whole number of seconds can still have
    -- begun at our request: window_length below), or if the window ended well before the
    -- reset it announced (its reset was rounded, so its windows do not run on the whole
    -- seconds the reset is written in). That announced reset, not the tracked one, which
    -- window_length may have narrowed, or a refill replaced with a provisional one: the
    -- opener's answer came back after it left (`opened`), so `opened + window_s` is no
    -- later than the announced reset.
    local announced = provisional and 0 or reset_at
    if opened and window_s then announced = math.max(announced, opened + window_s) end
    local ended_early = now < announced - EARLY_ROLLOVER_SECONDS
    local seen_to_open = opened and (opened_after(opened, rollover_after) or ended_early
      or now - opened >= 1)
    local after = rollover_after
    if own_phase and seen_to_open and (not after or opened > after) then
      after = opened
    end
    if after then
      local bound = now - after
      if not window_bound or bound < window_bound then window_bound = bound end
    end
  end
  rollover_after = tracked and sent_max or nil
  sent_max = nil
  remaining = h_remaining or (limit and math.max(limit - 1, 0))
  -- A provisional refill lasts window_s: never shorter than a fresh window has announced.
  if h_reset_in and (not window_s or h_reset_in > window_s) then window_s = h_reset_in end
  reset_at = reset_hint or (now + (window_s or fallback_window))
  started, opened, provisional = acquired_at, nil, false
  reset_seen = absolute_reset and reset_hint or nil
  -- The pace set for the old window (or the default rate) says nothing about this one.
  redis.call('HDEL', KEYS[1], 'next_slot_at')
elseif tracked and acquired_at < started then
  -- Sent before the tracked window began: its numbers describe the window before. It may
  -- still have landed after the rollover, so count it against this one.
  remaining = math.max(remaining - 1, 0)
elseif tracked then
  if h_remaining then
    -- Answers race each other: the lowest count seen in a window is the freshest.
    remaining = math.min(remaining, h_remaining)
  else
    remaining = math.max(remaining - 1, 0)  -- no count given: assume it cost one
  end
  if reset_hint then
    if provisional then
      -- The refilled window's first answer, not seen as a rollover: its reset names the
      -- window from now on, and the request that opened the ended one bounds nothing.
      reset_at, provisional = reset_hint, false
      if absolute_reset then reset_seen = reset_hint end
      if opened and opened < started then opened = nil end
    else
      reset_at = math.min(reset_at, reset_hint)
    end
  end
end

if h_remaining and (new_window or (tracked and acquired_at >= started
    and (not count_seen or h_remaining < count_seen))) then
  count_seen, count_seen_at = h_remaining, now
end

-- The latest send time the tracked window answered for: an answer whose count did not go
-- up, or the first of a new window (its request left after the last rollover).
if informative and (new_window or (tracked and acquired_at >= started and
    (h_remaining == nil or remaining_before == nil or h_remaining <= remaining_before))) then
  if not sent_max or acquired_at > sent_max then sent_max = acquired_at end
end

-- The answer to the request that opened the window (it left limit - 1). Its reset is the
-- tightest the server gives; whole-second resets are rounded up, so the learned window
-- bound may pull it earlier, by less than one rounding step.
if limit and h_remaining == limit - 1 and reset_hint and not opened
    and (new_window or acquired_at >= started) then
  opened = acquired_at
  window_s = h_reset_in
  if own_phase and opened_after(acquired_at, rollover_after) then
    -- The window began no earlier than this request left and ends no later than the
    -- announced reset: its length is at most the difference.
    local bound = reset_hint - acquired_at
    if not window_bound or bound < window_bound then window_bound = bound end
  end
  local tight = reset_hint
  -- A millisecond reset is precise already: a millisecond more is not worth a 429 (the
  -- bound may be short when the server's windows are not ours).
  local length = window_length(window_bound, reset_hint)
  if length and resolution >= 1 then
    tight = math.max(reset_hint - resolution, math.min(reset_hint, now + length))
  end
  reset_at = math.min(reset_at or tight, tight)
end

local stale = (not new_window) and acquired_at < started
if rate_limited then
  redis.call('HINCRBY', KEYS[1], 'rate_limited', 1)
  -- Our window model let a request through too early: relearn it, and from now on
  -- without assuming that the server's windows start at our requests.
  window_bound, rollover_after, own_phase = nil, nil, false
  if not stale then
    local block = retry_after or h_reset_in
    if not block and reset_at and reset_at > now then block = reset_at - now end
    block = block or window_s or fallback_window
    if not blocked_until or now + block > blocked_until then blocked_until = now + block end
    remaining = 0
    if not reset_at or reset_at < blocked_until then reset_at = blocked_until end
  end
end

local function fmt(x) return string.format('%.6f', x) end
local fields = {
  limit = limit, remaining = remaining, reset_at = reset_at and fmt(reset_at),
  window_s = window_s and fmt(window_s), window_bound = window_bound and fmt(window_bound),
  window_started_at = fmt(started), window_opened_at = opened and fmt(opened),
  blocked_until = blocked_until and fmt(blocked_until),
  provisional = provisional and 1 or nil, updated_at = fmt(now),
  rollover_after = rollover_after and fmt(rollover_after), sent_max = sent_max and fmt(sent_max),
  foreign_phase = (s['foreign_phase'] == '1' or rate_limited) and 1 or nil,
  count_seen = count_seen, count_seen_at = count_seen_at and fmt(count_seen_at),
  reset_seen = reset_seen and fmt(reset_seen),
}
local names = {'limit', 'remaining', 'reset_at', 'window_s', 'window_bound',
  'window_started_at', 'window_opened_at', 'blocked_until', 'provisional', 'updated_at',
  'rollover_after', 'sent_max', 'foreign_phase', 'count_seen', 'count_seen_at', 'reset_seen'}
-- One HSET of what changed and one HDEL of what is gone: each redis.call costs about
-- 2 us of Redis CPU, and a field per call was 16 calls per answer (issue 16).
local changed, gone = {}, {}
for _, name in ipairs(names) do
  local value = fields[name]
  if value ~= nil then
    if tostring(value) ~= s[name] then
      changed[#changed + 1] = name
      changed[#changed + 1] = value
    end
  elseif s[name] ~= nil then
    gone[#gone + 1] = name
  end
end
if #changed > 0 then redis.call('HSET', KEYS[1], unpack(changed)) end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
-- The spread was paced over the window as acquire knew it. An answer that ends the window
-- sooner (the server's reset replacing a provisional guess, a day-long reset replaced by
-- a second) leaves a next slot past the window's end: a stall the server never asked for.
local next_slot_at = num('next_slot_at')
if next_slot_at and reset_at and next_slot_at > reset_at then
  redis.call('HDEL', KEYS[1], 'next_slot_at')
end

-- The adaptive rate (AIMD), for a scope whose answers never announced a budget: start at
-- the default rate; every answer without a 429 raises it (fast while below 0.85 x the rate
-- of the last cut: +1/s per answer, which doubles a rate the pace holds back about every
-- 0.7 s; near that rate by `step` per second, additively); a 429 or a Retry-After cuts it
-- by `factor`, once per round (answers to requests sent before the cut do not cut again).
-- It never exceeds 4 x the rate answers were seen at (a pace the workers cannot reach
-- proves nothing) nor `max_rate`. Headers, when present, rule: none of this runs then.
local status = tonumber(ARGV[15])
local default_rate = tonumber(ARGV[16])
if default_rate and not limit and not informative and (status or rate_limited) then
  local max_rate, step, factor = tonumber(ARGV[17]), tonumber(ARGV[18]), tonumber(ARGV[19])
  local rate = num('adaptive_rate') or default_rate
  local ceiling, cut_at = num('adaptive_ceiling'), num('adaptive_cut_at') or 0
  local seen_at, seen, observed = num('adaptive_seen_at'), num('adaptive_seen') or 0,
    num('adaptive_observed')
  -- Answers per second, over spans of at least a second.
  if not seen_at then
    seen_at, seen = now, 0
  elseif now - seen_at >= 1 then
    observed, seen_at, seen = seen / (now - seen_at), now, 0
  end
  seen = seen + 1
  if acquired_at >= cut_at then
    if rate_limited or retry_after then
      ceiling = math.min(rate, observed or rate)
      rate = math.max(ceiling * factor, math.min(default_rate, 1))
      cut_at = now
    elseif status < 500 then
      if ceiling and rate > ceiling * 1.2 then ceiling = nil end  -- the limit moved up
      if ceiling and rate >= ceiling * 0.85 then
        rate = rate + step / rate
      else
        rate = rate + 1
      end
      rate = math.min(rate, max_rate, math.max(default_rate, 4 * (observed or rate)))
    end
  end
  local adaptive = {'adaptive_rate', fmt(rate), 'adaptive_cut_at', fmt(cut_at),
    'adaptive_seen_at', fmt(seen_at), 'adaptive_seen', seen}
  if ceiling then
    adaptive[#adaptive + 1] = 'adaptive_ceiling'
    adaptive[#adaptive + 1] = fmt(ceiling)
  elseif s['adaptive_ceiling'] then
    redis.call('HDEL', KEYS[1], 'adaptive_ceiling')
  end
  if observed then
    adaptive[#adaptive + 1] = 'adaptive_observed'
    adaptive[#adaptive + 1] = fmt(observed)
  end
  redis.call('HSET', KEYS[1], unpack(adaptive))
end

redis.call('PEXPIRE', KEYS[1], ttl_ms)
-- The scope index, by last answer: only the most recent scopes_max scopes whose state
-- still lives. With one scope per store, producers choose the scopes; without the trim
-- the index, and what `snackvideo status` and every /metrics scrape read, would grow
-- with every store id ever seen.
redis.call('ZADD', KEYS[3], now, ARGV[12])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - ttl_ms / 1000))
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[14]) + 1))
return 1

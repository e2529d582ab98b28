-- Idempotency check, window update and window read for one transaction, atomically.
--
-- KEYS[1]       idempotency record of the transaction
-- KEYS[2..]     per bound group: its sorted set (member = transaction id,
--               score = event time ms) and, for groups that aggregate a
--               value, the hash transaction id -> value
-- ARGV[1..5]    transaction id, event time ms, fingerprint, record TTL ms,
--               number of bound groups
-- ARGV[6..]     per bound group: its index in LAYOUT (1-based), its value
--
-- LAYOUT and RAW_SIZE are constants that RedisStore writes in front of this
-- text once per window plan (the script is compiled once and cached by
-- Redis, like any EVALSHA script): LAYOUT holds one entry per group of the
-- plan: has_value (0/1), retention ms, key TTL ms, the most events a value
-- series keeps, then per window: output index (0-based), aggregate code
-- (1 count, 2 sum, 3 min, 4 max, 5 distinct), duration ms.
--
-- Returns {0} on an id reused with other content, {1, response} for a retry
-- of a scored transaction, {2, v1, v2, ...} with the raw window values.
-- The in-process store (engine/windows/memory.py) implements the same steps.

local txid = ARGV[1]
local t = tonumber(ARGV[2])
local seen = redis.call('GET', KEYS[1])
if seen then
  local nl = string.find(seen, '\n', 1, true)
  local fp = seen
  if nl then fp = string.sub(seen, 1, nl - 1) end
  if fp ~= ARGV[3] then return {0} end
  if nl then return {1, string.sub(seen, nl + 1)} end
  -- Seen but not answered (in flight, or its answer was lost): score again;
  -- re-adding the same transaction id changes no window.
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end

local CHUNK = 1000
local function num(x) return string.format('%.0f', x) end
local function hdel(h, ids)
  for i = 1, #ids, CHUNK do
    redis.call('HDEL', h, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
  end
end

local out = {2}
for i = 1, RAW_SIZE do out[i + 1] = 0 end

local a = 6
local k = 2
for _ = 1, tonumber(ARGV[5]) do
  local spec = LAYOUT[tonumber(ARGV[a])]
  local value = ARGV[a + 1]
  a = a + 2
  local has_value = spec[1] == 1
  local retention = spec[2]
  local ttl = spec[3]
  local cap = spec[4]
  local nwin = (#spec - 4) / 3
  local z = KEYS[k]
  k = k + 1
  local h = nil
  if has_value then
    h = KEYS[k]
    k = k + 1
  end

  redis.call('ZADD', z, ARGV[2], txid)
  if h then redis.call('HSET', h, txid, value) end

  -- The group's windows; all are read in one pass over the longest range.
  local wins = {}
  local longest = 0
  for w = 1, nwin do
    local d = spec[3 * w + 4]
    wins[w] = {spec[3 * w + 2] + 2, spec[3 * w + 3], t - d}
    if d > longest then longest = d end
  end
  -- Trim what no window can need any more: events older than this event's
  -- time minus the retention (longest window + allowed lateness).
  local cutoff = t - retention
  if h then
    local oldest = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if tonumber(oldest[2]) < cutoff then
      hdel(h, redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. num(cutoff)))
      redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. num(cutoff))
    end
    -- A value series is read by walking it: keep at most `cap` events (the
    -- oldest go first), so one very busy entity cannot stall Redis.
    local size = redis.call('ZCARD', z)
    if size > cap then
      hdel(h, redis.call('ZRANGE', z, 0, size - cap - 1))
      redis.call('ZREMRANGEBYRANK', z, 0, size - cap - 1)
    end
    redis.call('PEXPIRE', h, ttl)
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. num(cutoff))
  end
  redis.call('PEXPIRE', z, ttl)

  -- Read. Counts are a ZCOUNT each (O(log n)); the other aggregates walk
  -- the events of the longest window once.
  if not h then
    for w = 1, nwin do
      out[wins[w][1]] = redis.call('ZCOUNT', z, '(' .. num(wins[w][3]), ARGV[2])
    end
    nwin = 0
  end
  local m = {}
  if nwin > 0 then
    m = redis.call('ZRANGEBYSCORE', z, '(' .. num(t - longest), ARGV[2], 'WITHSCORES')
  end
  local n = #m / 2
  local vals = nil
  if h and n > 0 then
    vals = {}
    local ids = {}
    for i = 1, n do ids[i] = m[2 * i - 1] end
    for i = 1, n, CHUNK do
      local got = redis.call('HMGET', h, unpack(ids, i, math.min(i + CHUNK - 1, n)))
      for j = 1, #got do vals[i + j - 1] = got[j] end
    end
  end
  for w = 1, nwin do
    local pos, code, lower = wins[w][1], wins[w][2], wins[w][3]
    local acc = 0
    local seen_values = nil
    if code == 5 then seen_values = {} end
    local first = true
    for i = 1, n do
      if tonumber(m[2 * i]) > lower then
        if code == 1 then
          acc = acc + 1
        elseif code == 5 then
          local v = vals[i]
          if v and v ~= '' and not seen_values[v] then
            seen_values[v] = true
            acc = acc + 1
          end
        else
          local v = tonumber(vals[i])
          if v == nil then
            -- a value lost behind our back (manual edit): skip, never fail the payment
          elseif code == 2 then
            acc = acc + v
          elseif first or (code == 3 and v < acc) or (code == 4 and v > acc) then
            acc = v
            first = false
          end
        end
      end
    end
    out[pos] = acc
  end
end
return out

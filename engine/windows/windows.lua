-- Idempotency check, window update and window read for one transaction, atomically.
--
-- ARGV[1..6]    transaction id, event time ms, fingerprint, record TTL ms,
--               number of bound groups, mode:
--                 'S' standalone: KEYS[1] is the idempotency record, checked here;
--                 'F' cluster, first attempt (the record was claimed by another call);
--                 'R' cluster, a retry of a transaction seen but not answered.
-- KEYS[...]     per bound group: its sorted set (member = transaction id,
--               score = event time ms); for groups that aggregate a value,
--               the hash transaction id -> value; for groups with a bucketed
--               window, the hash bucket index -> "count" or "count sum min max"
-- ARGV[7..]     per bound group: its index in LAYOUT (1-based), its value,
--               1 to add the event or 0 to only read (it fails the filter)
--
-- LAYOUT and RAW_SIZE are constants that the store writes in front of this
-- text once per window plan (the script is compiled once and cached by
-- Redis, like any EVALSHA script): LAYOUT holds one entry per group of the
-- plan: has_value (0/1), exact retention ms, key TTL ms, the most events a
-- value series keeps, bucket retention ms (0: no buckets), then per window:
-- output index (0-based), aggregate code (1 count, 2 sum, 3 min, 4 max,
-- 5 distinct), reach (duration + delay) ms, delay ms, mode (0 exact,
-- 1 bucketed, 2 bucketed with a delay).
--
-- Returns {0} on an id reused with other content, {1, response} for a retry
-- of a scored transaction, {2, v1, v2, ...} with the raw window values.
-- The in-process store (engine/windows/memory.py) implements the same steps.

local txid = ARGV[1]
local t = tonumber(ARGV[2])
local mode = ARGV[6]
local first = mode ~= 'R'
local k = 1
if mode == 'S' then
  k = 2
  local seen = redis.call('GET', KEYS[1])
  if seen then
    local nl = string.find(seen, '\n', 1, true)
    local fp = seen
    if nl then fp = string.sub(seen, 1, nl - 1) end
    if fp ~= ARGV[3] then return {0} end
    if nl then return {1, string.sub(seen, nl + 1)} end
    -- Seen but not answered (in flight, or its answer was lost): score again;
    -- re-adding the same transaction id changes no window.
    first = false
  else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  end
end

local B = 3600000
local CHUNK = 1000
local function num(x) return string.format('%.0f', x) end
local function bucket(x) return math.floor(x / B) end
local function hdel(h, ids)
  for i = 1, #ids, CHUNK do
    redis.call('HDEL', h, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
  end
end

local out = {2}
for i = 1, RAW_SIZE do out[i + 1] = 0 end

local a = 7
for _ = 1, tonumber(ARGV[5]) do
  local spec = LAYOUT[tonumber(ARGV[a])]
  local value = ARGV[a + 1]
  local add = ARGV[a + 2] == '1'
  a = a + 3
  local has_value = spec[1] == 1
  local retention = spec[2]
  local ttl = spec[3]
  local cap = spec[4]
  local bucket_retention = spec[5]
  local nwin = (#spec - 5) / 5
  local z = KEYS[k]
  k = k + 1
  local h = nil
  if has_value then
    h = KEYS[k]
    k = k + 1
  end
  local b = nil
  if bucket_retention > 0 then
    b = KEYS[k]
    k = k + 1
  end

  if add then
    local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    -- Too late: older than what the series keeps, the event is only read.
    if newest[2] and t < tonumber(newest[2]) - retention then add = false end
  end
  if add then
    local is_new = not redis.call('ZSCORE', z, txid)
    redis.call('ZADD', z, ARGV[2], txid)
    if h then redis.call('HSET', h, txid, value) end
    if b and first and is_new then
      -- Each event enters its bucket once, when its id is first added.
      local j = num(bucket(t))
      if h then
        local v = tonumber(value)
        local cur = redis.call('HGET', b, j)
        if cur then
          local c, s, mn, mx = string.match(cur, '^(%S+) (%S+) (%S+) (%S+)$')
          c, s, mn, mx = tonumber(c) + 1, tonumber(s) + v, tonumber(mn), tonumber(mx)
          if v < mn then mn = v end
          if v > mx then mx = v end
          redis.call('HSET', b, j, num(c) .. ' ' .. num(s) .. ' ' .. num(mn) .. ' ' .. num(mx))
        else
          redis.call('HSET', b, j, '1 ' .. num(v) .. ' ' .. num(v) .. ' ' .. num(v))
        end
      else
        redis.call('HINCRBY', b, j, 1)
      end
    end
    -- Trim what no window can need any more: events older than this event's
    -- time minus the retention (longest exact reach + allowed lateness).
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
    if b then redis.call('PEXPIRE', b, ttl) end
  end

  -- The buckets, read once (dropping those no window can need, when adding).
  local bj, bc, bs, bmn, bmx = {}, {}, {}, {}, {}
  if b then
    local all = redis.call('HGETALL', b)
    local jcut = bucket(t - bucket_retention)
    local stale = {}
    local nb = 0
    for i = 1, #all, 2 do
      local j = tonumber(all[i])
      if add and j < jcut then
        stale[#stale + 1] = all[i]
      else
        nb = nb + 1
        bj[nb] = j
        if h then
          local c, s, mn, mx = string.match(all[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
          bc[nb], bs[nb], bmn[nb], bmx[nb] = tonumber(c), tonumber(s), tonumber(mn), tonumber(mx)
        else
          bc[nb] = tonumber(all[i + 1])
        end
      end
    end
    if #stale > 0 then hdel(b, stale) end
  end

  -- The exact part of each window: [lower, upper] in ms (inclusive), -1 for none.
  local wins = {}
  local lowest = nil
  for w = 1, nwin do
    local base = 5 + 5 * (w - 1)
    local reach, delay, wmode = spec[base + 3], spec[base + 4], spec[base + 5]
    local lo, hi, blo, bhi = nil, nil, nil, nil
    if wmode == 0 then
      lo, hi = t - reach + 1, t - delay
    else
      blo = bucket(t - reach) + 1
      if wmode == 2 then
        bhi = bucket(t - delay) - 1
      else
        lo, hi = bucket(t) * B, t
        bhi = bucket(t) - 1
      end
    end
    wins[w] = {spec[base + 1] + 2, spec[base + 2], lo, hi, blo, bhi}
    if lo and (lowest == nil or lo < lowest) then lowest = lo end
  end

  -- Read. Counts are a ZCOUNT each (O(log n)); the other aggregates walk
  -- the events of the widest exact range once.
  local m = {}
  local vals = {}
  if h and lowest then
    m = redis.call('ZRANGEBYSCORE', z, num(lowest), ARGV[2], 'WITHSCORES')
    local n = #m / 2
    if n > 0 then
      local ids = {}
      for i = 1, n do ids[i] = m[2 * i - 1] end
      for i = 1, n, CHUNK do
        local got = redis.call('HMGET', h, unpack(ids, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do vals[i + j - 1] = got[j] end
      end
    end
  end
  local n = #m / 2
  for w = 1, nwin do
    local pos, code, lo, hi, blo, bhi = unpack(wins[w])
    local acc = 0
    local any = false
    if lo then
      if not h then
        acc = redis.call('ZCOUNT', z, num(lo), num(hi))
      else
        local seen_values = nil
        if code == 5 then seen_values = {} end
        for i = 1, n do
          local s = tonumber(m[2 * i])
          if s >= lo and s <= hi then
            if code == 5 then
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
              elseif not any or (code == 3 and v < acc) or (code == 4 and v > acc) then
                acc = v
                any = true
              end
            end
          end
        end
      end
    end
    if blo then
      for i = 1, #bj do
        local j = bj[i]
        if j >= blo and j <= bhi then
          if code == 1 then
            acc = acc + bc[i]
          elseif code == 2 then
            acc = acc + bs[i]
          elseif code == 3 then
            if not any or bmn[i] < acc then acc = bmn[i] end
            any = true
          elseif code == 4 then
            if not any or bmx[i] > acc then acc = bmx[i] end
            any = true
          end
        end
      end
    end
    out[pos] = acc
  end
end
return out

-- Idempotency check, window update and window read for one transaction, atomically.
--
-- ARGV[1..6]    transaction id, event time ms, fingerprint, record TTL ms,
--               number of bound groups, mode:
--                 'S' standalone: KEYS[1] is the idempotency record, checked here;
--                 'F' cluster, first attempt (the record was claimed by another call);
--                 'R' cluster, a retry of a transaction seen but not answered;
--                 'D' a dry run: no record, no group is added to, nothing is
--                     written (a missing derived index is not rebuilt either).
-- KEYS[...]     per bound group: its sorted set (member = transaction id,
--               score = event time ms); for groups that aggregate a value,
--               the hash transaction id -> value; for groups with a distinct
--               window, the distinct index (see below); for groups with a
--               bucketed window, the hash bucket index -> "count" or
--               "count sum min max", then, unless a bucketed window of the
--               group is a min or max, its running totals (see below)
-- ARGV[7..]     per bound group: its index in LAYOUT (1-based), its value,
--               1 to add the event or 0 to only read (it fails the filter)
--
-- LAYOUT and RAW_SIZE are constants that the store writes in front of this
-- text once per window plan (the script is compiled once and cached by
-- Redis, like any EVALSHA script): LAYOUT holds one entry per group of the
-- plan: has_value (0/1), exact retention ms, key TTL ms, the most events a
-- value series keeps, bucket retention ms (0: no buckets), has a distinct
-- window (0/1), keeps running totals of its buckets (0/1), is a capped time
-- series (0/1: no value, but at most that many events, as a value series),
-- then per window: output index (0-based), aggregate code (1 count, 2 sum,
-- 3 min, 4 max, 5 distinct, 6 first seen, 7 since previous, 8 is new), reach
-- (duration + delay) ms, delay ms, mode (0 exact, 1 bucketed, 2 bucketed
-- with a delay).
--
-- Time windows (codes 6-8) read the event times of their group's sorted set:
-- the oldest event in the window (6: milliseconds since it, + 1), the newest
-- one that is not this transaction (7: milliseconds since it, + 1), and
-- whether there is none while the transaction passes the filter (8: 1 or 0);
-- 0 where there is no such event. They are exact over their whole duration
-- (never in buckets): one ZRANGEBYSCORE ... LIMIT each.
--
-- The distinct index of a group is a sorted set: member = a value the group
-- keeps, score = the time of its newest kept event. It mirrors the events
-- (trimmed and capped with them), so while no kept event is newer than a
-- window's end, the window's distinct count is one ZCOUNT over it instead of
-- a walk of every event in the window (thousands for a busy merchant). A late
-- event, or a window with a delay, walks the events as before.
--
-- Long (bucketed) windows add up hourly buckets: a busy entity has one per
-- hour of its last 30-odd days, and reading them all (HGETALL, then a parse of
-- each) was most of a transaction's cost. A group whose bucketed windows are
-- counts and sums also keeps running totals, as the in-process store does: a
-- sorted set, score = hour index, member = "hour:before:n" ("before" the
-- events of every earlier hour it ever had, n those of this hour), with
-- ":sum before:sum" for a value group. A window over hours lo..hi is then two
-- lookups, the first and the last hour in range: (before + n of the last) -
-- (before of the first). The totals are built from the hours when missing
-- (written by a version without them, or lost) or short of the hours about
-- the event's hour (an older version added to the hours), dropped with the hours when
-- an event opens a day, and reads ignore hours before the oldest one any
-- window may still need, so the answers are those of the hours.
--
-- Returns {0} on an id reused with other content, {1, response} for a retry
-- of a scored transaction, {2, v1, v2, ...} with the raw window values.
-- The in-process store (engine/windows/memory.py) implements the same steps.

local txid = ARGV[1]
local t = tonumber(ARGV[2])
local mode = ARGV[6]
local first = mode ~= 'R'
local dry = mode == 'D'
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
-- The values of `ids` in hash h, in order (false where missing).
local function hmget_all(h, ids)
  local vals = {}
  for i = 1, #ids, CHUNK do
    local got = redis.call('HMGET', h, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #got do vals[i + j - 1] = got[j] end
  end
  return vals
end

-- One bucket's "count sum min max" (or "count") as numbers.
local function stats(x)
  local c, s, mn, mx = string.match(x, '^(%S+) (%S+) (%S+) (%S+)$')
  if c == nil then return tonumber(x) end
  return tonumber(c), tonumber(s), tonumber(mn), tonumber(mx)
end
-- A running-totals member: hour, events before it, its events [, sum before it, its sum].
local function member(j, before, n, sbefore, sum)
  local m = num(j) .. ':' .. num(before) .. ':' .. num(n)
  if sbefore then m = m .. ':' .. num(sbefore) .. ':' .. num(sum) end
  return m
end
local function unmember(m)
  local f = {}
  for x in string.gmatch(m, '[^:]+') do f[#f + 1] = tonumber(x) end
  return f
end
-- Running totals built again from the hours of hash b.
local function build_totals(r, b, has_value)
  local all = redis.call('HGETALL', b)
  local hours, at = {}, {}
  for i = 1, #all, 2 do
    local j = tonumber(all[i])
    if j then
      hours[#hours + 1] = j
      at[j] = all[i + 1]
    end
  end
  table.sort(hours)
  redis.call('DEL', r)
  local args = {}
  local before, sbefore = 0, 0
  for _, j in ipairs(hours) do
    local c, sum = stats(at[j])
    args[#args + 1] = j
    if has_value then
      args[#args + 1] = member(j, before, c, sbefore, sum)
      sbefore = sbefore + sum
    else
      args[#args + 1] = member(j, before, c)
    end
    before = before + c
  end
  for i = 1, #args, 2 * CHUNK do
    redis.call('ZADD', r, unpack(args, i, math.min(i + 2 * CHUNK - 1, #args)))
  end
end
-- Hours before jcut leave the totals and the hash.
local function drop_totals(r, b, jcut)
  local gone = redis.call('ZRANGEBYSCORE', r, '-inf', '(' .. num(jcut))
  if #gone > 0 then
    local hours = {}
    for i = 1, #gone do hours[i] = string.match(gone[i], '^[^:]+') end
    hdel(b, hours)
    redis.call('ZREMRANGEBYSCORE', r, '-inf', '(' .. num(jcut))
  end
end
-- One event of value v (0 without a value) in hour jt, whose hash bucket is already counted
-- (in_hour events there now). Totals that disagree with the hash about that hour are built
-- again from the hours: an older version (during a rolling upgrade) added events to the
-- hours only.
local function add_total(r, b, jt, v, has_value, jcut, in_hour)
  local top = redis.call('ZRANGE', r, -1, -1)
  local f = top[1] and unmember(top[1])
  local later = nil
  if f and jt < f[1] then later = redis.call('ZRANGEBYSCORE', r, jt, '+inf') end
  local g = later and unmember(later[1])
  local expected = 1
  if f and jt == f[1] then
    expected = f[3] + 1
  elseif g and g[1] == jt then
    expected = g[3] + 1
  end
  if not f or expected ~= in_hour then
    build_totals(r, b, has_value)  -- a new series, totals missing beside older hours, or stale
    drop_totals(r, b, jcut)
    return
  end
  if jt == f[1] then  -- the newest hour again: the common case
    redis.call('ZREM', r, top[1])
    redis.call('ZADD', r, jt, member(jt, f[2], f[3] + 1, f[4], f[4] and f[5] + v))
  elseif jt > f[1] then  -- a new newest hour; once a day, the hours no window needs go
    redis.call('ZADD', r, jt, member(jt, f[2] + f[3], 1, f[4] and f[4] + f[5], f[4] and v))
    if math.floor(jt / 24) > math.floor(f[1] / 24) then drop_totals(r, b, jcut) end
  else  -- a late event: its hour and every later one change
    local adds = {}
    local from = 1
    if g[1] == jt then
      adds = {jt, member(jt, g[2], g[3] + 1, g[4], g[4] and g[5] + v)}
      from = 2
    else  -- a new hour: before it, what was before the next one
      adds = {jt, member(jt, g[2], 1, g[4], g[4] and v)}
    end
    for i = from, #later do
      local x = unmember(later[i])
      adds[#adds + 1] = x[1]
      adds[#adds + 1] = member(x[1], x[2] + 1, x[3], x[4] and x[4] + v, x[5])
    end
    redis.call('ZREM', r, unpack(later))
    redis.call('ZADD', r, unpack(adds))
  end
end

-- A distinct index built again from the events (written by a version without
-- the index, or the index lost): each value at its newest event's time.
local function rebuild(z, h, d)
  local all = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  local ids = {}
  for i = 1, #all, 2 do ids[#ids + 1] = all[i] end
  local got = hmget_all(h, ids)
  local pairs_ = {}
  for i = 1, #ids do
    if got[i] and got[i] ~= '' then
      pairs_[#pairs_ + 1] = all[2 * i]
      pairs_[#pairs_ + 1] = got[i]
    end
  end
  for i = 1, #pairs_, 2 * CHUNK do
    redis.call('ZADD', d, 'GT', unpack(pairs_, i, math.min(i + 2 * CHUNK - 1, #pairs_)))
  end
end

local out = {2}
for i = 1, RAW_SIZE do out[i + 1] = 0 end

local a = 7
for _ = 1, tonumber(ARGV[5]) do
  local spec = LAYOUT[tonumber(ARGV[a])]
  local value = ARGV[a + 1]
  local add = ARGV[a + 2] == '1' and not dry
  local passes = add  -- passes the filter (even when too late to be added)
  a = a + 3
  local has_value = spec[1] == 1
  local retention = spec[2]
  local ttl = spec[3]
  local cap = spec[4]
  local bucket_retention = spec[5]
  local totals = spec[7] == 1
  local capped = spec[8] == 1
  local nwin = (#spec - 8) / 5
  local z = KEYS[k]
  k = k + 1
  local h = nil
  if has_value then
    h = KEYS[k]
    k = k + 1
  end
  local d = nil
  if spec[6] == 1 then
    d = KEYS[k]
    k = k + 1
  end
  local b, r = nil, nil
  local have_totals = false  -- the running totals are known to exist
  if bucket_retention > 0 then
    b = KEYS[k]
    k = k + 1
    if totals then
      r = KEYS[k]
      k = k + 1
    end
  end

  -- The newest kept event's time (nil: none): distinct windows ending at or
  -- after it read the index.
  local newest_kept = nil
  if add then
    local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    if newest[2] then newest_kept = tonumber(newest[2]) end
    -- Too late: older than what the series keeps, the event is only read.
    if newest_kept and t < newest_kept - retention then add = false end
  end
  if add then
    -- ZADD answers 1 for a new member: the same id again adds nothing.
    local is_new = redis.call('ZADD', z, ARGV[2], txid) == 1
    if h then redis.call('HSET', h, txid, value) end
    if d then
      if value ~= '' then
        -- GT: the index keeps each value's newest time (a late event leaves it).
        -- An index that is new beside older events was lost: built again.
        if redis.call('ZADD', d, 'GT', ARGV[2], value) == 1 and redis.call('ZCARD', d) == 1
            and redis.call('ZCARD', z) > 1 then
          rebuild(z, h, d)
        end
      elseif redis.call('EXISTS', d) == 0 then
        rebuild(z, h, d)
      end
    end
    -- Trimming and the cap drop only the oldest events: the newest stays.
    if newest_kept == nil or t > newest_kept then newest_kept = t end
    if b and first and is_new then
      -- Each event enters its bucket once, when its id is first added.
      local j = num(bucket(t))
      local in_hour = 1  -- the hour's events in the hash, this one included
      if h then
        local v = tonumber(value)
        local cur = redis.call('HGET', b, j)
        if cur then
          local c, s, mn, mx = stats(cur)
          c, s = c + 1, s + v
          if v < mn then mn = v end
          if v > mx then mx = v end
          redis.call('HSET', b, j, num(c) .. ' ' .. num(s) .. ' ' .. num(mn) .. ' ' .. num(mx))
          in_hour = c
        else
          redis.call('HSET', b, j, '1 ' .. num(v) .. ' ' .. num(v) .. ' ' .. num(v))
        end
      else
        in_hour = redis.call('HINCRBY', b, j, 1)
      end
      if r then
        add_total(r, b, bucket(t), h and tonumber(value) or 0, h ~= nil, bucket(t - bucket_retention), in_hour)
        have_totals = true
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
        -- A value whose newest event is older than the cutoff has no event left.
        if d then redis.call('ZREMRANGEBYSCORE', d, '-inf', '(' .. num(cutoff)) end
      end
      -- A value series is read by walking it: keep at most `cap` events (the
      -- oldest go first), so one very busy entity cannot stall Redis.
      local size = redis.call('ZCARD', z)
      if size > cap then
        local gone = redis.call('ZRANGE', z, 0, size - cap - 1, 'WITHSCORES')
        local ids = {}
        for i = 1, #gone, 2 do ids[#ids + 1] = gone[i] end
        -- The newest dropped event's time: a value whose newest event is older
        -- has none left; one whose newest event is at that very time may still
        -- have one there (ties are ordered by id), so those are checked.
        local edge = tonumber(gone[#gone])
        local at_edge = {}
        if d then
          local edge_ids = {}
          for i = 1, #gone, 2 do
            if tonumber(gone[i + 1]) == edge then edge_ids[#edge_ids + 1] = gone[i] end
          end
          at_edge = hmget_all(h, edge_ids)
        end
        hdel(h, ids)
        redis.call('ZREMRANGEBYRANK', z, 0, size - cap - 1)
        if d then
          redis.call('ZREMRANGEBYSCORE', d, '-inf', '(' .. num(edge))
          local kept = nil
          for i = 1, #at_edge do
            local v = at_edge[i]
            if v and v ~= '' and tonumber(redis.call('ZSCORE', d, v)) == edge then
              if kept == nil then
                kept = {}
                local same = redis.call('ZRANGEBYSCORE', z, num(edge), num(edge))
                for _, kv in ipairs(hmget_all(h, same)) do
                  if kv then kept[kv] = true end
                end
              end
              if not kept[v] then redis.call('ZREM', d, v) end
            end
          end
        end
      end
      redis.call('PEXPIRE', h, ttl)
      if d then redis.call('PEXPIRE', d, ttl) end
    else
      redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. num(cutoff))
      if capped then  -- a time series: at most `cap` events too, the oldest go first
        redis.call('ZREMRANGEBYRANK', z, 0, -cap - 1)
      end
    end
    redis.call('PEXPIRE', z, ttl)
    if b then redis.call('PEXPIRE', b, ttl) end
    if r then redis.call('PEXPIRE', r, ttl) end
  end

  -- The buckets, read once (dropping those no window can need, when adding).
  local bj, bc, bs, bmn, bmx = {}, {}, {}, {}, {}
  if b and not r then
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
          bc[nb], bs[nb], bmn[nb], bmx[nb] = stats(all[i + 1])
        else
          bc[nb] = tonumber(all[i + 1])
        end
      end
    end
    if #stale > 0 then hdel(b, stale) end
  end

  if d and not add and not dry then
    -- Only read (filtered out, or too late): the index may still need building.
    if redis.call('EXISTS', d) == 0 and redis.call('EXISTS', z) == 1 then rebuild(z, h, d) end
  end
  if (d or r) and newest_kept == nil then
    -- The newest time is not known yet unless the event was added or too late.
    local top = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    if top[2] then newest_kept = tonumber(top[2]) end
  end
  if r and not dry and newest_kept and not have_totals and redis.call('EXISTS', r) == 0 and redis.call('EXISTS', b) == 1 then
    build_totals(r, b, h ~= nil)  -- only read (or a retry), and the totals are missing beside the hours
  end

  -- The exact part of each window: [lower, upper] in ms (inclusive), -1 for none.
  local wins = {}
  local lowest = nil
  for w = 1, nwin do
    local base = 8 + 5 * (w - 1)
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
    local code = spec[base + 2]
    local indexed = code == 5 and lo ~= nil and (newest_kept == nil or newest_kept <= hi)
    wins[w] = {spec[base + 1] + 2, code, lo, hi, blo, bhi, indexed}
    if lo and not indexed and code < 6 and (lowest == nil or lo < lowest) then lowest = lo end
  end

  -- The bucketed windows from the running totals: per window, count and sum
  -- over its hours (from the oldest any window may still need).
  local tc, ts = {}, {}
  if r then  -- (an entity without events reads zeros)
    local jcut = nil
    if newest_kept then jcut = bucket(newest_kept - bucket_retention) end
    local firsts, lasts = {}, {}
    for w = 1, nwin do
      local blo, bhi = wins[w][5], wins[w][6]
      if blo then
        if jcut and blo < jcut then blo = jcut end
        tc[w], ts[w] = 0, 0
        if newest_kept and blo <= bhi then
          local key = num(blo) .. ':' .. num(bhi)
          local first = firsts[key]
          if first == nil then
            first = redis.call('ZRANGEBYSCORE', r, num(blo), num(bhi), 'LIMIT', 0, 1)[1] or false
            firsts[key] = first
          end
          if first then
            -- The last hour in range: the last up to bhi (one is in range).
            local last = lasts[bhi]
            if last == nil then
              last = redis.call('ZREVRANGEBYSCORE', r, num(bhi), num(blo), 'LIMIT', 0, 1)[1]
              lasts[bhi] = last
            end
            local a, z2 = unmember(first), unmember(last)
            tc[w] = z2[2] + z2[3] - a[2]
            if a[4] then ts[w] = z2[4] + z2[5] - a[4] end
          end
        end
      end
    end
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
      vals = hmget_all(h, ids)
    end
  end
  local n = #m / 2
  for w = 1, nwin do
    local pos, code, lo, hi, blo, bhi, indexed = unpack(wins[w])
    local acc = 0
    local any = false
    if lo then
      if indexed then
        acc = redis.call('ZCOUNT', d, num(lo), '+inf')
      elseif code == 6 then  -- the oldest event in the window
        local oldest = redis.call('ZRANGEBYSCORE', z, num(lo), num(hi), 'WITHSCORES', 'LIMIT', 0, 1)
        if oldest[2] then acc = t - tonumber(oldest[2]) + 1 end
      elseif code >= 7 then  -- the newest event in the window that is not this transaction
        local gap = 0
        local newest = redis.call('ZREVRANGEBYSCORE', z, num(hi), num(lo), 'WITHSCORES', 'LIMIT', 0, 2)
        for i = 1, #newest, 2 do
          if newest[i] ~= txid then
            gap = t - tonumber(newest[i + 1]) + 1
            break
          end
        end
        if code == 7 then
          acc = gap
        elseif passes and gap == 0 then
          acc = 1
        end
      elseif not h then
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
    if blo and r then
      if code == 1 then acc = acc + tc[w] else acc = acc + ts[w] end
    elseif blo then
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

-- One page of list_sessions, from the sorted sets of the index: the smallest set the
-- filter allows (one user's sessions, one state's, a range of creation or activity
-- times) is read, the other predicates are checked on its members, and only the
-- matches are sorted. With no predicate but a range of the sort key itself, the page
-- is read straight off that sorted set.
-- ARGV: index prefix, key prefix ('<prefix>:'), then each optional as '' (absent) or
--       '=' .. value: user, state, created_after, created_before, active_after,
--       title_contains; then sort set (created, updated, active, msgs), order (asc,
--       desc), offset, limit
-- Returns {total, metadata hash...}

local idx, prefix = ARGV[1], ARGV[2]
local function opt(v) if v == '' then return nil end return string.sub(v, 2) end
local user, state = opt(ARGV[3]), opt(ARGV[4])
local created_after, created_before, active_after = opt(ARGV[5]), opt(ARGV[6]), opt(ARGV[7])
local title = opt(ARGV[8])
local sort, desc = ARGV[9], ARGV[10] == 'desc'
local offset, limit = math.max(tonumber(ARGV[11]), 0), math.max(tonumber(ARGV[12]), 0)

-- Ranges: [low inclusive, high exclusive) on one sorted set.
local ranges = {}
if created_after or created_before then
  ranges.created = {created_after and tonumber(created_after), created_before and tonumber(created_before)}
end
if active_after then ranges.active = {tonumber(active_after), nil} end
local function bounds(r)
  local low, high = '-inf', '+inf'
  if r[1] then low = int(r[1]) end
  if r[2] then high = '(' .. int(r[2]) end
  return low, high
end

-- The smallest candidate set.
local source, source_size, source_range = nil, nil, nil
local function consider(name, r)
  local size
  if r then size = redis.call('ZCOUNT', idx .. name, bounds(r))
  else size = redis.call('ZCARD', idx .. name) end
  if source_size == nil or size < source_size then
    source, source_size, source_range = name, size, r
  end
end
if user then consider('user:' .. user, nil) end
if state then consider('state:' .. state, nil) end
for name, r in pairs(ranges) do consider(name, r) end
if source == nil then consider(sort, nil) end

local function in_range(score, r)
  if score == nil then return false end
  score = tonumber(score)
  return (r[1] == nil or score >= r[1]) and (r[2] == nil or score < r[2])
end
local function matches(id)
  if user and source ~= 'user:' .. user and not redis.call('ZSCORE', idx .. 'user:' .. user, id) then
    return false
  end
  if state and source ~= 'state:' .. state and not redis.call('ZSCORE', idx .. 'state:' .. state, id) then
    return false
  end
  for name, r in pairs(ranges) do
    if name ~= source and not in_range(redis.call('ZSCORE', idx .. name, id), r) then return false end
  end
  if title then
    local t = redis.call('HGET', prefix .. '{' .. id .. '}:meta', 'title')
    if not t or not string.find(t, title, 1, true) then return false end
  end
  return true
end

local page = {}
local function fetch(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local h = redis.call('HGETALL', prefix .. '{' .. id .. '}:meta')
    if #h > 0 then out[#out + 1] = h end
  end
  return out
end

local low, high = '-inf', '+inf'
if source_range then low, high = bounds(source_range) end
local only_source = source == sort and not user and not state and not title
for name, _ in pairs(ranges) do if name ~= source then only_source = false end end
if only_source then
  -- Straight off the sort set.
  local ids
  if desc then ids = redis.call('ZREVRANGEBYSCORE', idx .. sort, high, low, 'LIMIT', offset, limit)
  else ids = redis.call('ZRANGEBYSCORE', idx .. sort, low, high, 'LIMIT', offset, limit) end
  if limit == 0 then ids = {} end
  local result = {source_size}
  for _, h in ipairs(fetch(ids)) do result[#result + 1] = h end
  return result
end

local found = {}
if source == sort then
  -- Already in order: filter as it comes.
  local ids
  if desc then ids = redis.call('ZREVRANGEBYSCORE', idx .. sort, high, low)
  else ids = redis.call('ZRANGEBYSCORE', idx .. sort, low, high) end
  for _, id in ipairs(ids) do
    if matches(id) then found[#found + 1] = id end
  end
else
  local ids = redis.call('ZRANGEBYSCORE', idx .. source, low, high)
  local scored = {}
  for _, id in ipairs(ids) do
    if matches(id) then
      scored[#scored + 1] = {tonumber(redis.call('ZSCORE', idx .. sort, id)), id}
    end
  end
  table.sort(scored, function(a, b)
    if a[1] ~= b[1] then
      if desc then return a[1] > b[1] end
      return a[1] < b[1]
    end
    if desc then return a[2] > b[2] end
    return a[2] < b[2]
  end)
  for i, item in ipairs(scored) do found[i] = item[2] end
end
local ids = {}
for i = offset + 1, math.min(offset + limit, #found) do ids[#ids + 1] = found[i] end
local result = {#found}
for _, h in ipairs(fetch(ids)) do result[#result + 1] = h end
return result

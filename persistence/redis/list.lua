-- One page of list_sessions, from the sorted sets of the index: the smallest set the
-- filter allows (one user's sessions, one state's, a range of creation or activity
-- times) is the source, the other predicates are checked on its members, and the
-- matches are sorted. The sets of users and states are scored by creation time, like
-- 'created': a range of creation times is a range of their scores.
--
-- Three ways, each a bound on how long one call holds Redis:
-- - When the source's order is the sort's and it covers every predicate (no filter;
--   a user's or a state's sessions by creation time, within a range of it; a range of
--   the sort key itself), the page is read straight off it: {0, total, hash...}.
-- - A source of at most <step> members is read, filtered and sorted in this call:
--   {0, total, hash...}.
-- - A larger one is read in steps of <step> members, in its order (score, then id),
--   one step per call, the caller keeping what sorts into the page (queries.py). A
--   call returns {1, source, cursor score, cursor id, bound, phase, top, early, id,
--   sort score, ...}: what to give the next call, then the matches among the members
--   it read; the call that reads the source's end returns {2, early, id, sort score,
--   ...}. A sort score of '' says the member, read again, no longer matches. <top> is
--   the source's highest score at the first call: the first <early> matches of a call
--   were at or below it, so read for the first time; the rest ("late": created or
--   touched while the listing ran, the source being read in ascending order) may be a
--   session read before (touched, or deleted and created again). A source with no
--   predicate of its own (a title alone) is 'created'.
--   The range of activity times is walked up to a bound, the set's highest score at
--   the first call: a session touched meanwhile moves above it (the clock is Redis's)
--   and would otherwise be read again and again, so the walk could go on as long as
--   sessions are touched. Once at the bound, the members above it (those touched
--   while the listing ran) are read in the same way, up to a new bound (the phase
--   counts them); in phase MAX_PHASES, or when they fit in this call, they are read
--   whole, which ends the walk. A session stays ahead of the cursor until it is read
--   (activity only moves it up), so each in the range from start to end is read.
-- ARGV: index prefix, key prefix ('<prefix>:'), then each optional as '' (absent) or
--       '=' .. value: user, state, created_after, created_before, active_after,
--       title_contains; then sort set (created, updated, active, msgs), order (asc,
--       desc), offset, limit, step; the keyset position (sort score, id: the page
--       starts after it in the listing's order; both '' for none); then, after the
--       first call, the source, the cursor (score, id), bound, phase and top it
--       returned (6 x '' for the first call)
-- Each reply above ends with one more item: how many members of the source the call
-- read (a straight page's offset, walked over, included): what the listing examined,
-- which its asker is charged for (server/http_pages.py).
--
-- With a keyset position, the straight page is read by rank from where the position
-- falls (found in O(log n), the members of its score searched by id), not by a LIMIT
-- offset that walks every member before it; the other ways keep only the matches
-- after it for the page (the steps' caller does that), counting every match in total.

local idx, prefix = ARGV[1], ARGV[2]
local function opt(v) if v == '' then return nil end return string.sub(v, 2) end
local user, state = opt(ARGV[3]), opt(ARGV[4])
local created_after, created_before, active_after = opt(ARGV[5]), opt(ARGV[6]), opt(ARGV[7])
local title = opt(ARGV[8])
local sort, desc = ARGV[9], ARGV[10] == 'desc'
local offset, limit = math.max(tonumber(ARGV[11]), 0), math.max(tonumber(ARGV[12]), 0)
local step = math.max(tonumber(ARGV[13]), 1)
local after_score, after_id = ARGV[14], ARGV[15]
local source, cursor_score, cursor_id = ARGV[16], ARGV[17], ARGV[18]
local bound, phase, top = ARGV[19], tonumber(ARGV[20]), ARGV[21]
-- Phases of a walk over activity times read in steps, the last one whole: each after
-- the first reads the sessions touched during the one before, so they shrink fast;
-- the last bounds the calls of a listing whose sessions are touched faster than read.
local MAX_PHASES = 3

-- Ranges: [low inclusive, high exclusive) on one sorted set.
local ranges = {}
if created_after or created_before then
  ranges.created = {created_after and tonumber(created_after), created_before and tonumber(created_before)}
end
if active_after then ranges.active = {tonumber(active_after), nil} end
local function bounds(r)
  local low, high = '-inf', '+inf'
  if r then
    if r[1] then low = int(r[1]) end
    if r[2] then high = '(' .. int(r[2]) end
  end
  return low, high
end

local function by_created(name)
  return name == 'created' or string.sub(name, 1, 5) == 'user:' or string.sub(name, 1, 6) == 'state:'
end
-- The range of a source's own scores the filter asks for.
local function range_of(name)
  if by_created(name) then return ranges.created end
  return ranges[name]
end

-- The smallest candidate set, and its size.
local function smallest()
  local chosen, size = nil, nil
  local function consider(name)
    local r, n = range_of(name), nil
    if r then n = redis.call('ZCOUNT', idx .. name, bounds(r))
    else n = redis.call('ZCARD', idx .. name) end
    if size == nil or n < size then chosen, size = name, n end
  end
  if user then consider('user:' .. user) end
  if state then consider('state:' .. state) end
  for name, _ in pairs(ranges) do consider(name) end
  if size == nil then
    if title then consider('created') else consider(sort) end
  end
  return chosen, size
end
local source_size
if source == '' then source, source_size = smallest() end
local low, high = bounds(range_of(source))

-- The predicates the source does not cover, checked on each of its members.
local function in_range(score, r)
  if not score then return false end  -- not in the set: Redis gives Lua false
  score = tonumber(score)
  return (r[1] == nil or score >= r[1]) and (r[2] == nil or score < r[2])
end
local function covered(name) return name == source or (name == 'created' and by_created(source)) end
local function matches(id)
  if user and not covered('user:' .. user) and not redis.call('ZSCORE', idx .. 'user:' .. user, id) then
    return false
  end
  if state and not covered('state:' .. state) and not redis.call('ZSCORE', idx .. 'state:' .. state, id) then
    return false
  end
  for name, r in pairs(ranges) do
    if not covered(name) and not in_range(redis.call('ZSCORE', idx .. name, id), r) then return false end
  end
  if title then
    local t = redis.call('HGET', prefix .. '{' .. id .. '}:meta', 'title')
    if not t or not string.find(t, title, 1, true) then return false end
  end
  return true
end
-- The sort key of a member read with its source score: nil if it left the sort set.
local in_sort_order = sort == source or (sort == 'created' and by_created(source))
local function sort_score(id, score)
  if sort == source then return score end
  return redis.call('ZSCORE', idx .. sort, id)
end

local function page_of(total, ids, read)
  local result = {0, total}
  for _, id in ipairs(ids) do
    local h = redis.call('HGETALL', prefix .. '{' .. id .. '}:meta')
    if #h > 0 then result[#result + 1] = h end
  end
  result[#result + 1] = read
  return result
end

-- Whether a match of sort score <score> and id <id> comes after the keyset position.
local function beyond(score, id)
  if after_score == '' then return true end
  local mine, theirs = tonumber(score), tonumber(after_score)
  if mine ~= theirs then
    if desc then return mine < theirs end
    return mine > theirs
  end
  if id == after_id then return false end
  if desc then return id_not_after(id, after_id) end
  return not id_not_after(id, after_id)
end

-- The first rank of <name> whose (score, id) is at or past the position, ascending:
-- past it (ids after) when <past>, else at it (ids not before).
local function rank_of_position(name, past)
  local first = redis.call('ZCOUNT', idx .. name, '-inf', '(' .. after_score)
  local last = redis.call('ZCOUNT', idx .. name, '-inf', after_score)
  while first < last do
    local middle = math.floor((first + last) / 2)
    local id = redis.call('ZRANGE', idx .. name, middle, middle)[1]
    local ahead = id_not_after(id, after_id)
    if past and ahead or not past and ahead and id ~= after_id then
      first = middle + 1
    else
      last = middle
    end
  end
  return first
end

-- A straight page after the keyset position: its ranks from the position on, within
-- the source's range [low, high).
local function straight_after()
  local low_rank = 0
  if low ~= '-inf' then low_rank = redis.call('ZCOUNT', idx .. source, '-inf', '(' .. low) end
  local high_rank = redis.call('ZCOUNT', idx .. source, '-inf', high)
  local first, last
  if desc then
    last = math.min(rank_of_position(source, false), high_rank) - 1 - offset
    first = math.max(last - limit + 1, low_rank)
  else
    first = math.max(rank_of_position(source, true), low_rank) + offset
    last = math.min(first + limit, high_rank) - 1
  end
  if limit == 0 or last < first then return {} end
  local ids = redis.call('ZRANGE', idx .. source, first, last)
  if desc then
    local reversed = {}
    for i = #ids, 1, -1 do reversed[#reversed + 1] = ids[i] end
    ids = reversed
  end
  return ids
end

if cursor_score == '' then
  local straight = in_sort_order and not title
  if user and not covered('user:' .. user) then straight = false end
  if state and not covered('state:' .. state) then straight = false end
  for name, _ in pairs(ranges) do if not covered(name) then straight = false end end
  if straight then
    local ids, walked = {}, 0
    if after_score ~= '' then
      ids = straight_after()  -- found by rank: only the page's members are read
    elseif limit > 0 then
      if desc then ids = redis.call('ZREVRANGEBYSCORE', idx .. source, high, low, 'LIMIT', offset, limit)
      else ids = redis.call('ZRANGEBYSCORE', idx .. source, low, high, 'LIMIT', offset, limit) end
      walked = math.min(offset, source_size)
    end
    return page_of(source_size, ids, walked + #ids)
  end

  if source_size <= step then
    local read = redis.call('ZRANGEBYSCORE', idx .. source, low, high, 'WITHSCORES')
    local scored = {}
    for i = 1, #read, 2 do
      local id = read[i]
      if matches(id) then
        local score = sort_score(id, read[i + 1])
        if score then scored[#scored + 1] = {tonumber(score), id} end
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
    local ids, total = {}, #scored
    if after_score ~= '' then
      local kept = {}
      for _, entry in ipairs(scored) do
        if beyond(entry[1], entry[2]) then kept[#kept + 1] = entry end
      end
      scored = kept
    end
    for i = offset + 1, math.min(offset + limit, #scored) do ids[#ids + 1] = scored[i][2] end
    return page_of(total, ids, #read / 2)
  end

  -- A range of activity times: walked up to the highest score it has now.
  top = redis.call('ZREVRANGE', idx .. source, 0, 0, 'WITHSCORES')[2]
  if source == 'active' then bound, phase = top, 1 end
end
local top_score = tonumber(top)
local walking = bound ~= ''
if walking then high = bound end

-- One step: the next <step> members of the source after the cursor (flat: id, score).
local read = {}
if cursor_score == '' then
  read = redis.call('ZRANGEBYSCORE', idx .. source, low, high, 'WITHSCORES', 'LIMIT', 0, step)
else
  -- The rest of the cursor's score (ids after its own), then the scores above it.
  -- Still there with its score, the cursor's rank gives where the rest begins, and
  -- at most <step> of them are read (many sessions can share a creation time: an
  -- import's); gone, each member of its score is compared with it.
  local rank = redis.call('ZRANK', idx .. source, cursor_id)
  local at = redis.call('ZSCORE', idx .. source, cursor_id)
  if rank and at and tonumber(at) == tonumber(cursor_score) then
    local before = redis.call('ZCOUNT', idx .. source, '-inf', '(' .. cursor_score)
    local rest = redis.call('ZRANGEBYSCORE', idx .. source, cursor_score, cursor_score,
      'LIMIT', rank - before + 1, step)
    for _, id in ipairs(rest) do
      read[#read + 1] = id
      read[#read + 1] = cursor_score
    end
  else
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', idx .. source, cursor_score, cursor_score)) do
      if not id_not_after(id, cursor_id) then
        read[#read + 1] = id
        read[#read + 1] = cursor_score
      end
    end
  end
  local room = step - #read / 2
  if room > 0 then
    local above = redis.call('ZRANGEBYSCORE', idx .. source, '(' .. cursor_score, high, 'WITHSCORES', 'LIMIT', 0, room)
    for _, value in ipairs(above) do read[#read + 1] = value end
  end
end
-- At the bound, the members above it (touched since the walk began), from position
-- <again> of read on: read before, perhaps, so one that no longer matches is said so.
local done, again = #read / 2 < step, nil
if walking then
  if phase > 1 then again = 1 end
  while #read / 2 < step do
    local above = redis.call('ZCOUNT', idx .. source, '(' .. bound, '+inf')
    if above == 0 then break end
    local room = step - #read / 2
    again = again or #read + 1
    if above <= room or phase >= MAX_PHASES then
      local rest = redis.call('ZRANGEBYSCORE', idx .. source, '(' .. bound, '+inf', 'WITHSCORES')
      for _, value in ipairs(rest) do read[#read + 1] = value end
      break
    end
    local top = redis.call('ZREVRANGE', idx .. source, 0, 0, 'WITHSCORES')[2]
    local more = redis.call('ZRANGEBYSCORE', idx .. source, '(' .. bound, top, 'WITHSCORES', 'LIMIT', 0, room)
    for _, value in ipairs(more) do read[#read + 1] = value end
    bound, phase, done = top, phase + 1, false
  end
end
local found, early = {}, 0
for i = 1, #read, 2 do
  local id = read[i]
  local score = matches(id) and sort_score(id, read[i + 1])
  if score and tonumber(read[i + 1]) <= top_score then early = early + 1 end
  if score then
    found[#found + 1] = id
    found[#found + 1] = score
  elseif again and i >= again then
    found[#found + 1] = id
    found[#found + 1] = ''
  end
end
local result
if done then
  result = {2, early}
else
  result = {1, source, read[#read], read[#read - 1], bound, phase or '', top, early}
end
for _, value in ipairs(found) do result[#result + 1] = value end
result[#result + 1] = #read / 2
return result

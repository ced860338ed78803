-- Count again what a session's log holds, as append.lua counts it: each entry's event
-- JSON ('e') and key ('k', when keyed), in bytes. A page of entries per call; the
-- caller carries the sum from call to call. The call that reads the log's end sets
-- 'bytes' to the sum, and moves the user's sum (the field <user> of <index
-- prefix>userbytes) by what it adds, in this same atomic step: an append that ran
-- before it is in the log it reads, and one that runs after it adds to the count it
-- sets, so none is lost or counted twice. Entries already summed never change: a log
-- is only appended to, and a session deleted or replaced under its id has another
-- epoch, which every call checks.
-- KEYS: meta, log
-- ARGV: index prefix, epoch (the session's when the recount began), the first seq
--       to read (as a decimal string), the bytes of the entries before it, page size,
--       'dry' to write nothing ('' : set the count)
-- Returns {0} if the session is gone or of another epoch; {1, next seq, sum} to go
-- on from there; {2, count before ('' : none), count set, user ('' : none)} once set
-- (or, dry, what it would set).

local meta, log = KEYS[1], KEYS[2]
local idx, epoch, start, page = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local dry = ARGV[6] == 'dry'
local s = redis.call('HMGET', meta, 'epoch', 'bytes', 'user', 'id')
if not s[1] or s[1] ~= epoch then return {0} end

local sum = tonumber(ARGV[4])
local entries = redis.call('XRANGE', log, start .. '-0', '+', 'COUNT', page)
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'e' or name == 'k' then sum = sum + #fields[i + 1] end
  end
end
if #entries == page then
  local last = string.match(entries[#entries][1], '^(%d+)')
  return {1, int(tonumber(last) + 1), int(sum)}
end

local before, user = tonumber(s[2]) or 0, s[3]
if dry then return {2, s[2] or '', int(sum), user or ''} end
redis.call('HSET', meta, 'bytes', int(sum))
if user and sum ~= before then
  -- Not clamped at 0 (unlike a delete's): the sum keeps its distance to the sum of the
  -- counts, whatever it was, until the rebuild of the sum (recount_user.lua) ends it.
  local total = redis.call('HINCRBY', idx .. 'userbytes', user, int(sum - before))
  if total == 0 then redis.call('HDEL', idx .. 'userbytes', user) end
  rebuild_follows(idx, user, s[4], sum - before)
end
return {2, s[2] or '', int(sum), user or ''}

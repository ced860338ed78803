-- Set a user's sum (the field <user> of <index prefix>userbytes) to the sum of the
-- 'bytes' of the user's sessions (the index <index prefix>user:<user>, each session
-- whose hash names the user), in steps of at most <step> sessions, so that a user of
-- many sessions does not hold Redis for as long as reading them all takes.
--
-- A user of no more than <step> sessions is read and set in the first call: one
-- atomic step. Otherwise the first call keeps what it read in the hash <index
-- prefix>rebuild:<user> (token, sum, and the cursor: 'score' and 'id' of the last
-- session read, in the index's order), and each call reads the sessions after the
-- cursor and moves it on; the call that reads the index's end sets the sum. Why that
-- sum is exact although appends, imports, deletes, replacements and sessions'
-- recounts run between the calls: at the end of every call, 'sum' is the sum of the
-- 'bytes' of the sessions up to the cursor (those whose hash names the user), as
-- they are then.
-- - A call adds the 'bytes' of the sessions it reads, as they are in that call, and
--   moves the cursor past them, in one atomic step.
-- - Every script that moves a session's 'bytes' moves 'sum' by as much when the
--   session is at or before the cursor (common.lua rebuild_follows), in its own
--   atomic step; a session after it moves nothing here, and is read as it is when
--   the cursor reaches it. A removal (delete, a replacement) counts as moving the
--   session's 'bytes' to 0, before the session leaves the index.
-- - A session joins the index with no 'bytes' (create.lua; an import adds them
--   later, followed as above), so one that joins before the cursor adds nothing that
--   'sum' lacks. A session's score (its creation time) does not change while it is
--   in the index, and neither does its user.
-- So the call that reads the rest holds the sum over every session of the index at
-- that moment, and sets it then. The hash expires <ttl> ms after each call: a
-- rebuild whose caller went away stops costing the scripts above anything, and stops
-- holding the user. One rebuild of a user at a time: a first call that finds another
-- under way returns {3}, and its caller waits. A later call that finds its rebuild's
-- hash gone (its caller stalled past <ttl>) returns {0}, having written nothing, and
-- its caller begins again. Every instance must run scripts that follow a rebuild (a
-- version with rebuild_follows): an older one's appends would go unseen.
-- ARGV: index prefix, key prefix ('<prefix>:'), user, token (the rebuild's), 'begin'
--       for the first call ('' after), step (sessions per call), ttl (ms)
-- Returns {2, sum before ('' : none), sum set} once set; {1} to go on; {0} to begin
-- again; {3}: another rebuild of the user is under way.

local idx, prefix, user, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local begin, step, ttl = ARGV[5] == 'begin', tonumber(ARGV[6]), ARGV[7]
local index, rebuild = idx .. 'user:' .. user, idx .. 'rebuild:' .. user

local read, total = {}, 0  -- flat: id, score, id, score...
if begin then
  if redis.call('EXISTS', rebuild) == 1 then return {3} end
  read = redis.call('ZRANGE', index, 0, step - 1, 'WITHSCORES')
else
  local r = redis.call('HMGET', rebuild, 'token', 'sum', 'score', 'id')
  if r[1] ~= token then return {0} end
  total = tonumber(r[2])
  -- The rest of the cursor's score (ids after its own), then the scores above it.
  -- Sessions of one score (created in the same microsecond) are read together.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, r[3], r[3])) do
    if not id_not_after(id, r[4]) then
      read[#read + 1] = id
      read[#read + 1] = r[3]
    end
  end
  local room = step - #read / 2
  if room > 0 then
    local above = redis.call('ZRANGEBYSCORE', index, '(' .. r[3], '+inf', 'WITHSCORES', 'LIMIT', 0, room)
    for _, value in ipairs(above) do read[#read + 1] = value end
  end
end

for i = 1, #read, 2 do
  local m = redis.call('HMGET', prefix .. '{' .. read[i] .. '}:meta', 'user', 'bytes')
  if m[1] == user then total = total + (tonumber(m[2]) or 0) end
end

if #read / 2 < step then  -- the index's end: every session of it is in the sum
  redis.call('DEL', rebuild)
  local before = redis.call('HGET', idx .. 'userbytes', user)
  if total ~= 0 then
    redis.call('HSET', idx .. 'userbytes', user, int(total))
  else
    redis.call('HDEL', idx .. 'userbytes', user)
  end
  return {2, before or '', int(total)}
end
redis.call('HSET', rebuild, 'token', token, 'sum', int(total), 'score', read[#read], 'id', read[#read - 1])
redis.call('PEXPIRE', rebuild, ttl)
return {1}

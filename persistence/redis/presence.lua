-- Presence of one session: its connections on every instance, each a member
-- '<role>|<connection id>' of a sorted set scored by its heartbeat deadline (ms, Redis
-- clock). Every call first removes the connections whose deadline passed and
-- announces them as left. A refresh registers again (and announces as joined) a
-- connection that went missing: its instance lost Redis, or stalled, for longer than
-- the heartbeat (another instance swept it as dead). A leave marks its members gone
-- for twice the heartbeat, and a join or refresh adds none so marked: a refresh (or a
-- join) its instance gave up on may reach Redis before it gave up and run after the
-- leave, sent at once on another connection; it would register the connection that
-- left again, announce it joined, and count it until the heartbeat swept it.
-- A join or refresh also records, in the caller's instance's own sorted set, the
-- session (with the epoch) scored by the same deadline, and the instance itself in the
-- set of instances by its latest deadline: a survivor that finds the instance's
-- deadline passed reads which sessions it was in (orphans.lua) and calls this script in
-- mode 'park' on them, which sweeps each, and writes one left with no connection
-- 'disconnected', as state.lua would (updated now, activity untouched), in this same
-- step: never over a connection registered meanwhile, and once however many sweep.
-- An instance writing a state it owes (server/owed_states.py) parks so too, its own
-- members whose leave failed in an outage left first, in the same step (as a leave).
-- A park names many sessions in one call: a call each cost the caller a command to
-- pack and a reply to read per session, which bounded a stop's writes (bench/RESULTS.md).
-- Only a refresh drops the caller's own entries past their deadline (a join adds its
-- own): the owing instance's heartbeat records again the sessions it owes first
-- (orphans.lua 'hold'), so that a kill before its write leaves them to the sweep.
-- KEYS: conns, meta, gone (the members left lately -> until when, ms), the instance's
--       sessions ('<id> <epoch>' -> deadline, ms), the instances (name -> deadline);
--       in mode park, conns, meta and gone of each session in turn
-- ARGV: session id, instance, heartbeat ms, publish command, channel, mode (join,
--       leave, refresh, park), epoch ('' : any; else the epoch of the session the
--       members are of, as served: common.lua served_epoch), the generation key, then
--       members ('<role>|<id>'); in mode park, the first, fifth and seventh are '',
--       the ninth is the index prefix, then for each session in turn its id, its
--       channel, its epoch, how many members to leave first, and those members
-- Returns the session-wide count after the call (a refresh of members: the count, how
-- many of them it registered again, and the session's stored state, '' if none: the
-- caller acts on a session another instance parked, and reads nothing of the rest);
-- -1, and nothing done (no member added or removed, nothing swept, nothing
-- published), if an epoch is given and the session under the id is not of it (-2 if
-- it is of this log as an earlier generation served it) (deleted, or replaced: a
-- stale instance's members never count in the session that took the id; deleting or
-- replacing a session removes its conns). A park returns three values a session in
-- turn: the count (-1 as above: a park of a session of an earlier generation is of
-- the same session, and goes on), 1 if it wrote the session disconnected, else 0, and
-- the session's stored state after ('' if none, or if connections are left); or -3,
-- 0 and the error Redis raised in that session's park alone (its keys of another type).

local GONE_MAX = 1024  -- marks kept per session: the newest, which a late call may meet
local instance, heartbeat, publish, mode = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = int(now + heartbeat)

-- A session no connection is left in, of instances that died: disconnected, as the
-- last one's leave would have written it; not one closed, expired or parked already.
-- 1 if it wrote, and the state after.
local function park(meta, session, idx)
  local s = redis.call('HMGET', meta, 'state', 'expires', 'created', 'updated')
  local at = t[1] .. string.format('%06d', tonumber(t[2]))  -- common.lua clock(), as read
  if (s[1] ~= 'active' and s[1] ~= 'idle') or has_expired(s[1], s[2], at) then
    return 0, s[1] or ''
  end
  write_state(meta, idx, session, s[1], 'disconnected', s[3], stamp_after(s[4], at))
  return 1, 'disconnected'
end

-- One session's presence: the dead swept, then ARGV[first..last] joined, left or
-- refreshed as ``mode`` says. The count after and how many it registered again, or
-- -1 / -2 (the epoch), nothing done.
local function presence(conns, meta, gone, id, channel, epoch, first, last)
  if epoch ~= '' then
    local stored = redis.call('HGET', meta, 'epoch')
    local mismatch = epoch_mismatch(epoch, stored, served_epoch(stored, ARGV[8]))
    -- A park of a session recorded before a restart of a lossy Redis: the same session.
    if mismatch == 'GENERATION' and mode ~= 'park' then return -2, 0 end
    if mismatch == 'NOTFOUND' then return -1, 0 end
  end

  local function announce(member, joined, count, expired)
    local bar = string.find(member, '|', 1, true)
    notify(publish, channel, 'p' .. cjson.encode({
      s = id, c = string.sub(member, bar + 1), r = string.sub(member, 1, bar - 1),
      j = joined, n = count, i = instance, x = expired}))
  end

  local dead = redis.call('ZRANGEBYSCORE', conns, '-inf', now)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', conns, '-inf', now)
  end
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)

  -- The members' own notices wait until the swept ones are out (announced first, so
  -- every listener hears the sweep before the change), and the swept ones carry the
  -- count after the whole call: the caller tells its own peers of its join or leave at
  -- once, with that count, and hears the sweep's notices only later on the channel, so
  -- a count from before its change would follow one from after it (its peers would see
  -- one connection fewer than there are until the next notice).
  local again = 0
  local changes = {}
  local leaving = mode == 'leave' or mode == 'park'
  for i = first, last do
    local member = ARGV[i]
    if leaving then
      redis.call('ZADD', gone, int(now + heartbeat * 2), member)
      if redis.call('ZREM', conns, member) == 1 then
        changes[#changes + 1] = {member, false, redis.call('ZCARD', conns)}
      end
    elseif redis.call('ZSCORE', gone, member) then
      -- left already: a late call of its instance's, which registers nothing
    elseif mode == 'join' then
      redis.call('ZADD', conns, deadline, member)
      changes[#changes + 1] = {member, true, redis.call('ZCARD', conns)}
    elseif redis.call('ZADD', conns, deadline, member) == 1 then
      again = again + 1
      changes[#changes + 1] = {member, true, redis.call('ZCARD', conns)}
    end
  end
  if leaving and last >= first then
    redis.call('ZREMRANGEBYRANK', gone, 0, -(GONE_MAX + 1))
    redis.call('PEXPIRE', gone, heartbeat * 2)
  end
  local count = redis.call('ZCARD', conns)
  for _, member in ipairs(dead) do announce(member, false, count, true) end
  for _, change in ipairs(changes) do announce(change[1], change[2], change[3], false) end
  if count > 0 then
    redis.call('PEXPIRE', conns, heartbeat * 2)
  end
  return count, again
end

-- The park of the session whose id is ARGV[at] and whose keys follow KEYS[k].
local function park_one(at, k, n)
  local id, channel, epoch, meta = ARGV[at], ARGV[at + 1], ARGV[at + 2], KEYS[k + 2]
  local count = presence(KEYS[k + 1], meta, KEYS[k + 3], id, channel, epoch, at + 4, at + 3 + n)
  if count ~= 0 then return count, 0, '' end
  return count, park(meta, id, ARGV[9])
end

if mode == 'park' then
  local parked = {}
  local at, k = 10, 0
  while at <= #ARGV do
    local n = tonumber(ARGV[at + 3])
    -- One session's keys that something else wrote over (another type) fail its park
    -- alone: -3 and Redis's error, what it wrote before it kept, as a call of its own.
    local ok, count, wrote, state = pcall(park_one, at, k, n)
    if not ok then
      count, wrote, state = -3, 0, type(count) == 'table' and count.err or tostring(count)
    end
    parked[#parked + 1] = count
    parked[#parked + 1] = wrote
    parked[#parked + 1] = state
    at, k = at + 4 + n, k + 3
  end
  return parked
end

local id, epoch = ARGV[1], ARGV[7]
local count, again = presence(KEYS[1], KEYS[2], KEYS[3], id, ARGV[5], epoch, 9, #ARGV)
if count < 0 then return count end
if mode ~= 'leave' and #ARGV >= 9 then
  if mode == 'refresh' then
    -- Its own entries past their deadline are sessions it no longer holds, nor owes.
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  end
  redis.call('ZADD', KEYS[4], deadline, id .. ' ' .. epoch)
  redis.call('ZADD', KEYS[5], 'GT', deadline, instance)
end
if mode == 'refresh' and #ARGV >= 9 then
  return {count, again, redis.call('HGET', KEYS[2], 'state') or ''}
end
return count

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
-- mode 'park' on each, which sweeps, and writes a session left with no connection
-- 'disconnected', as state.lua would (updated now, activity untouched), in this same
-- step: never over a connection registered meanwhile, and once however many sweep.
-- KEYS: conns, meta, gone (the members left lately -> until when, ms), the instance's
--       sessions ('<id> <epoch>' -> deadline, ms), the instances (name -> deadline)
-- ARGV: session id, instance, heartbeat ms, publish command, channel, mode (join,
--       leave, refresh, park), epoch ('' : any; else the epoch of the session the
--       members are of, as served: common.lua served_epoch), the generation key, then
--       members ('<role>|<id>'); in mode park, the index prefix instead
-- Returns the session-wide count after the call (a refresh of members: the count, how
-- many of them it registered again, and the session's stored state, '' if none: the
-- caller acts on a session another instance parked, and reads nothing of the rest; a
-- park: the count and 1 if it wrote the session disconnected, else 0);
-- -1, and nothing done (no member
-- added or removed, nothing swept, nothing published), if an epoch is given and the
-- session under the id is not of it (-2 if it is of this log as an earlier
-- generation served it) (deleted, or replaced: a stale instance's
-- members never count in the session that took the id; deleting or replacing a
-- session removes its conns).

local conns, gone = KEYS[1], KEYS[3]
local GONE_MAX = 1024  -- marks kept per session: the newest, which a late call may meet
local id, instance, heartbeat = ARGV[1], ARGV[2], tonumber(ARGV[3])
local publish, channel, mode, epoch = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if epoch ~= '' then
  local stored = redis.call('HGET', KEYS[2], 'epoch')
  local mismatch = epoch_mismatch(epoch, stored, served_epoch(stored, ARGV[8]))
  -- A park of a session recorded before a restart of a lossy Redis: the same session.
  if mismatch == 'GENERATION' and mode ~= 'park' then return -2 end
  if mismatch == 'NOTFOUND' then return -1 end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A session no connection is left in, of instances that died: disconnected, as the
-- last one's leave would have written it; not one closed, expired or parked already.
local function park(meta, session, idx)
  local s = redis.call('HMGET', meta, 'state', 'expires', 'created', 'updated')
  local at = clock()
  if (s[1] ~= 'active' and s[1] ~= 'idle') or has_expired(s[1], s[2], at) then return 0 end
  write_state(meta, idx, session, s[1], 'disconnected', s[3], stamp_after(s[4], at))
  return 1
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
-- once, with that count, and hears the sweep's notices only later on the channel, so a
-- count from before its change would follow one from after it (its peers would see
-- one connection fewer than there are until the next notice).
local deadline = int(now + heartbeat)
local again = 0
local changes = {}
local last = mode == 'park' and 8 or #ARGV  -- a park's ninth is the index prefix
for i = 9, last do
  local member = ARGV[i]
  if mode == 'leave' then
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
if mode == 'leave' and #ARGV >= 9 then
  redis.call('ZREMRANGEBYRANK', gone, 0, -(GONE_MAX + 1))
  redis.call('PEXPIRE', gone, heartbeat * 2)
end
local count = redis.call('ZCARD', conns)
for _, member in ipairs(dead) do announce(member, false, count, true) end
for _, change in ipairs(changes) do announce(change[1], change[2], change[3], false) end
if count > 0 then
  redis.call('PEXPIRE', conns, heartbeat * 2)
end
if mode == 'park' then
  return {count, count == 0 and park(KEYS[2], id, ARGV[9]) or 0}
end
if mode ~= 'leave' and #ARGV >= 9 then
  -- Its own entries past their deadline are sessions it no longer holds.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[4], deadline, id .. ' ' .. epoch)
  redis.call('ZADD', KEYS[5], 'GT', deadline, instance)
end
if mode == 'refresh' and #ARGV >= 9 then
  return {count, again, redis.call('HGET', KEYS[2], 'state') or ''}
end
return count

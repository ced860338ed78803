-- The instances that registered presence (presence.lua records each, by its latest
-- connection deadline, and the sessions it was in), as survivors sweep those that
-- died: an instance whose deadline passed refreshed nothing for a whole heartbeat.
-- Mode 'claim' (KEYS: the instances; ARGV: mode, heartbeat ms, at most how many):
--   each instance whose deadline passed, followed by the new deadline it is given,
--   one heartbeat away, so that other survivors leave it to this one meanwhile (and
--   take it up should this one die before it is done).
-- Mode 'renew' (KEYS: the instances; ARGV: mode, heartbeat ms, the instance, the
--   deadline this sweeper gave it): one heartbeat more for a sweep still under way,
--   the new deadline; false if the deadline is another's (a survivor took it up
--   after this claim ran out, or the instance refreshed: alive after all) or the
--   instance is gone (swept whole).
-- Mode 'take' (KEYS: one instance's sessions; ARGV: mode, at most how many): its
--   entries '<id> <epoch>' whose deadline passed, each followed by its score (an
--   entry refreshed since, its instance alive after all, is not among them).
-- Mode 'hold' (KEYS: one instance's sessions, the instances; ARGV: mode, heartbeat
--   ms, the instance, then entries '<id> <epoch>'): the entries recorded again, one
--   heartbeat away, as presence.lua's join records one, and the instance by that
--   deadline: sessions the instance owes a state with none of its connections left
--   in them (server/owed_states.py), which a survivor parks should it die first.
-- Mode 'drop' (KEYS: one instance's sessions, the instances; ARGV: mode, the
--   instance, then pairs of an entry and the score 'take' read): the entries parked,
--   those refreshed since kept; the instance goes once none is left.
-- A claim's deadline (and a renewal's) is half a millisecond short of the one a refresh
-- (presence.lua) or a 'hold' of the same millisecond gives: these take the instance
-- back with ZADD GT even then, and 'renew' finds it another's. At a whole millisecond
-- the two were equal: a refresh in the renewal's own millisecond left the sweeper its
-- claim on an instance alive after all (tests/test_redis_presence_dead.py, 1 run in 200).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local function claim_deadline()
  return int(now + tonumber(ARGV[2]) - 1) .. '.5'
end
if mode == 'claim' then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  local claimed = {}
  for _, name in ipairs(dead) do
    redis.call('ZADD', KEYS[1], 'XX', claim_deadline(), name)
    claimed[#claimed + 1] = name
    claimed[#claimed + 1] = redis.call('ZSCORE', KEYS[1], name)
  end
  return claimed
end
if mode == 'renew' then
  if redis.call('ZSCORE', KEYS[1], ARGV[3]) ~= ARGV[4] then
    return false
  end
  redis.call('ZADD', KEYS[1], 'XX', claim_deadline(), ARGV[3])
  return redis.call('ZSCORE', KEYS[1], ARGV[3])
end
if mode == 'hold' then
  local deadline = int(now + tonumber(ARGV[2]))
  for i = 4, #ARGV do
    redis.call('ZADD', KEYS[1], deadline, ARGV[i])
  end
  redis.call('ZADD', KEYS[2], 'GT', deadline, ARGV[3])
  return 0
end
if mode == 'take' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
    tonumber(ARGV[2]))
end
for i = 3, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 0

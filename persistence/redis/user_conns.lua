-- One user's connections on every instance, for --max-connections-per-user: each a
-- member '<instance>:<connection id>' of a sorted set scored by its heartbeat deadline
-- (ms, Redis clock). Every call but a release first removes the members whose
-- deadline passed (their instance died, or lost Redis for longer than the heartbeat).
-- KEYS: the user's conns ('<prefix>:{u:<user>}:conns', a slot of its own)
-- ARGV: mode ('acquire', 'release', 'refresh'), heartbeat ms, limit (acquire only;
--       0: no cap), then members
-- Returns the user's count after the call; an acquire refused (the user has `limit`
-- members already, and the one given is not among them) returns -1 and adds nothing.

local conns = KEYS[1]
local mode, heartbeat, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if mode == 'release' then
  for i = 4, #ARGV do redis.call('ZREM', conns, ARGV[i]) end
  return redis.call('ZCARD', conns)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', conns, '-inf', now)
if mode == 'acquire' and limit > 0 and redis.call('ZCARD', conns) >= limit
    and not redis.call('ZSCORE', conns, ARGV[4]) then
  return -1
end
local deadline = int(now + heartbeat)
for i = 4, #ARGV do redis.call('ZADD', conns, deadline, ARGV[i]) end
local count = redis.call('ZCARD', conns)
if count > 0 then
  redis.call('PEXPIRE', conns, heartbeat * 2)
end
return count

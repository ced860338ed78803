-- One user's connections on every instance, for --max-connections-per-user: each a
-- member '<instance>:<connection id>' of a sorted set scored by its heartbeat deadline
-- (ms, Redis clock). Every call first removes the members whose deadline passed
-- (their instance died, or lost Redis for longer than the heartbeat).
-- A release leaves the member in the user's 'gone' set until twice the heartbeat has
-- passed, and an acquire or refresh adds no member found there: the call may be one
-- its instance gave up on (a refresh cut off by its timeout or a shutdown, an acquire
-- abandoned at the attach's deadline) whose bytes reached Redis before it gave up and
-- run after the release, on another connection. Without the mark that late call
-- would count the closed connection again until its deadline (one heartbeat).
-- KEYS: the user's conns ('<prefix>:{u:<user>}:conns', a slot of its own), the
--       user's released members ('<prefix>:{u:<user>}:gone', the same slot)
-- ARGV: mode ('acquire', 'release', 'refresh'), heartbeat ms, limit (acquire only;
--       0: no cap), then members
-- Returns the user's count after the call; an acquire refused (the user has `limit`
-- members already, and the one given is not among them) returns -1 and adds nothing.

local conns, gone = KEYS[1], KEYS[2]
local mode, heartbeat, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local GONE_MAX = 1024  -- marks kept per user: the newest, which a late call may meet

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', conns, '-inf', now)
redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)
if mode == 'release' then
  local until_ms = int(now + heartbeat * 2)
  for i = 4, #ARGV do
    redis.call('ZREM', conns, ARGV[i])
    redis.call('ZADD', gone, until_ms, ARGV[i])
  end
  redis.call('ZREMRANGEBYRANK', gone, 0, -(GONE_MAX + 1))
  redis.call('PEXPIRE', gone, heartbeat * 2)
  return redis.call('ZCARD', conns)
end

if mode == 'acquire' and limit > 0 and redis.call('ZCARD', conns) >= limit
    and not redis.call('ZSCORE', conns, ARGV[4]) then
  return -1
end
local deadline = int(now + heartbeat)
for i = 4, #ARGV do
  if not redis.call('ZSCORE', gone, ARGV[i]) then redis.call('ZADD', conns, deadline, ARGV[i]) end
end
local count = redis.call('ZCARD', conns)
if count > 0 then
  redis.call('PEXPIRE', conns, heartbeat * 2)
end
return count

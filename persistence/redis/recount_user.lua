-- Set a user's sum (the field <user> of <index prefix>userbytes) to the sum of the
-- 'bytes' of the user's sessions (the index <index prefix>user:<user>), in one atomic
-- step: appends, imports and removals move a session's 'bytes' and its user's sum
-- together in their own scripts, so the sum is exact from here on, whatever ran
-- before. A sum of 0 is no field, as a delete leaves it.
-- ARGV: index prefix, key prefix ('<prefix>:'), user
-- Returns {sum before ('' : none), sum set}

local idx, prefix, user = ARGV[1], ARGV[2], ARGV[3]
local total = 0
for _, id in ipairs(redis.call('ZRANGE', idx .. 'user:' .. user, 0, -1)) do
  local m = redis.call('HMGET', prefix .. '{' .. id .. '}:meta', 'user', 'bytes')
  if m[1] == user then total = total + (tonumber(m[2]) or 0) end
end
local before = redis.call('HGET', idx .. 'userbytes', user)
if total ~= 0 then
  redis.call('HSET', idx .. 'userbytes', user, int(total))
else
  redis.call('HDEL', idx .. 'userbytes', user)
end
return {before or '', int(total)}

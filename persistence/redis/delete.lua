-- Remove a session, its log and its index entries, and tell every instance. With
-- mode 'expired' only a session whose TTL has passed goes (cleanup); with a lease
-- key, only while that lease still holds the caller's token (the fence: a cleanup
-- that stalled past its lease cannot delete anything).
-- KEYS: meta, log, keys, msgs, conns
-- ARGV: id, index prefix, publish command ('' : the caller publishes), channel,
--       mode ('any' or 'expired'), lease key (''), lease token
-- Returns the removed session's epoch (or 1, if it had none), 0 if it was not there
-- (or not expired).

local id, idx, publish, channel, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if ARGV[6] ~= '' and redis.call('GET', ARGV[6]) ~= ARGV[7] then fail('FENCED') end
local s = redis.call('HMGET', KEYS[1], 'user', 'state', 'expires', 'epoch', 'bytes')
if not s[2] then
  if mode == 'expired' then return 0 end
  fail('NOTFOUND')
end
if mode == 'expired' and not has_expired(s[2], s[3], clock()) then return 0 end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
rebuild_follows(idx, s[1] or nil, id, -(tonumber(s[5]) or 0))  -- while still indexed
index_remove(idx, id, s[1] or nil, s[2])
user_bytes_freed(idx, s[1], s[5])
notify(publish, channel, 'deleted', s[4])
return s[4] or 1

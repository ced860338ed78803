-- Move a session to another state, as the state table allows; a move to closed
-- tells every instance, so that they end the session's subscriptions.
-- KEYS: meta
-- ARGV: id, index prefix, target state, the states it may be reached from (space
--       separated), publish command ('' : the caller publishes), channel, epoch
--       ('' : any; else the epoch of the session meant, as served (common.lua
--       served_epoch): one of another epoch, created again under the id or replaced,
--       is NOTFOUND and left as it is; this session as an earlier generation served
--       it is GENERATION, left as it is too), the updated time the caller read
--       ('' : any; else a session updated since, by activity or a state, is left
--       as it is, checked after everything that fails)
-- The state's updated_at is Redis's TIME, or just past the one stored if that is not
-- behind it (common.lua stamp_after).
-- Returns the metadata hash (HGETALL).

local meta = KEYS[1]
local id, idx, target, allowed, publish, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local s = redis.call('HMGET', meta, 'state', 'expires', 'created', 'epoch', 'updated')
if not s[1] then fail('NOTFOUND') end
check_served(ARGV[7], s[4], served_epoch(s[4], idx .. 'generation'))
local current = s[1]
if current ~= target and not string.find(' ' .. allowed .. ' ', ' ' .. current .. ' ', 1, true) then
  fail('INVALID ' .. current)
end
local now = clock()
if target ~= 'expired' and has_expired(current, s[2], now) then fail('EXPIRED') end
local read_updated = ARGV[8] or ''
if read_updated ~= '' and read_updated ~= s[5] then return redis.call('HGETALL', meta) end
write_state(meta, idx, id, current, target, s[3], stamp_after(s[5], now))
if current ~= target and target == 'closed' then notify(publish, channel, 'closed', s[4]) end
return redis.call('HGETALL', meta)

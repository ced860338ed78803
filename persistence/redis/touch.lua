-- Record activity on a session now (the sliding TTL starts again); a closed session
-- has no activity: it is left as it closed (its TTL runs from the close). Now is
-- Redis's TIME, or just past the session's updated_at if that is not behind it
-- (common.lua stamp_after).
-- KEYS: meta
-- ARGV: id, index prefix, epoch ('' : any; else the epoch of the session meant, as
--       served (common.lua served_epoch): one of another epoch, created again under
--       the id or replaced, is NOTFOUND and left as it is; this session as an earlier
--       generation served it is GENERATION, left as it is too)
-- Returns 1 when touched, 0 when closed (errors: NOTFOUND, EXPIRED, as before).

local meta = KEYS[1]
local id, idx = ARGV[1], ARGV[2]
local s = redis.call('HMGET', meta, 'state', 'expires', 'ttl', 'epoch', 'updated')
if not s[1] then fail('NOTFOUND') end
check_served(ARGV[3], s[4], served_epoch(s[4], idx .. 'generation'))
local now = clock()
if has_expired(s[1], s[2], now) then fail('EXPIRED') end
if s[1] == 'closed' then return 0 end
record_activity(meta, idx, id, stamp_after(s[5], now), s[3])
return 1

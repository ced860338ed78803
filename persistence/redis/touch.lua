-- Record activity on a session now (the sliding TTL starts again).
-- KEYS: meta
-- ARGV: id, index prefix

local meta = KEYS[1]
local id, idx = ARGV[1], ARGV[2]
local s = redis.call('HMGET', meta, 'state', 'expires', 'ttl')
if not s[1] then fail('NOTFOUND') end
local now = clock()
if has_expired(s[1], s[2], now) then fail('EXPIRED') end
record_activity(meta, idx, id, now, s[3])
return 1

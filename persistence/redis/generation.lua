-- The store's generation (common.lua served_epoch) against the run of Redis that
-- holds it: a compare-and-set, so that several instances that see one restart of
-- Redis change it once. A Redis that may lose writes it acknowledged, restarted, may
-- have lost some: every session's epoch then changes, by a fresh token, since nothing
-- left in Redis tells which sessions lost what. A Redis that keeps what it
-- acknowledged keeps its token across restarts.
-- KEYS: the generation hash (fields run, token, lossy)
-- ARGV: the run_id of this Redis (INFO server), '1' when the caller finds that it may
--       lose writes it acknowledged (or cannot tell), a fresh token, the index prefix
-- Returns {token, 1 if it changed here else 0}

local key, run, lossy, fresh, idx = KEYS[1], ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
local g = redis.call('HMGET', key, 'run', 'token', 'lossy')
local token = g[2] or ''
if g[1] == run then
  if lossy and g[3] ~= '1' then redis.call('HSET', key, 'lossy', '1') end
  return {token, 0}
end
local changed = false
if g[1] then
  -- Another run: the last one's acknowledged writes may be gone if it could lose
  -- them (as recorded while it ran) or if this one can (its settings, read now).
  changed = lossy or g[3] == '1'
else
  -- No record: a first open of this version, or a restart that lost the record
  -- itself. On a lossy Redis that holds sessions, their history may be cut short.
  changed = lossy and redis.call('ZCARD', idx .. 'created') > 0
end
if changed then token = fresh end
redis.call('HSET', key, 'run', run, 'token', token, 'lossy', lossy and '1' or '0')
return {token, changed and 1 or 0}

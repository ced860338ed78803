-- Set an imported session's state, times, ttl and extra as another store held them,
-- and move its index entries with them. A move to closed tells every instance, as
-- state.lua's does: the session's subscriptions there end (an import may run into a
-- store that instances serve).
-- KEYS: meta
-- ARGV: id, index prefix, state, updated, active, expires (''), ttl (''), extra JSON,
--       publish command ('' : the caller publishes), channel
-- Returns the session's epoch (1 if it has none) when it was closed here, else 0.
-- NOTFOUND, or INVALID <state> for a session closed or expired that the import would
-- move to a state the state table does not reach from there (nothing written).

local meta = KEYS[1]
local id, idx = ARGV[1], ARGV[2]
local h = redis.call('HGETALL', meta)
if #h == 0 then fail('NOTFOUND') end
local old = hash_of(h)
-- Closed or expired since the run planned (an instance serves the store): final, as
-- the state table has it (closed may still expire); a run must not reopen it.
local final = old.state == 'closed' or old.state == 'expired'
if final and ARGV[3] ~= old.state and not (old.state == 'closed' and ARGV[3] == 'expired') then
  fail('INVALID ' .. old.state)
end
local m = {id = id, user = old.user, created = old.created, msgs = old.msgs,
           state = ARGV[3], updated = ARGV[4], active = ARGV[5]}
redis.call('HSET', meta, 'state', m.state, 'updated', m.updated, 'active', m.active, 'extra', ARGV[8])
redis.call('HDEL', meta, 'expires', 'ttl')
if ARGV[6] ~= '' then
  m.expires = ARGV[6]
  redis.call('HSET', meta, 'expires', ARGV[6])
end
if ARGV[7] ~= '' then redis.call('HSET', meta, 'ttl', ARGV[7]) end
index_remove(idx, id, old.user, old.state)
index_add(idx, id, m)
if m.state ~= 'closed' or old.state == 'closed' then return 0 end
notify(ARGV[9], ARGV[10], 'closed', old.epoch)
return old.epoch or 1

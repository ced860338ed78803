-- Create a session: refuse an id in use and a store at its maximum, write the
-- metadata hash and index it. With replace 'expired', a session of the id whose TTL
-- has passed (by Redis's clock) counts as missing: it goes, with its log, keys,
-- history, connections and index entries, every instance told (as at a delete), and
-- the new one takes its place in this same script.
-- KEYS: meta, log, keys, msgs, conns
-- ARGV: id, index prefix, max sessions ('' : no limit), replace ('expired' or ''),
--       publish command ('' : the caller publishes), channel, the creator's now ('' : the
--       times are kept as given), the most sessions the new session's user may keep
--       not closed, and in all ('' : no cap), then HSET field/value pairs
-- The user's caps are counted here, in the step that creates the session, so that two
-- instances creating for one user at once never both take the last place: in all, the
-- user's index (ZCARD); not closed, those of it not in the closed state's index
-- (ZINTERCARD, read only near the cap and only as far as decides it). A session
-- replaced goes with the creation: it is not counted. Over a cap: OWNERSTORED or
-- OWNERLIVE and the count, nothing written.
-- Made now (the server's sessions: RedisClock.made_now), a session's times are Redis's:
-- 'updated' becomes this script's TIME, and 'created', 'active' and 'expires' move with
-- it (a TTL stays a TTL, a session made expired stays so), to the microsecond, not its
-- creator's reading of Redis's clock (off by up to half a round trip). Never behind
-- the replaced session's 'updated': an updated_since cursor that saw that one sees
-- this one too, whatever Redis's clock did meanwhile.
-- The epoch is stored with the store's generation token of now, if it has one
-- (common.lua epoch_parts): served as given until that token changes.
-- Returns the replaced session's epoch (or 1, if it had none) if it replaced an
-- expired session, else 0.

local meta = KEYS[1]
local id, idx, max, replace, publish, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local old = redis.call('HMGET', meta, 'user', 'state', 'expires', 'epoch', 'bytes', 'updated')
local replaced = 0
if old[2] then
  if replace ~= 'expired' or not has_expired(old[2], old[3], clock()) then fail('EXISTS') end
  replaced = old[4] or 1
elseif max ~= '' and redis.call('ZCARD', idx .. 'created') >= tonumber(max) then
  fail('FULL')
end
local max_live, max_stored = ARGV[8], ARGV[9]
local fields = {}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
local owner = hash_of(fields).user  -- the times in fields move below: read it alone
if owner and (max_live ~= '' or max_stored ~= '') then
  local mine = idx .. 'user:' .. owner
  local stored = redis.call('ZCARD', mine)
  local closed_replaced = 0  -- the replaced session, still in the indexes, goes
  if replaced ~= 0 and old[1] == owner then
    stored = stored - 1
    if old[2] == 'closed' then closed_replaced = 1 end
  end
  if max_stored ~= '' and stored >= tonumber(max_stored) then fail('OWNERSTORED ' .. stored) end
  if max_live ~= '' and stored >= tonumber(max_live) then
    -- Not closed: fewer than the cap once more than 'room' of them are closed.
    local room = stored - tonumber(max_live)
    local limit = room + 1 + closed_replaced
    local closed = redis.call('ZINTERCARD', 2, mine, idx .. 'state:closed', 'LIMIT', limit)
    closed = closed - closed_replaced
    if closed <= room then fail('OWNERLIVE ' .. (stored - closed)) end
  end
end
if ARGV[7] ~= '' then
  local now = tonumber(stamp_after(replaced ~= 0 and old[6] or nil, clock()))
  local moved = now - tonumber(ARGV[7])
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'created' or name == 'updated' or name == 'active' or name == 'expires' then
      fields[i + 1] = int(tonumber(fields[i + 1]) + moved)
    end
  end
end
local token = redis.call('HGET', idx .. 'generation', 'token')
for i = 1, #fields, 2 do
  if fields[i] == 'epoch' and token and token ~= '' then
    fields[i + 1] = fields[i + 1] .. '~' .. token
  end
end
if replaced ~= 0 then
  rebuild_follows(idx, old[1] or nil, id, -(tonumber(old[5]) or 0))  -- while still indexed
  index_remove(idx, id, old[1] or nil, old[2])
  user_bytes_freed(idx, old[1], old[5])
  redis.call('UNLINK', meta, KEYS[5])
  notify(publish, channel, 'deleted', old[4])
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', meta, unpack(fields))
index_add(idx, id, hash_of(fields))
return replaced

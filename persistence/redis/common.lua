-- Shared by every Bamboo script: prepended to each one before it is loaded.
-- Times are strings of integer microseconds since the epoch: a Lua number would print
-- in %.14g and lose digits, so arithmetic goes through int().

local function int(n)
  return string.format('%.0f', n)
end

local function clock()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

-- The time to stamp a session's change with: Redis's clock, or a microsecond past the
-- session's stored 'updated' where that is not behind it: Redis's clock stepped back
-- since, a failover went to a replica whose clock is behind, or an earlier writer's
-- clock was ahead. So a session's updated_at never goes back, and each change is later
-- than the one before (an updated_since cursor that saw one sees the next). Expiry
-- is still judged by clock(): a TTL from a stamp held ahead runs late, never early.
local function stamp_after(updated, now)
  local held = updated and tonumber(updated)
  if held and held >= tonumber(now) then return int(held + 1) end
  return now
end

-- A typed error: the client maps the word after BAMBOO_ to an exception. Scripts
-- check everything before their first write, since Redis does not roll a script back.
local function fail(code)
  error({err = 'BAMBOO_' .. code})
end

-- A stored epoch is the epoch, then '~' and the store's token when the session was
-- created under one (create.lua): 'k3J9…~Qx7-aB3c'. Its history began under that
-- token, so it is served as it was given (a migrated session keeps the epoch its
-- source served) until the token changes.
local function epoch_parts(stored)
  local at = string.find(stored, '~[^~]*$')
  if not at then return stored, nil end
  return string.sub(stored, 1, at - 1), string.sub(stored, at + 1)
end

-- The epoch a session's log is served under: its epoch, then '.' and the store's
-- generation once a Redis that may lose acknowledged writes restarted after the
-- session was created (generation.lua), so that every session's epoch changed at
-- once. Clients see only this; a caller that names an epoch names this one.
local function served_epoch(stored, generation_key)
  if not stored then return nil end  -- a session stored with no epoch
  local epoch, created_under = epoch_parts(stored)
  local token = redis.call('HGET', generation_key, 'token')
  if not token or token == '' or token == created_under then return epoch end
  return epoch .. '.' .. token
end

-- What an epoch a caller named ('' : any) is of the session's, stored and served:
-- nil if it is the one served; 'NOTFOUND' for another log (deleted and created
-- again); 'GENERATION' for this log as an earlier generation served it (the caller
-- has not heard of the change).
local function epoch_mismatch(named, stored, served)
  if named == '' or named == served then return nil end
  if not stored then return 'NOTFOUND' end
  local epoch = epoch_parts(stored)
  local head = string.sub(named, 1, #epoch)
  local mark = string.sub(named, #epoch + 1, #epoch + 1)
  if head == epoch and (mark == '' or mark == '.') then return 'GENERATION' end
  return 'NOTFOUND'
end

local function check_served(named, stored, served)
  local mismatch = epoch_mismatch(named, stored, served)
  if mismatch then fail(mismatch) end
end

local function hash_of(flat)
  local h = {}
  for i = 1, #flat, 2 do
    h[flat[i]] = flat[i + 1]
  end
  return h
end

local function has_expired(state, expires, now)
  return state == 'expired' or (expires and tonumber(expires) <= tonumber(now))
end

-- The session's entries in the sorted sets of the index.
local function index_add(idx, id, m)
  redis.call('ZADD', idx .. 'created', m.created, id)
  redis.call('ZADD', idx .. 'updated', m.updated, id)
  redis.call('ZADD', idx .. 'active', m.active, id)
  redis.call('ZADD', idx .. 'msgs', m.msgs, id)
  if m.expires then
    redis.call('ZADD', idx .. 'expires', m.expires, id)
  end
  if m.user then
    redis.call('ZADD', idx .. 'user:' .. m.user, m.created, id)
  end
  redis.call('ZADD', idx .. 'state:' .. m.state, m.created, id)
end

local function index_remove(idx, id, user, state)
  for _, name in ipairs({'created', 'updated', 'active', 'msgs', 'expires'}) do
    redis.call('ZREM', idx .. name, id)
  end
  if user then
    redis.call('ZREM', idx .. 'user:' .. user, id)
  end
  redis.call('ZREM', idx .. 'state:' .. state, id)
end

-- A session of ``user`` holding ``bytes`` goes: the user's sum (append.lua's
-- max user bytes) no longer counts them; a sum that would not stay above 0 goes
-- (bytes stored before the sums existed were never counted).
local function user_bytes_freed(idx, user, bytes)
  local freed = tonumber(bytes) or 0
  if user and freed > 0 then
    local left = redis.call('HINCRBY', idx .. 'userbytes', user, int(-freed))
    if left <= 0 then redis.call('HDEL', idx .. 'userbytes', user) end
  end
end

-- Whether member id a comes before b, or is b, among members of one score of a sorted
-- set: Redis orders them byte by byte. (Lua's < on strings follows the server's
-- locale, which need not.)
local function id_not_after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end

-- A user's sum rebuilt in steps (recount_user.lua) keeps, in the hash <index
-- prefix>rebuild:<user>, the sum of the 'bytes' of the sessions it has read: those of
-- the user's index up to its cursor ('score', then 'id', the index's order). Every
-- script that moves a session's 'bytes' (by ``moved``) calls this in the same step, so
-- that sum follows the sessions already read; the others are read as they are when
-- the cursor reaches them. A removal calls it before the session leaves the index.
local function rebuild_follows(idx, user, id, moved)
  if not user or not id or moved == 0 then return end
  local rebuild = idx .. 'rebuild:' .. user
  local cursor = redis.call('HMGET', rebuild, 'score', 'id')
  if not cursor[1] then return end  -- no rebuild in steps under way
  local score = redis.call('ZSCORE', idx .. 'user:' .. user, id)
  if not score then return end  -- not in the index: no rebuild reads it
  local mine, upto = tonumber(score), tonumber(cursor[1])
  if mine < upto or (mine == upto and id_not_after(id, cursor[2])) then
    redis.call('HINCRBY', rebuild, 'sum', int(moved))
  end
end

-- A state written (not activity: last_activity_at stays): updated_at now, and the
-- session moved among the index's states.
local function write_state(meta, idx, id, current, target, created, now)
  redis.call('HSET', meta, 'state', target, 'updated', now)
  redis.call('ZADD', idx .. 'updated', now, id)
  if current ~= target then
    redis.call('ZREM', idx .. 'state:' .. current, id)
    redis.call('ZADD', idx .. 'state:' .. target, created, id)
  end
end

-- Activity now: last_activity_at and updated_at, and the sliding expiry.
local function record_activity(meta, idx, id, now, ttl)
  redis.call('HSET', meta, 'updated', now, 'active', now)
  redis.call('ZADD', idx .. 'updated', now, id)
  redis.call('ZADD', idx .. 'active', now, id)
  if ttl then
    local expires = int(tonumber(now) + tonumber(ttl) * 1000000)
    redis.call('HSET', meta, 'expires', expires)
    redis.call('ZADD', idx .. 'expires', expires, id)
  end
end

-- One event into the log (and the history, and the key window); returns its entry
-- of a published batch: [seq, ts, key, event]. The log first: a log key of another
-- type fails the first event's XADD before anything is written (append.lua has read
-- the key window and the history before it, for the same reason).
local function write_event(log, keys, msgs, seq, ts, key, is_message, json)
  local published
  if key then
    redis.call('XADD', log, seq .. '-0', 'e', json, 't', ts, 'k', key)
    redis.call('ZADD', keys, seq, key)
    published = '[' .. seq .. ',' .. ts .. ',' .. cjson.encode(key) .. ',' .. json .. ']'
  else
    redis.call('XADD', log, seq .. '-0', 'e', json, 't', ts)
    published = '[' .. seq .. ',' .. ts .. ',null,' .. json .. ']'
  end
  if is_message then
    redis.call('RPUSH', msgs, seq)
  end
  return published
end

-- A close or a delete: the notice with the session's epoch (for the subscriptions of
-- that log only), then the bare one, for listeners that know no epochs (a listener
-- that heard the first skips the second).
local function notify(publish, channel, notice, epoch)
  if publish ~= '' then
    if epoch then redis.call(publish, channel, notice .. ' ' .. epoch) end
    redis.call(publish, channel, notice)
  end
end


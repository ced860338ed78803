-- Append a batch of events to one session's log, atomically: check the session,
-- give each fresh item the next seq, answer duplicates from the key window, update
-- the metadata and the index, and publish the batch.
-- KEYS: meta, log, keys, msgs
-- ARGV: id, index prefix, key window, publish command ('' : the caller publishes),
--       channel, epoch ('' : any; else the epoch of the log meant, as served
--       (common.lua served_epoch): a session of another epoch, one created again
--       under the id, is NOTFOUND, as a deleted one is; this log served under an
--       earlier generation is GENERATION), max session bytes ('' : no cap), max user bytes ('' : no cap), then per
--       item: flags ('k' keyed, 'm' message), key, event JSON
-- Fresh items whose JSON and keys would take the session's 'bytes' past the cap: fail
-- TOOLARGE <stored> <adding> <cap>, nothing written (a session stored before 'bytes'
-- existed counts from 0). Past the user's: the sum of 'bytes' of the sessions of the
-- session's 'user' (the field <user> of the hash <index prefix>userbytes, moved with
-- every append, import, delete and replacement; a session without a user is not
-- counted): fail USERFULL <stored> <adding> <cap> <user in hex>, nothing written. In
-- hex, as no other way of writing it passes through an error whole: Redis cuts the
-- text at a NUL and turns line breaks to spaces, redis-py strips its ends, and Redis
-- adds the script's name after it.
-- The batch's ts (its events', and the session's updated_at and last_activity_at) is
-- Redis's TIME, or just past the session's updated_at if that is not behind it
-- (common.lua stamp_after): events' ts never go back within a session.
-- Returns: {ts, batch payload or '', then per item its seq, negated for a duplicate}
-- The batch: [[0, 0, epoch, null], [seq, ts, key, event], ...], its first entry
-- naming the log's epoch as served (an older listener skips it as an event of seq 0).

local meta, log, keys, msgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, idx, window, publish, channel = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local cap, user_cap = tonumber(ARGV[7]), tonumber(ARGV[8])
local s = redis.call('HMGET', meta, 'state', 'expires', 'seq', 'msgs', 'ttl', 'epoch', 'bytes', 'user', 'updated')
if not s[1] then fail('NOTFOUND') end
local served = served_epoch(s[6], idx .. 'generation')
check_served(ARGV[6], s[6], served)
if s[1] == 'closed' then fail('CLOSED') end
local now = clock()
if has_expired(s[1], s[2], now) then fail('EXPIRED') end
now = stamp_after(s[9], now)

-- First what each item becomes, writing nothing: the cap is checked before any write.
local first_seq, count = tonumber(s[3]), tonumber(s[4])
local stored, adding = tonumber(s[7]) or 0, 0
local last, first_count = first_seq, count
local results, fresh, in_batch = {now, ''}, {}, {}
local messages = false  -- whether a fresh item goes into the history
local window_read = false  -- whether the key window was read (an item is keyed)
for i = 9, #ARGV, 3 do
  local flags, key = ARGV[i], ARGV[i + 1]
  local keyed = string.find(flags, 'k', 1, true) ~= nil
  local seq = last + 1
  local duplicate_of = nil
  if keyed then
    window_read = true
    local first = in_batch[key] or redis.call('ZSCORE', keys, key)
    if first and seq - tonumber(first) <= window then
      duplicate_of = tonumber(first)
    end
  end
  if duplicate_of then
    results[#results + 1] = -duplicate_of
  else
    last = seq
    if keyed then
      in_batch[key] = seq
      adding = adding + #key
    end
    adding = adding + #ARGV[i + 2]
    messages = messages or string.find(flags, 'm', 1, true) ~= nil
    fresh[#fresh + 1] = i
    results[#results + 1] = seq
  end
end
if last == first_seq then return results end
if cap and stored + adding > cap then
  fail('TOOLARGE ' .. int(stored) .. ' ' .. int(adding) .. ' ' .. int(cap))
end
local user = s[8]
if user_cap and user then
  local mine = tonumber(redis.call('HGET', idx .. 'userbytes', user)) or 0
  if mine + adding > user_cap then
    local hex = string.gsub(user, '.', function(c) return string.format('%02x', string.byte(c)) end)
    fail('USERFULL ' .. int(mine) .. ' ' .. int(adding) .. ' ' .. int(user_cap) .. ' ' .. hex)
  end
end

-- A key of the session's written over with another type (from outside) fails the
-- script before its first write, not after the log took an event the metadata never
-- counts (its seq then taken again: every later append refused): meta was read above,
-- the key window too when an item is keyed (only then is it written), and the
-- history is read here when a message goes in; the log is the first key each event
-- writes. Reads, so that the first write is the log's XADD, which Redis refuses at
-- its maxmemory: after any write, a script's next ones are let through, memory or not.
if messages then redis.call('LLEN', msgs) end
-- The key window is trimmed by each append that has a key (it read the window above),
-- and by a keyless one whose seqs cross a multiple of a tenth of the window: else a
-- session that went on without keys kept its last keys, up to the window's 10,000,
-- for ever. Only a window that is a sorted set (TYPE fails on nothing; read before
-- any write), so a keyless append still writes nothing it cannot.
-- (A multiple of the step is in (first_seq, last] when last's remainder is below the
-- seqs taken: Lua's operators alone, no function called on the keyless path.)
local trim = window_read
if not trim and last % (window / 10) < last - first_seq then
  trim = redis.call('TYPE', keys)['ok'] == 'zset'
end
local batch = {}
if served then batch[1] = '[0,0,' .. cjson.encode(served) .. ',null]' end
for n, i in ipairs(fresh) do
  local flags, key, json = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local keyed = string.find(flags, 'k', 1, true) ~= nil
  local is_message = string.find(flags, 'm', 1, true) ~= nil
  if is_message then count = count + 1 end
  batch[#batch + 1] = write_event(log, keys, msgs, first_seq + n, now, keyed and key or nil, is_message, json)
end

redis.call('HSET', meta, 'seq', last, 'msgs', count, 'bytes', int(stored + adding))
if user then
  redis.call('HINCRBY', idx .. 'userbytes', user, int(adding))
  rebuild_follows(idx, user, id, adding)
end
record_activity(meta, idx, id, now, s[5])
if count ~= first_count then redis.call('ZADD', idx .. 'msgs', count, id) end
-- Each trim leaves at most the window's keys (a lookup goes by the window anyway).
if trim then redis.call('ZREMRANGEBYSCORE', keys, '-inf', last - window) end
local payload = '[' .. table.concat(batch, ',') .. ']'
if publish ~= '' then
  redis.call(publish, channel, payload)
else
  results[2] = payload
end
return results

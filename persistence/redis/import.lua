-- Import events into a session's log with their own seq, ts and key (migration from
-- another store). The first must follow the log's last seq; each the one before.
-- Returns {events imported, the batch}: the batch is published here, or, with no
-- publish command (wait_replicas), by the caller after WAIT, as append.lua's is.
-- KEYS: meta, log, keys, msgs
-- ARGV: id, index prefix, key window, publish command, channel, then per event:
--       seq, ts, flags ('k' keyed, 'm' message), key, event JSON

local meta, log, keys, msgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, idx, window, publish, channel = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local s = redis.call('HMGET', meta, 'seq', 'msgs', 'epoch', 'bytes', 'user')
if not s[1] then fail('NOTFOUND') end
local last, count = tonumber(s[1]), tonumber(s[2])
for i = 6, #ARGV, 5 do
  last = last + 1
  if tonumber(ARGV[i]) ~= last then fail('ORDER ' .. ARGV[i] .. ' ' .. last) end
end
last = tonumber(s[1])
local stored = tonumber(s[4]) or 0  -- counted as append.lua counts, never capped
local batch = {}
for i = 6, #ARGV, 5 do
  local seq, ts, flags, key, json = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local keyed = string.find(flags, 'k', 1, true) ~= nil
  local is_message = string.find(flags, 'm', 1, true) ~= nil
  if is_message then count = count + 1 end
  stored = stored + #json + (keyed and #key or 0)
  last = tonumber(seq)
  batch[#batch + 1] = write_event(log, keys, msgs, last, ts, keyed and key or nil, is_message, json)
end
if #batch == 0 then return {0, ''} end
-- The epoch as served, as append.lua's batch names it: subscriptions hold that one.
local served = served_epoch(s[3], idx .. 'generation')
if served then table.insert(batch, 1, '[0,0,' .. cjson.encode(served) .. ',null]') end
redis.call('HSET', meta, 'seq', last, 'msgs', count, 'bytes', int(stored))
if s[5] then
  local moved = stored - (tonumber(s[4]) or 0)
  redis.call('HINCRBY', idx .. 'userbytes', s[5], int(moved))
  rebuild_follows(idx, s[5], id, moved)
end
redis.call('ZADD', idx .. 'msgs', count, id)
redis.call('ZREMRANGEBYSCORE', keys, '-inf', last - window)
local imported = #batch
if served then imported = imported - 1 end
local payload = '[' .. table.concat(batch, ',') .. ']'
if publish ~= '' then
  redis.call(publish, channel, payload)
  payload = ''
end
return {imported, payload}

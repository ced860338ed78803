-- Events of one session's log after a seq (at most a count), and the session's
-- state: one atomic read, so a deleted session is told from an empty log.
-- KEYS: meta, log
-- ARGV: the first seq to read (after seq + 1, as a decimal string: Lua numbers are
--       doubles, which tostring() writes as 1e+14 past 10^14), count ('' : all),
--       then optionally the epoch of the log meant, as served ('' : any), and the
--       store's generation key (common.lua served_epoch): a session of another epoch
--       (one that replaced it under the same id) is NOTFOUND, as a deleted one is;
--       this log served under an earlier generation is GENERATION; then optionally a
--       budget in bytes ('' : none): the read stops at the first event whose JSON
--       takes the sum of theirs past it, that event included
-- Returns {XRANGE entries}

if redis.call('EXISTS', KEYS[1]) == 0 then fail('NOTFOUND') end
if ARGV[3] and ARGV[3] ~= '' then
  local stored = redis.call('HGET', KEYS[1], 'epoch')
  check_served(ARGV[3], stored, served_epoch(stored, ARGV[4]))
end
local start = ARGV[1]
local budget = tonumber(ARGV[5] or '')
if not budget then
  if ARGV[2] == '' then
    return redis.call('XRANGE', KEYS[2], start, '+')
  end
  return redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[2])
end
-- Read in growing steps, so that a page of large events reads about the page, not
-- the count asked for (up to --max-events-page events, the whole log): the caller
-- keeps what fits its budget (events.py within_bytes, which counts the same JSON).
local left = tonumber(ARGV[2]) or math.huge
local out, used, step = {}, 0, 16
while left > 0 do
  local wanted = math.min(step, left)
  local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', wanted)
  for _, entry in ipairs(entries) do
    out[#out + 1] = entry
    local fields = entry[2]  -- 'e' first, as write_event adds it: no table made
    used = used + #(fields[1] == 'e' and fields[2] or hash_of(fields).e)
    if used > budget then return out end
  end
  if #entries < wanted then return out end
  left = left - wanted
  start = '(' .. entries[#entries][1]
  step = math.min(step * 4, 1024)
end
return out

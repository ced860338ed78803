-- Events of one session's log after a seq (at most a count), and the session's
-- state: one atomic read, so a deleted session is told from an empty log.
-- KEYS: meta, log
-- ARGV: the first seq to read (after seq + 1, as a decimal string: Lua numbers are
--       doubles, which tostring() writes as 1e+14 past 10^14), count ('' : all),
--       then optionally the epoch of the log meant, as served, and the store's
--       generation key (common.lua served_epoch): a session of another epoch (one
--       that replaced it under the same id) is NOTFOUND, as a deleted one is; this
--       log served under an earlier generation is GENERATION
-- Returns {XRANGE entries}

if redis.call('EXISTS', KEYS[1]) == 0 then fail('NOTFOUND') end
if ARGV[3] and ARGV[3] ~= '' then
  local stored = redis.call('HGET', KEYS[1], 'epoch')
  check_served(ARGV[3], stored, served_epoch(stored, ARGV[4]))
end
local start = ARGV[1]
if ARGV[2] == '' then
  return redis.call('XRANGE', KEYS[2], start, '+')
end
return redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[2])

-- A session's metadata and a page of its history: the message events at history
-- indexes start .. stop - 1, read from the log through the list of their seqs.
-- KEYS: meta, msgs, log
-- ARGV: 'all', or 'page' with limit and before ('' : the end)
-- Returns {metadata hash, start, event JSON...}

local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then fail('NOTFOUND') end
local m = hash_of(h)
if has_expired(m.state, m.expires, clock()) then fail('EXPIRED') end
local count = tonumber(m.msgs)
local start, stop = 0, count
if ARGV[1] == 'page' then
  local limit = math.max(tonumber(ARGV[2]), 0)
  if ARGV[3] ~= '' then stop = math.max(0, math.min(tonumber(ARGV[3]), count)) end
  start = math.max(0, stop - limit)
end
local out = {h, start}
if stop > start then
  for _, seq in ipairs(redis.call('LRANGE', KEYS[2], start, stop - 1)) do
    local entry = redis.call('XRANGE', KEYS[3], seq, seq)[1]
    out[#out + 1] = hash_of(entry[2]).e
  end
end
return out

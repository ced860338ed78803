-- A session's metadata and a page of its history: the message events at history
-- indexes start .. stop - 1, read from the log through the list of their seqs.
-- KEYS: meta, msgs, log
-- ARGV: 'all'; or 'page' with limit, before ('' : the end) and a budget in bytes
--       ('' : none): the page is read newest first and stops at the first event
--       whose JSON takes the sum of theirs past it (that one left out, unless it is
--       the only one), so a page of large messages reads about the budget; or
--       'from' with start, limit and a budget: the same, read oldest first
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
elseif ARGV[1] == 'from' then
  start = math.max(0, math.min(tonumber(ARGV[2]), count))
  stop = math.min(count, start + math.max(tonumber(ARGV[3]), 0))
end
local budget = tonumber(ARGV[4] or '')
if stop <= start then return {h, start} end
local seqs = redis.call('LRANGE', KEYS[2], start, stop - 1)
local function event_at(seq)
  return hash_of(redis.call('XRANGE', KEYS[3], seq, seq)[1][2]).e
end
if ARGV[1] == 'from' or not budget then
  local out, used = {h, start}, 0
  for _, seq in ipairs(seqs) do
    local event = event_at(seq)
    used = used + #event
    if budget and used > budget and #out > 2 then break end
    out[#out + 1] = event
  end
  return out
end
local newest_first, used = {}, 0
for i = #seqs, 1, -1 do
  local event = event_at(seqs[i])
  used = used + #event
  if used > budget and #newest_first > 0 then break end
  newest_first[#newest_first + 1] = event
end
local out = {h, stop - #newest_first}
for i = #newest_first, 1, -1 do out[#out + 1] = newest_first[i] end
return out

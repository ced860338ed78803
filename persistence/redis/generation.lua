-- The store's generation (common.lua served_epoch) against the run of Redis that
-- holds it: a compare-and-set, so that several instances that see one restart of
-- Redis change it once. A Redis that may lose writes it acknowledged, restarted, may
-- have lost some: every session's epoch then changes, by a fresh token, since nothing
-- left in Redis tells which sessions lost what. A Redis that keeps what it
-- acknowledged keeps its token across restarts.
-- KEYS: the generation hash (fields run, token, lossy)
-- ARGV: the run_id of this Redis (INFO server), '1' when the caller finds that it may
--       lose writes it acknowledged (or cannot tell), a fresh token, the index prefix,
--       the run the caller checked last ('' if none) and the token it adopted then
-- Returns {token, 1 if it changed here else 0, 1 if the record was put back else 0}
-- Beside the record, in its slot, '<idx>generation:marked' says that the record has
-- held a token or a lossy mark (written with them, never removed): without the
-- record, it tells one deleted, whose token and marks epochs were served under, from
-- one that only ever held the empty token of a durable Redis, or none (the store of
-- a version before the record), whose epochs may be served again as they were.

local key, run, lossy, fresh, idx = KEYS[1], ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
local known_run, known_token = ARGV[5], ARGV[6]
local marked_key = idx .. 'generation:marked'

local function record(token, lossy_flag)
  redis.call('HSET', key, 'run', run, 'token', token, 'lossy', lossy_flag)
  if token ~= '' or lossy_flag == '1' then redis.call('SET', marked_key, '1') end
end

local g = redis.call('HMGET', key, 'run', 'token', 'lossy')
local token = g[2] or ''
if g[1] == run then
  if lossy and g[3] ~= '1' then record(token, '1') end
  return {token, 0, 0}
end
local marked = redis.call('EXISTS', marked_key) == 1
if not g[1] and known_run == run then
  -- The record went while this run of Redis went on (a DEL by hand, an eviction):
  -- the caller checked this run and holds its token, and no restart lost anything
  -- since, so the token is put back, and every epoch served stays right. Whether
  -- the run was marked lossy went with the record: taken as lossy if the record
  -- was ever marked (the safe side: its restart changes every epoch).
  record(known_token, (marked or lossy) and '1' or '0')
  return {known_token, 0, 1}
end
local changed = false
if g[1] then
  -- Another run: the last one's acknowledged writes may be gone if it could lose
  -- them (as recorded while it ran) or if this one can (its settings, read now).
  changed = lossy or g[3] == '1'
elseif marked or lossy then
  -- No record, and the caller did not check this run: a record deleted by hand (or
  -- lost with a restart of a Redis that may lose writes). Whether the last run could
  -- lose writes, and which token epochs were served under, went with it: a Redis
  -- that holds sessions gets a fresh token, never an epoch served before.
  changed = redis.call('ZCARD', idx .. 'created') > 0
end
-- Else no record was ever marked: the first open of this version (a store written
-- by one before the record), or a record that only held the empty token of durable
-- runs: every epoch served was the stored one, and is served on.
if changed then token = fresh end
record(token, lossy and '1' or '0')
return {token, changed and 1 or 0, 0}

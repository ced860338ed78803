-- Create a session: refuse an id in use and a store at its maximum, write the
-- metadata hash and index it.
-- KEYS: meta, log, keys, msgs
-- ARGV: id, index prefix, max sessions ('' : no limit), then HSET field/value pairs

local meta = KEYS[1]
local id, idx, max = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', meta) == 1 then fail('EXISTS') end
if max ~= '' and redis.call('ZCARD', idx .. 'created') >= tonumber(max) then fail('FULL') end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', meta, unpack(fields))
index_add(idx, id, hash_of(fields))
return 1

-- taskstream history read, v1 (docs/protocol.md). One atomic look at a group's stream.
-- KEYS[1] = <prefix><group>; ARGV[1] = last id ('0' = from the start), ARGV[2] = most entries.
-- Returns {exists, max-deleted-entry-id, last-generated-id, entries}; with last id '0' the
-- entries are the newest ARGV[2] (oldest first), else those after the last id (oldest first).
local key, last, count = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then
  return {0, '0-0', '0-0', {}}
end
local info = redis.call('XINFO', 'STREAM', key)
local maxdel, lastgen = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
  if info[i] == 'last-generated-id' then lastgen = info[i + 1] end
end
local entries
if last == '0' then
  entries = redis.call('XREVRANGE', key, '+', '-', 'COUNT', count)
  local n = #entries
  for i = 1, math.floor(n / 2) do
    entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
  end
else
  entries = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', count)
end
return {1, maxdel, lastgen, entries}

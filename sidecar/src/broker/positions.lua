-- taskstream positions, v1 (docs/protocol.md). The newest stored id of each group, in one call.
-- KEYS = <prefix><group>, ... (on a Cluster: keys of one slot). Returns one id per key, in order,
-- '0' for a group with no stored event.
local ids = {}
for i, key in ipairs(KEYS) do
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if newest[1] then
    ids[i] = newest[1][1]
  else
    ids[i] = '0'
  end
end
return ids

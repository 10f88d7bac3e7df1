-- taskstream publish-with-history, v1 (docs/protocol.md).
-- KEYS[1] = <prefix><group>; ARGV = payload, history size, history ttl in ms. Returns the id.
local key, payload = KEYS[1], ARGV[1]
local size, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
if not size or size < 1 or not ttl or ttl < 1 then
  return redis.error_reply('taskstream: history size and ttl must be positive integers')
end
local len = redis.call('XLEN', key)
local lost = false
if len == 0 then
  lost = true
elseif len >= size then
  local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - size + 1)
  lost = old[#old][1]
end
local id = redis.call('XADD', key, 'MAXLEN', size, '*', 'd', payload)
if lost == true then
  -- A new stream: every id before this one belongs to an earlier lifetime and is lost.
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if seq == '0' then
    lost = string.format('%.0f', tonumber(ms) - 1) .. '-18446744073709551615'
  else
    lost = ms .. '-' .. string.format('%.0f', tonumber(seq) - 1)
  end
end
if lost then
  redis.call('XSETID', key, id, 'MAXDELETEDID', lost)
end
redis.call('PEXPIRE', key, ttl)
redis.call('PUBLISH', key, '\30' .. id .. '\30' .. payload)
return id

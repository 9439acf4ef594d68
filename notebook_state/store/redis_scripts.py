"""The Redis store's Lua scripts: each touches the keys of one session only (one cluster slot), atomically.

A lease acquisition draws a fencing token, the epoch (INCR) and a nonce chosen by the acquirer; every renewal
and commit compares both, so a write from a replica that lost its lease is refused even if a store failover
lost an INCR and issued the same epoch twice.
"""

from __future__ import annotations

# KEYS: lease, epoch, meta, nonce. ARGV: owner, url, lease ttl ms, steal epoch or '', session ttl ms, nonce.
# -2: no such session; -1: another replica holds a live lease (and ``steal`` does not name its epoch).
ACQUIRE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -2 end
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[1] then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ARGV[4] == '' or tonumber(ARGV[4]) ~= current then return -1 end
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'url', ARGV[2], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return epoch
"""

# KEYS: lease, epoch, nonce, meta. ARGV: owner, epoch, nonce, lease ttl ms, url, ran, session ttl ms.
# A lease that expired is renewed as long as nobody acquired it since (the fence is unchanged).
RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] or redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'url', ARGV[5], 'epoch', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[4]) == 1 then
  if tonumber(ARGV[6]) > tonumber(redis.call('HGET', KEYS[4], 'ran') or '0') then
    redis.call('HSET', KEYS[4], 'ran', ARGV[6])
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 1
"""

# KEYS: lease, nonce. ARGV: owner, epoch, nonce.
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2]
   and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: meta. ARGV: session ttl ms, then the record's fields as name/value pairs.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: epoch, nonce, manifest, meta, blobs (the set of the session's blob keys), then nkeep blob keys to keep
# alive, ndrop to delete, and the small new blobs. ARGV: epoch, nonce, manifest, sig, ttl ms, nkeep, ndrop,
# the meta fields as one JSON object of strings, blob ttl ms, the new blobs. (One JSON argument, not a pair
# per field: every argument costs the client CPU to pack, after every cell.)
COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local ttl, blob_ttl = ARGV[5], ARGV[9]
local nkeep, ndrop = tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('HSET', KEYS[3], 'data', ARGV[3], 'sig', ARGV[4])
for name, value in pairs(cjson.decode(ARGV[8])) do redis.call('HSET', KEYS[4], name, value) end
for i = 6, 5 + nkeep do redis.call('PEXPIRE', KEYS[i], blob_ttl) end
for i = 6 + nkeep, 5 + nkeep + ndrop do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[5], KEYS[i])
end
local arg = 10
for i = 6 + nkeep + ndrop, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('RPUSH', KEYS[i], ARGV[arg])
  redis.call('PEXPIRE', KEYS[i], blob_ttl)
  redis.call('SADD', KEYS[5], KEYS[i])
  arg = arg + 1
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
redis.call('PEXPIRE', KEYS[5], blob_ttl)
return 1
"""

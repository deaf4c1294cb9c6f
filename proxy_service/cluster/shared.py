"""Pool state shared through Redis: quota windows, cooldowns and learned limits, changed atomically by Lua scripts.

Layout (every key under `<prefix>:`, `KEYRACK_REDIS_PREFIX`, default `keyrack`; the Redis database comes from the
URL), per (scope, model) `s`:
- `w:{s}` sorted set: one member per admitted call (score = ms), the rolling 60 s request window (rpm);
- `d:{s}:{pacific date}` counter: calls on the Pacific quota day (rpd), expiring after the day;
- `t:{s}` sorted set: `member:tokens` entries for the 60 s token window (tpm);
- `cd:{s}` the cooldown's end (ms), kept only when later than the current one;
- `l:{s}` hash: limits learned from 429s for this scope; `lm:{model}`: learned model-wide (the next guess);
- `f:{key id}` sorted set: the key's transient failures since its last success, cluster-wide (member
  `<replica>:<seq>`, score = ms; past the threshold the key is disabled), and `fok` hash: key id → the time (ms) of
  its latest success or reset. A success anywhere drops the failures before it. Times and member names make a
  replica's merge after an outage exact and repeatable: failures already there are not added twice, failures
  older than a success another replica saw are not added at all (`FAILURES`);
- `rr:{model}` counter: the round-robin cursor (round_robin only): every value is one turn, handed out by `reserve`
  together with an admission, and used by that replica's next pick;
- `sync:{replica}`: set by the replica once its state is in Redis (renewed by its heartbeat); `reserve` answers
  "gone" when it is missing, so a replica notices at once that Redis lost its state (restarted empty, flushed) and
  puts its part back before counting (`ClusterPool.resync`);
- `probe:{key id}`: the re-check slot — the replica that sets it (NX, for one re-check interval) probes the key;
- `live` hash: replica → last heartbeat (ms), for N in the degraded mode and for `/metrics`;
- `leader`, `alerts`, `bus`, `lock:init`: the lease of `leader.py`, the leader's alert states, the pub/sub channel,
  the lake initialisation lock.

`reserve` is the one call on the request path: it checks the cooldown and the known limits cluster-wide and, when
there is headroom, counts the call — one round trip, atomic, so N replicas never admit more than the limit together.
It also answers the key's shared failure count, so a replica's local copy is never more than one call old.
A built-in (guessed) limit never refuses (the single-process rule): the call is counted, not gated.
"""

from __future__ import annotations

from typing import Any

# Shared helpers of the scripts below. Anyone who can write to Redis can put anything in these keys, so a value is
# checked before it counts: a key of the wrong type is deleted (else every script touching it would fail, and the
# replicas degrade; RESERVE, on every call, leaves that to REPAIR when it fails); a cooldown or learned limit is `<number>|<tag>` (the tag an HMAC only replicas can make,
# checked by the replica when it refuses a call: cluster/pool.py), a cooldown never ends later than the caller's cap;
# a window entry is never in the future, a token entry never above 10M tokens (more than a call can have).
LIB = """
local function typed(k, want)
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'none' and t ~= want then redis.call('DEL', k) end
end
local function tagged(raw)
  if type(raw) ~= 'string' then return nil end
  local n = string.match(raw, '^(%d+)|%x+$')
  return n and tonumber(n)
end
local function counter(k)
  return tonumber(redis.call('GET', k) or '0') or 0
end
local function tokens(m)
  local n = tonumber(string.match(m, ':(%d+)$') or '') or 0
  if n > 10000000 then return 0 end
  return n
end
local function trim(k, now)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now - 60000)
  redis.call('ZREMRANGEBYSCORE', k, '(' .. (now + 60000), '+inf')
end
"""

# KEYS: win, day, tokens, cooldown, learned, model_learned, the key's failures, turns, the replica's marker
# ARGV: now_ms, member, rpm, rpd, tpm (-1 = none), day_ttl_ms, enforce (1: limits are hard),
#       take a round-robin turn (1/0), the marker was set before (1/0), the longest cooldown possible (ms)
# → {1, rpm_used, rpd_used, tpm_used, key_failures, turn} admitted
#   | {0, wait_ms, reason, turn[, key, field, value]} refused (turn -1: none), with the stored value that refused it
#     when that was a cooldown (field '') or a learned limit (field = the dimension): the caller checks its tag
#   | {2, -1}: the marker is gone, Redis lost this replica's state (emptied): nothing counted, resync first
RESERVE = (
    LIB
    + """
if redis.call('EXISTS', KEYS[9]) == 0 then
  if ARGV[9] == '1' then return {2, -1} end
  redis.call('SET', KEYS[9], '1', 'PX', 86400000)
end
local now = tonumber(ARGV[1])
local turn = -1
if ARGV[8] == '1' then turn = redis.call('INCR', KEYS[8]) - 1 end
local cdraw = redis.call('GET', KEYS[4])
if cdraw then
  local cd = tagged(cdraw)
  if not cd or cd > now + tonumber(ARGV[10]) then
    redis.call('DEL', KEYS[4])
  elseif cd > now then
    return {0, cd - now, 'cooldown', turn, KEYS[4], '', cdraw}
  end
end
local rpm, rpd, tpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local enforce = ARGV[7] == '1'
local source = KEYS[5]
local learned = redis.call('HGETALL', KEYS[5])
if #learned == 0 then
  source = KEYS[6]
  learned = redis.call('HGETALL', KEYS[6])
end
local from = {}
for i = 1, #learned, 2 do
  local v, dim = tagged(learned[i + 1]), learned[i]
  if v and v <= 1000000000 and (dim == 'rpm' or dim == 'rpd' or dim == 'tpm') then
    enforce = true
    from[dim] = learned[i + 1]
    if dim == 'rpm' then rpm = v elseif dim == 'rpd' then rpd = v else tpm = v end
  end
end
local function refuse(wait, dim)
  if from[dim] then return {0, wait, dim, turn, source, dim, from[dim]} end
  return {0, wait, dim, turn}
end
trim(KEYS[1], now)
trim(KEYS[3], now)
local n = redis.call('ZCARD', KEYS[1])
local day = counter(KEYS[2])
local tok = 0
if tpm >= 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do tok = tok + tokens(m) end
end
if enforce then
  if rpm >= 0 and n >= rpm then
    if rpm == 0 then return refuse(60000, 'rpm') end
    local oldest = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return refuse(math.max(1, tonumber(oldest[2]) + 60000 - now), 'rpm')
  end
  if rpd >= 0 and day >= rpd then return refuse(tonumber(ARGV[6]), 'rpd') end
  if tpm >= 0 and tok >= tpm then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return refuse(math.max(1, tonumber(first[2]) + 60000 - now), 'tpm')
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 61000)
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]) + 3600000)
return {1, n + 1, day + 1, tok, redis.call('ZCARD', KEYS[7]), turn}
"""
)

# RESERVE does not check types (it runs for every call): when it fails on a key of the wrong type or a counter that
# is not a number (not written by a replica), the replica runs this and asks again. KEYS: RESERVE's.
REPAIR = (
    LIB
    + """
for i, want in ipairs({'zset', 'string', 'zset', 'string', 'hash', 'hash', 'zset', 'string', 'string'}) do
  if KEYS[i] then typed(KEYS[i], want) end
end
for _, i in ipairs({2, 8}) do
  if KEYS[i] and not tonumber(redis.call('GET', KEYS[i]) or '0') then redis.call('DEL', KEYS[i]) end
end
return 1
"""
)

# A value the replica found not to be the cluster's (its tag is wrong): delete it, unless it changed meanwhile.
# KEYS: the key. ARGV: field ('' for a plain value), the value judged → 1 deleted | 0
FORGET = """
if ARGV[1] == '' then
  if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[2] then
    return redis.call('DEL', KEYS[1])
  end
elseif redis.call('TYPE', KEYS[1])['ok'] == 'hash' and redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Add a call admitted locally (degraded, or its reservation's answer was lost) — unless the reservation did reach
# Redis (a slow round trip that timed out here but ran there): its member is in the window then.
# KEYS: win, day. ARGV: member, ms, now_ms, day_ttl_ms → 1 added | 0 already counted
RECONCILE = (
    LIB
    + """
typed(KEYS[1], 'zset')
typed(KEYS[2], 'string')
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if tonumber(ARGV[2]) > tonumber(ARGV[3]) - 60000 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if not tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('DEL', KEYS[2]) end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""
)

# Un-count an admitted call the upstream refused or never saw. KEYS: win, day. ARGV: member.
RELEASE = (
    LIB
    + """
typed(KEYS[1], 'zset')
typed(KEYS[2], 'string')
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local day = counter(KEYS[2])
  if day > 0 then redis.call('DECR', KEYS[2]) end
  return 1
end
return 0
"""
)

# A 429: un-count, cool the scope (the later end wins), learn the limit given (stored tagged by the caller) or, when
# the 429 gave none, answer the usage seen cluster-wide (the caller tags it and stores it with LEARN).
# KEYS: win, day, tokens, cooldown, learned, model_learned. ARGV: member, now_ms, until_ms, dim ('' = none),
# limit (-1 = observed), the cooldown's tagged value, the limit's tagged value ('' when observed)
RATE_LIMITED = (
    LIB
    + """
for i, want in ipairs({'zset', 'string', 'zset', 'string', 'hash', 'hash'}) do typed(KEYS[i], want) end
redis.call('ZREM', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
local untl = tonumber(ARGV[3])
local cur = tagged(redis.call('GET', KEYS[4])) or 0
if untl > cur then redis.call('SET', KEYS[4], ARGV[6], 'PX', math.max(1, untl - now)) end
local dim, limit = ARGV[4], tonumber(ARGV[5])
if dim == '' then return -1 end
if limit < 0 then
  trim(KEYS[1], now)
  if dim == 'rpm' then limit = redis.call('ZCARD', KEYS[1])
  elseif dim == 'rpd' then limit = counter(KEYS[2])
  else
    limit = 0
    for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do limit = limit + tokens(m) end
  end
  if limit <= 0 then return -1 end
  return limit
end
redis.call('HSET', KEYS[5], dim, ARGV[7])
redis.call('PEXPIRE', KEYS[5], 2 * 86400000)
if limit > 0 then
  redis.call('HSET', KEYS[6], dim, ARGV[7])
  redis.call('PEXPIRE', KEYS[6], 2 * 86400000)
end
return limit
"""
)

# Store a limit learned from the observed usage (RATE_LIMITED answered it). KEYS: learned, model_learned.
# ARGV: dim, the limit's tagged value
LEARN = """
for _, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  if t ~= 'none' and t ~= 'hash' then redis.call('DEL', k) end
  redis.call('HSET', k, ARGV[1], ARGV[2])
  redis.call('PEXPIRE', k, 2 * 86400000)
end
return 1
"""

# A key's failures and successes, cluster-wide, in one script: a live failure (ok -1, one pair), a live success or
# reset (ok = its time, no pair), and a replica's merge after an outage (merge 1: its last success of the key during
# it, its failures since). Live calls count in arrival order: a success drops every failure there, a failure after it
# counts, whatever the replicas' clocks say. A merge goes by time: its success drops the failures before it, its
# failures older than the latest success are not added; a member already there is not added twice (ZADD).
# KEYS: the key's failures, fok. ARGV: key id, ok_ms (-1: none), ttl_ms, merge (1/0), then (ms, member) pairs
# → the consecutive failures now.
FAILURES = (
    LIB
    + """
typed(KEYS[1], 'zset')
typed(KEYS[2], 'hash')
local latest = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1') or -1
local ok = tonumber(ARGV[2])
local merge = ARGV[4] == '1'
if ok >= 0 then
  if not merge then
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    if #last > 0 then ok = math.max(ok, tonumber(last[2])) end
    redis.call('DEL', KEYS[1])
  end
  if ok > latest then
    latest = ok
    redis.call('HSET', KEYS[2], ARGV[1], ok)
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ok)
  end
end
for i = 5, #ARGV, 2 do
  if not merge or tonumber(ARGV[i]) > latest then redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
local n = redis.call('ZCARD', KEYS[1])
if n > 1000 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1001)
  n = 1000
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return n
"""
)

# A re-check probe slot: taken when free, or when its holder set it for longer than a re-check interval can be (not a
# replica's: an absurd TTL would stop every re-check of the key). KEYS: slot. ARGV: replica, px, longest px → 1 | 0
PROBE = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 or ttl == -1 or ttl > tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Add tokens learned from an answer. KEYS: tokens. ARGV: now_ms, member, tokens.
TOKENS = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'zset' then redis.call('DEL', KEYS[1]) end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], 61000)
return 1
"""


def scope_keys(prefix: str, scope: str, model: str, day: str, key_id: str = "") -> list[str]:
    s = f"{scope}|{model}"
    return [
        f"{prefix}:w:{s}",
        f"{prefix}:d:{s}:{day}",
        f"{prefix}:t:{s}",
        f"{prefix}:cd:{s}",
        f"{prefix}:l:{s}",
        f"{prefix}:lm:{model}",
        f"{prefix}:f:{key_id}",
        f"{prefix}:rr:{model}",
    ]


def text(v: Any) -> str:
    """A Redis reply (bytes) as text."""
    return v.decode() if isinstance(v, bytes) else str(v)


def failure_keys(prefix: str, key_id: str) -> list[str]:
    """The KEYS of `FAILURES` for one key."""
    return [f"{prefix}:f:{key_id}", f"{prefix}:fok"]

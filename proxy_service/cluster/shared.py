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

# KEYS: win, day, tokens, cooldown, learned, model_learned, the key's failures, turns, the replica's marker
# ARGV: now_ms, member, rpm, rpd, tpm (-1 = none), day_ttl_ms, enforce (1: limits are hard),
#       take a round-robin turn (1/0), the marker was set before (1/0)
# → {1, rpm_used, rpd_used, tpm_used, key_failures, turn} admitted | {0, wait_ms, reason, turn}  (turn -1: none)
#   | {2, -1}: the marker is gone, Redis lost this replica's state (emptied): nothing counted, resync first
RESERVE = """
if redis.call('EXISTS', KEYS[9]) == 0 then
  if ARGV[9] == '1' then return {2, -1} end
  redis.call('SET', KEYS[9], '1', 'PX', 86400000)
end
local now = tonumber(ARGV[1])
local turn = -1
if ARGV[8] == '1' then turn = redis.call('INCR', KEYS[8]) - 1 end
local cd = tonumber(redis.call('GET', KEYS[4]) or '0')
if cd > now then return {0, cd - now, 'cooldown', turn} end
local rpm, rpd, tpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local enforce = ARGV[7] == '1'
local learned = redis.call('HGETALL', KEYS[5])
if #learned == 0 then learned = redis.call('HGETALL', KEYS[6]) end
for i = 1, #learned, 2 do
  enforce = true
  local v = tonumber(learned[i + 1])
  if learned[i] == 'rpm' then rpm = v elseif learned[i] == 'rpd' then rpd = v elseif learned[i] == 'tpm' then tpm = v end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
local n = redis.call('ZCARD', KEYS[1])
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = 0
if tpm >= 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do tok = tok + tonumber(string.match(m, ':(%d+)$')) end
end
if enforce then
  if rpm >= 0 and n >= rpm then
    if rpm == 0 then return {0, 60000, 'rpm', turn} end
    local oldest = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return {0, math.max(1, tonumber(oldest[2]) + 60000 - now), 'rpm', turn}
  end
  if rpd >= 0 and day >= rpd then return {0, tonumber(ARGV[6]), 'rpd', turn} end
  if tpm >= 0 and tok >= tpm then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {0, math.max(1, tonumber(first[2]) + 60000 - now), 'tpm', turn}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 61000)
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]) + 3600000)
return {1, n + 1, day + 1, tok, redis.call('ZCARD', KEYS[7]), turn}
"""

# Add a call admitted locally (degraded, or its reservation's answer was lost) — unless the reservation did reach
# Redis (a slow round trip that timed out here but ran there): its member is in the window then.
# KEYS: win, day. ARGV: member, ms, now_ms, day_ttl_ms → 1 added | 0 already counted
RECONCILE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if tonumber(ARGV[2]) > tonumber(ARGV[3]) - 60000 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

# Un-count an admitted call the upstream refused or never saw. KEYS: win, day. ARGV: member.
RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local day = tonumber(redis.call('GET', KEYS[2]) or '0')
  if day > 0 then redis.call('DECR', KEYS[2]) end
  return 1
end
return 0
"""

# A 429: un-count, cool the scope (the later end wins), learn the limit (its value, else the usage seen cluster-wide).
# KEYS: win, day, tokens, cooldown, learned, model_learned. ARGV: member, now_ms, until_ms, dim ('' = none),
# limit (-1 = observed)
RATE_LIMITED = """
redis.call('ZREM', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
local untl = tonumber(ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[4]) or '0')
if untl > cur then redis.call('SET', KEYS[4], untl, 'PX', math.max(1, untl - now)) end
local dim, limit = ARGV[4], tonumber(ARGV[5])
if dim == '' then return -1 end
if limit < 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if dim == 'rpm' then limit = redis.call('ZCARD', KEYS[1])
  elseif dim == 'rpd' then limit = tonumber(redis.call('GET', KEYS[2]) or '0')
  else
    limit = 0
    for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do limit = limit + tonumber(string.match(m, ':(%d+)$')) end
  end
  if limit <= 0 then return -1 end
end
redis.call('HSET', KEYS[5], dim, limit)
redis.call('PEXPIRE', KEYS[5], 2 * 86400000)
if limit > 0 then
  redis.call('HSET', KEYS[6], dim, limit)
  redis.call('PEXPIRE', KEYS[6], 2 * 86400000)
end
return limit
"""

# A key's failures and successes, cluster-wide, in one script: a live failure (ok -1, one pair), a live success or
# reset (ok = its time, no pair), and a replica's merge after an outage (merge 1: its last success of the key during
# it, its failures since). Live calls count in arrival order: a success drops every failure there, a failure after it
# counts, whatever the replicas' clocks say. A merge goes by time: its success drops the failures before it, its
# failures older than the latest success are not added; a member already there is not added twice (ZADD).
# KEYS: the key's failures, fok. ARGV: key id, ok_ms (-1: none), ttl_ms, merge (1/0), then (ms, member) pairs
# → the consecutive failures now.
FAILURES = """
local latest = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
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

# Add tokens learned from an answer. KEYS: tokens. ARGV: now_ms, member, tokens.
TOKENS = """
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

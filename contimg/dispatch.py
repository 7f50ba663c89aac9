"""Dynamic dispatch: blocks wait in Redis; imaging nodes take them K at a time.

Why: sending every chord of a night at once floods the node queues with
thousands of conversions, and the per-block callbacks wait behind them. Here a
run's blocks wait in a Redis work queue; each imaging node has at most
``dispatch.max_inflight_per_node`` blocks in flight; when a block ends (done or
failed) its slot frees and the next block is taken by whichever imaging node
has a free slot.

Leases make this survive dead callbacks, workers and nodes. A block in flight
holds a lease (a random token and a deadline). Every task of the block renews
it when it starts and checks the token first: a task whose token is no longer
the block's (because the lease expired and the block was handed out again) does
nothing, so no block is processed twice at the same time. The reaper puts
blocks whose lease expired back in the queue, up to ``dispatch.max_attempts``.

Redis keys (prefix ``contimg:``)
--------------------------------
``pending``        ZSET block id -> enqueue order
``spec``           HASH block id -> JSON block spec (files, mid-time, run)
``inflight``       ZSET block id -> lease deadline (unix s)
``node``           HASH block id -> imaging node holding it
``token``          HASH block id -> lease token
``attempts``       HASH block id -> times handed out

All state changes are Lua scripts, atomic across concurrent dispatchers.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import redis

PREFIX = "contimg:"
K_PENDING, K_SPEC, K_INFLIGHT, K_NODE, K_TOKEN, K_ATTEMPTS = (
    PREFIX + k for k in ("pending", "spec", "inflight", "node", "token", "attempts"))
KEYS = [K_PENDING, K_SPEC, K_INFLIGHT, K_NODE, K_TOKEN, K_ATTEMPTS]
K_FREED = PREFIX + "freed"
"""Wake-ups: each release pushes the block id here (at most 1000 kept); a dispatcher that
waits between passes blocks on it, so a freed slot is refilled at once, not at its next poll."""

# enqueue(block, spec_json, order, force): add unless pending or in flight
_ENQUEUE = """
local pending, spec, inflight = KEYS[1], KEYS[2], KEYS[3]
local b = ARGV[1]
if redis.call('ZSCORE', inflight, b) then return 'inflight' end
if redis.call('ZSCORE', pending, b) then
  if ARGV[4] == '1' then redis.call('HSET', spec, b, ARGV[2]) end
  return 'pending'
end
redis.call('HSET', spec, b, ARGV[2])
redis.call('ZADD', pending, ARGV[3], b)
return 'queued'
"""

# claim(node, k, now, lease_s, token): take the oldest pending block if node has < k in flight
_CLAIM = """
local pending, spec, inflight, nodes, tokens, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local node, k, now, lease, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n = 0
for _, v in ipairs(redis.call('HVALS', nodes)) do if v == node then n = n + 1 end end
if n >= k then return nil end
local head = redis.call('ZRANGE', pending, 0, 0)
if #head == 0 then return nil end
local b = head[1]
redis.call('ZREM', pending, b)
redis.call('ZADD', inflight, now + lease, b)
redis.call('HSET', nodes, b, node)
redis.call('HSET', tokens, b, token)
local a = redis.call('HINCRBY', attempts, b, 1)
return {b, redis.call('HGET', spec, b), tostring(a)}
"""

# renew(block, token, deadline): extend the lease if the token still holds it
_RENEW = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# release(block, token): the block ended; free its slot
_RELEASE = """
local inflight, nodes, tokens, spec, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('HGET', tokens, ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', inflight, ARGV[1])
redis.call('HDEL', nodes, ARGV[1])
redis.call('HDEL', tokens, ARGV[1])
redis.call('HDEL', spec, ARGV[1])
redis.call('HDEL', attempts, ARGV[1])
redis.call('LPUSH', KEYS[6], ARGV[1])
redis.call('LTRIM', KEYS[6], 0, 999)
return 1
"""

# reap(now, max_attempts): expired leases go back to pending, or out when attempts are used up
_REAP = """
local pending, spec, inflight, nodes, tokens, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now, maxa = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, b in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now)) do
  redis.call('ZREM', inflight, b)
  redis.call('HDEL', nodes, b)
  redis.call('HDEL', tokens, b)
  local a = tonumber(redis.call('HGET', attempts, b) or '0')
  if a >= maxa then
    redis.call('HDEL', spec, b)
    redis.call('HDEL', attempts, b)
    table.insert(out, b .. '|failed|' .. a)
  else
    redis.call('ZADD', pending, now, b)
    table.insert(out, b .. '|requeued|' .. a)
  end
end
return out
"""


@dataclass
class Claim:
    """A block handed to an imaging node."""

    block_id: str
    spec: dict
    node: str
    token: str
    attempt: int


@dataclass
class Reaped:
    block_id: str
    outcome: str  # requeued | failed
    attempts: int


class WorkQueue:
    """The Redis work queue of blocks (see module docstring)."""

    def __init__(self, client: redis.Redis):
        self.r = client
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._reap = client.register_script(_REAP)

    @classmethod
    def from_url(cls, url: str, patient: bool = False) -> WorkQueue:
        """A queue on the Redis at ``url``. ``patient``: each command is retried on connection
        errors for about a minute (a restarting Redis), for the tasks' lease renewals and
        releases, which are idempotent; a dispatcher is not patient, its loop retries."""
        if not patient:
            return cls(redis.Redis.from_url(url))
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
        from redis.retry import Retry

        retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), 40)
        return cls(redis.Redis.from_url(url, retry=retry,
                                        retry_on_error=[BusyLoadingError, ConnectionError, TimeoutError]))

    def enqueue(self, block_id: str, spec: dict, force: bool = False, first: bool = False) -> str:
        """Queue a block; returns ``queued``, ``pending`` (already waiting) or ``inflight``.

        ``first`` puts it ahead of every ordinary block (calibrator blocks, whose
        caltables the target blocks need).
        """
        order = time.time() - (1e10 if first else 0.0)
        out = self._enqueue(keys=KEYS[:3], args=[block_id, json.dumps(spec), order, "1" if force else "0"])
        return out.decode() if isinstance(out, bytes) else out

    def claim(self, node: str, max_inflight: int, lease_s: float) -> Claim | None:
        """Take the oldest waiting block for ``node`` if it has a free slot."""
        token = secrets.token_hex(8)
        out = self._claim(keys=KEYS, args=[node, max_inflight, time.time(), lease_s, token])
        if not out:
            return None
        bid, spec, attempt = (x.decode() if isinstance(x, bytes) else x for x in out)
        return Claim(bid, json.loads(spec), node, token, int(attempt))

    def renew(self, block_id: str, token: str, lease_s: float) -> bool:
        """Extend the lease; False when the token no longer holds the block (stale task)."""
        return bool(self._renew(keys=[K_INFLIGHT, K_TOKEN], args=[block_id, token, time.time() + lease_s]))

    def holds(self, block_id: str, token: str) -> bool:
        cur = self.r.hget(K_TOKEN, block_id)
        return cur is not None and cur.decode() == token

    def release(self, block_id: str, token: str) -> bool:
        """The block ended; free its slot. False when the token was stale."""
        return bool(self._release(keys=[K_INFLIGHT, K_NODE, K_TOKEN, K_SPEC, K_ATTEMPTS, K_FREED],
                                  args=[block_id, token]))

    def wait_freed(self, timeout_s: float) -> bool:
        """Block until a block is released (True) or ``timeout_s`` passes (False).

        Wake-ups are hints: with several dispatchers one of them gets each;
        the others see the free slot at their next pass anyway.
        """
        got = self.r.blpop([K_FREED], timeout=max(timeout_s, 0.01))
        if got:
            self.r.delete(K_FREED)  # one pass serves every release so far
        return bool(got)

    def reap(self, max_attempts: int, now: float | None = None) -> list[Reaped]:
        """Requeue blocks whose lease expired (or give them up after max_attempts)."""
        out = self._reap(keys=KEYS, args=[now if now is not None else time.time(), max_attempts])
        res = []
        for item in out:
            bid, outcome, a = (item.decode() if isinstance(item, bytes) else item).split("|")
            res.append(Reaped(bid, outcome, int(a)))
        return res

    def cancel(self, block_id: str) -> bool:
        """Remove a waiting block from the queue (not one in flight)."""
        removed = self.r.zrem(K_PENDING, block_id)
        if removed:
            self.r.hdel(K_SPEC, block_id)
        return bool(removed)

    # -- views -----------------------------------------------------------
    def pending(self) -> list[str]:
        return [b.decode() for b in self.r.zrange(K_PENDING, 0, -1)]

    def inflight(self) -> dict[str, str]:
        """block id -> imaging node."""
        return {k.decode(): v.decode() for k, v in self.r.hgetall(K_NODE).items()}

    def tokens(self) -> dict[str, str]:
        """block id -> lease token of every block in flight."""
        return {k.decode(): v.decode() for k, v in self.r.hgetall(K_TOKEN).items()}

    def spec(self, block_id: str) -> dict | None:
        raw = self.r.hget(K_SPEC, block_id)
        return json.loads(raw) if raw else None

    def counts(self) -> dict[str, int]:
        nodes: dict[str, int] = {}
        for n in self.inflight().values():
            nodes[n] = nodes.get(n, 0) + 1
        return {"pending": self.r.zcard(K_PENDING), "inflight": self.r.zcard(K_INFLIGHT), **{f"inflight:{k}": v for k, v in nodes.items()}}

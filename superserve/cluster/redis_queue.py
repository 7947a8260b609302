"""The Redis side of scale-out: key layout, the atomic steps as Lua scripts, and the wire format of queue members
and replies. Front ends and workers only talk to each other through these.

Keys (all under a namespace prefix `P`, default "superserve:"):

  P:config        string  JSON {zoo, policy, policy_params, ...} published by front ends; P:config_id its sha256
  P:ids           counter request ids are allocated in blocks (seeded from the wall clock: survives a Redis restart)
  P:queue         zset    the global EDF queue: member "rid|arrival_s|min_accuracy", score = deadline_s (wall clock)
  P:req:{rid}     hash    fe (front end id), x (float32 image bytes), m (queue member), d (deadline), a (attempts);
                          TTL = until its deadline + grace, so nothing outlives a dead front end
  P:wake          list    one token per enqueued call (trimmed): idle workers BLPOP it instead of polling
  P:fe:{fe}       string  a front end's liveness key (TTL, refreshed); workers drop queued work of dead front ends
  P:fe:{fe}:r     list    that front end's replies (TTL); it waits on it with BLMPOP
  P:workers       set     registered worker ids;  P:worker:{wid} its heartbeat (TTL), JSON info
  P:inflight:{wid} set    request ids the worker claimed and has not answered: its lease
  P:metrics       hash    live counters (ok, late, shed, error, batches, images, compute_us, requeued, ...)

Protocol. A front end allocates ids, writes each image's hash and adds its member to P:queue (ENQUEUE, atomic, with
the global capacity check). A free worker reads the EDF head (ZRANGE + ZCARD), runs `policy.decide` on it exactly as
the embedded engine and the simulator do, and CLAIMs the decision atomically: all of the batch or nothing (another
worker took part of it: decide again), moving the ids into its lease set; infeasible ids are shed in the same step.
After executing it COMPLETEs: a reply is pushed for each id only if the id is still in its lease set (SREM == 1), so
a request whose lease was taken away (its worker was declared dead and it was re-queued) is answered once, by
whoever holds it last. REAP (run by every worker and front end about once a second) declares workers whose heartbeat
key expired dead, re-queues their leased requests (or fails them after `max_attempts` deaths: a poison request must
not kill the whole cluster), and answers requests still queued long after their deadline (no worker took them).
A front end that answers a call itself (cancelled by its client, failed when Redis was unreachable, expired) removes
the call's members from P:queue and deletes their P:req hashes, so no worker computes them for nobody.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

DEFAULT_NAMESPACE = "superserve"
ID_BLOCK = 1024  # request ids a front end reserves per round trip
WAKE_TOKENS = 64  # at most this many wake-up tokens are kept


class BackendError(ValueError):
    """A bad --backend URL or an unreachable Redis; the message says which and what to do."""


@dataclass(frozen=True)
class RedisURL:
    host: str
    port: int
    db: int
    password: str | None

    @property
    def display(self) -> str:
        return f"redis://{self.host}:{self.port}" + (f"/{self.db}" if self.db else "")


def parse_backend(url: str) -> RedisURL:
    """`redis://HOST:PORT[/DB]` -> RedisURL; anything else raises BackendError saying what is wrong."""
    parsed = urlparse(url)
    if parsed.scheme != "redis":
        raise BackendError(f"--backend {url!r}: expected redis://HOST:PORT (e.g. redis://127.0.0.1:6379)")
    if not parsed.hostname:
        raise BackendError(f"--backend {url!r}: no host (expected redis://HOST:PORT)")
    try:
        port = parsed.port or 6379
    except ValueError:
        raise BackendError(f"--backend {url!r}: the port is not a number in 1-65535") from None
    path = parsed.path.strip("/")
    if path and not path.isdigit():
        raise BackendError(f"--backend {url!r}: the database must be a number (redis://HOST:PORT/DB)")
    return RedisURL(parsed.hostname, port, int(path or 0), parsed.password)


def connect(url: RedisURL, socket_timeout_s: float | None = 5.0, check: bool = True,
            connect_timeout_s: float = 1.0) -> Any:
    """A redis-py client (bytes replies). With `check`, PINGs once and raises BackendError when it cannot.

    A command waits at most `socket_timeout_s` for its reply and is tried twice, so against a stalled Redis (one
    that accepts connections but does not answer: SIGSTOP, a partition) it fails within 2 x socket_timeout_s."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # One quick retry (a pooled connection that went stale reconnects transparently); longer outages surface as
    # errors at once, and the callers' own loops back off. redis-py's default would block a call for seconds.
    client = redis.Redis(host=url.host, port=url.port, db=url.db, password=url.password,
                         socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
                         health_check_interval=0,
                         retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1))
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise BackendError(f"cannot reach Redis at {url.display}: {exc} (is redis-server running there?)") \
                from None
    return client


class Keys:
    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.prefix = namespace.rstrip(":") + ":"
        p = self.prefix
        self.config, self.config_id, self.ids = p + "config", p + "config_id", p + "ids"
        self.queue, self.wake, self.workers, self.metrics = p + "queue", p + "wake", p + "workers", p + "metrics"
        self.worker_seq = p + "worker_seq"

    def req(self, rid: str | int) -> str:
        return f"{self.prefix}req:{rid}"

    def frontend(self, fe: str) -> str:
        return f"{self.prefix}fe:{fe}"

    def replies(self, fe: str) -> str:
        return f"{self.prefix}fe:{fe}:r"

    def heartbeat(self, wid: int) -> str:
        return f"{self.prefix}worker:{wid}"

    def inflight(self, wid: int) -> str:
        return f"{self.prefix}inflight:{wid}"


# --- wire formats ---------------------------------------------------------------------------------------------------
def member(rid: int, arrival_s: float, min_accuracy: float) -> str:
    # Zero-padded so that equal deadlines order by id (= arrival order within a front end), as the EDF queue does.
    return f"{rid:017d}|{arrival_s!r}|{min_accuracy!r}"


def parse_member(raw: bytes) -> tuple[int, float, float]:
    rid, arrival, acc = raw.split(b"|")
    return int(rid), float(arrival), float(acc)


@dataclass(frozen=True, eq=False)
class Reply:
    """One image's answer as a front end receives it (times: wall clock of the worker's host, seconds)."""

    rid: int
    status: str  # ok / late / error / shed / unavailable
    subnet_id: str  # "" when not served
    worker_id: int | None
    dispatch_s: float | None
    finish_s: float | None
    message: str  # why it failed ("" when served)
    row: np.ndarray | None  # (num_classes,) float32 probabilities when served


def encode_reply(rid: int, status: str, subnet_id: str, worker_id: int, dispatch_s: float, finish_s: float,
                 row: np.ndarray | None, message: str = "") -> bytes:
    head = f"{rid}|{status}|{subnet_id}|{worker_id}|{dispatch_s!r}|{finish_s!r}|{message}".encode()
    return head + b"\0" + (b"" if row is None else np.ascontiguousarray(row, dtype=np.float32).tobytes())


def decode_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\0")
    rid, status, subnet, worker, dispatch, finish, message = head.decode().split("|", 6)
    return Reply(int(rid), status, subnet, int(worker) if worker else None, float(dispatch) if dispatch else None,
                 float(finish) if finish else None, message, np.frombuffer(body, dtype=np.float32) if body else None)


@dataclass(frozen=True)
class ClusterConfig:
    """What front ends publish and workers run with: the zoo profile and the policy."""

    zoo: dict[str, Any]  # Zoo.to_dict()
    policy: str
    policy_params: dict[str, Any]
    model_name: str

    def to_json(self) -> str:
        return json.dumps({"zoo": self.zoo, "policy": self.policy, "policy_params": self.policy_params,
                           "model_name": self.model_name}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "ClusterConfig":
        d = json.loads(raw)
        return cls(d["zoo"], d["policy"], d["policy_params"], d["model_name"])

    @property
    def config_id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def wall_clock() -> float:
    """Deadlines in Redis are wall-clock seconds: hosts must keep their clocks synchronised (NTP) to ~1 ms."""
    return time.time()


# --- atomic steps ---------------------------------------------------------------------------------------------------
# ENQUEUE  KEYS: queue, wake, workers, frontend-alive
# ARGV: prefix, capacity, fe, n, then per image: rid, deadline_s, member, payload, ttl_s
# Returns 1 (queued), -1 (no worker registered), -2 (front end not registered: Redis lost its state) or
# -(3 + queued) when full (nothing queued then).
ENQUEUE = """
local P, cap, fe, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if redis.call('SCARD', KEYS[3]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[4]) == 0 then return -2 end
local queued = redis.call('ZCARD', KEYS[1])
if queued + n > cap then return -(3 + queued) end
local i = 5
local maxttl = 1
for k = 1, n do
  local rid, d, m, x, ttl = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], tonumber(ARGV[i+4])
  i = i + 5
  local rk = P .. 'req:' .. rid
  redis.call('HSET', rk, 'fe', fe, 'x', x, 'm', m, 'd', d, 'a', 0)
  redis.call('EXPIRE', rk, ttl)
  redis.call('ZADD', KEYS[1], d, m)
  if ttl > maxttl then maxttl = ttl end
end
-- The queue key itself outlives its longest-lived entry only: if every process dies, it goes too.
if redis.call('TTL', KEYS[1]) < maxttl then redis.call('EXPIRE', KEYS[1], maxttl) end
redis.call('RPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], -%d, -1)
redis.call('EXPIRE', KEYS[2], maxttl)
return 1
""" % WAKE_TOKENS

# CLAIM  KEYS: queue, inflight(wid), metrics
# ARGV: prefix, now_s, lease_ttl_s, reply_ttl_s, n_claim, members..., n_infeasible, members...
# Sheds the infeasible members still queued (a "shed" reply each), then claims all `n_claim` members or none.
# Returns {claimed (1/0), shed count, dropped count, then rid, fe, payload per claimed request}. Requests whose front
# end is gone (liveness key expired) are dropped instead of computed: nobody is waiting for them.
CLAIM = """
local P, now, lease_ttl, reply_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local i = 6
local claim = {}
for k = 1, n do claim[k] = ARGV[i]; i = i + 1 end
local ninf = tonumber(ARGV[i]); i = i + 1
local shed = 0
for k = 1, ninf do
  local m = ARGV[i]; i = i + 1
  if redis.call('ZREM', KEYS[1], m) == 1 then
    local rid = string.match(m, '^0*(%d+)')
    local rk = P .. 'req:' .. rid
    local fe = redis.call('HGET', rk, 'fe')
    if fe then
      local q = P .. 'fe:' .. fe .. ':r'
      redis.call('RPUSH', q, rid .. '|shed||||' .. now .. '|\\0')
      redis.call('EXPIRE', q, reply_ttl)
      redis.call('DEL', rk)
    end
    shed = shed + 1
  end
end
if shed > 0 then redis.call('HINCRBY', KEYS[3], 'shed', shed) end
for k = 1, n do
  if not redis.call('ZSCORE', KEYS[1], claim[k]) then return {0, shed, 0} end
end
local out = {1, shed, 0}
local dropped = 0
for k = 1, n do
  local m = claim[k]
  redis.call('ZREM', KEYS[1], m)
  local rid = string.match(m, '^0*(%d+)')
  local rk = P .. 'req:' .. rid
  local v = redis.call('HMGET', rk, 'fe', 'x')
  if v[1] and v[2] and redis.call('EXISTS', P .. 'fe:' .. v[1]) == 1 then
    redis.call('SADD', KEYS[2], rid)
    out[#out + 1] = rid
    out[#out + 1] = v[1]
    out[#out + 1] = v[2]
  else
    redis.call('DEL', rk)
    dropped = dropped + 1
  end
end
out[3] = dropped
if dropped > 0 then redis.call('HINCRBY', KEYS[3], 'dropped', dropped) end
redis.call('EXPIRE', KEYS[2], lease_ttl)
return out
"""

# COMPLETE  KEYS: inflight(wid), metrics
# ARGV: prefix, reply_ttl_s, n, then per request: rid, fe, status, reply bytes; then compute_us, subnet_id
# Delivers a reply only for ids still leased to this worker. Returns how many were delivered.
COMPLETE = """
local P, reply_ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local i = 4
local delivered = 0
for k = 1, n do
  local rid, fe, status, reply = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  i = i + 4
  if redis.call('SREM', KEYS[1], rid) == 1 then
    local q = P .. 'fe:' .. fe .. ':r'
    redis.call('RPUSH', q, reply)
    redis.call('EXPIRE', q, reply_ttl)
    redis.call('DEL', P .. 'req:' .. rid)
    redis.call('HINCRBY', KEYS[2], status, 1)
    delivered = delivered + 1
  end
end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[2], 'batches', 1)
  redis.call('HINCRBY', KEYS[2], 'images', delivered)
  redis.call('HINCRBY', KEYS[2], 'compute_us', ARGV[i])
  redis.call('HINCRBY', KEYS[2], 'subnet:' .. ARGV[i+1], delivered)
end
if n > delivered then redis.call('HINCRBY', KEYS[2], 'stale_answers', n - delivered) end
return delivered
"""

# REAP  KEYS: workers, queue, metrics
# ARGV: prefix, now_s, grace_s, max_attempts, reply_ttl_s
# Returns {dead workers, re-queued, failed (too many attempts), expired (queued long past the deadline)}.
REAP = """
local P, now, grace, maxa, reply_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local dead, requeued, failed, expired = 0, 0, 0, 0
local function answer(rid, fe, status, msg)
  local q = P .. 'fe:' .. fe .. ':r'
  redis.call('RPUSH', q, rid .. '|' .. status .. '||||' .. ARGV[2] .. '|' .. msg .. '\\0')
  redis.call('EXPIRE', q, reply_ttl)
end
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', P .. 'worker:' .. wid) == 0 then
    local ik = P .. 'inflight:' .. wid
    for _, rid in ipairs(redis.call('SMEMBERS', ik)) do
      local rk = P .. 'req:' .. rid
      local v = redis.call('HMGET', rk, 'fe', 'd', 'm')
      if v[1] then
        local a = redis.call('HINCRBY', rk, 'a', 1)
        if a >= maxa then
          answer(rid, v[1], 'error', 'worker ' .. wid .. ' died while running it (' .. a .. ' worker deaths); not retried')
          redis.call('DEL', rk)
          failed = failed + 1
        else
          redis.call('ZADD', KEYS[2], v[2], v[3])
          requeued = requeued + 1
        end
      end
    end
    redis.call('DEL', ik)
    redis.call('SREM', KEYS[1], wid)
    dead = dead + 1
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - grace, 'LIMIT', 0, 1000)
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[2], m)
  local rid = string.match(m, '^0*(%d+)')
  local rk = P .. 'req:' .. rid
  local fe = redis.call('HGET', rk, 'fe')
  if fe then
    answer(rid, fe, 'unavailable', 'no worker took it before its deadline')
    redis.call('DEL', rk)
  end
  expired = expired + 1
end
if dead > 0 then redis.call('HINCRBY', KEYS[3], 'dead_workers', dead) end
if requeued > 0 then redis.call('HINCRBY', KEYS[3], 'requeued', requeued) end
if failed > 0 then redis.call('HINCRBY', KEYS[3], 'error', failed) end
if expired > 0 then redis.call('HINCRBY', KEYS[3], 'expired', expired) end
return {dead, requeued, failed, expired}
"""


class Scripts:
    """The Lua scripts registered on one client (EVALSHA, reloaded transparently after a Redis restart)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.keys = keys
        self.enqueue = client.register_script(ENQUEUE)
        self.claim = client.register_script(CLAIM)
        self.complete = client.register_script(COMPLETE)
        self._reap = client.register_script(REAP)

    def reap(self, now_s: float, grace_s: float, max_attempts: int, reply_ttl_s: int) -> list[int]:
        k = self.keys
        return [int(v) for v in self._reap(keys=[k.workers, k.queue, k.metrics],
                                           args=[k.prefix, repr(now_s), repr(grace_s), max_attempts, reply_ttl_s])]

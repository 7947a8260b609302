"""A worker of the Redis cluster: pull from the global EDF queue, decide with the policy, compute, answer.

Per dispatch, with the dispatch core the embedded engine and the simulator run (`superserve.dispatch`): read the EDF
head (the policy's `snapshot_limit` requests and the queue length), the core's decision for this worker, then CLAIM
the decision atomically (all of the batch or none: when another worker took part of it, decide again on a fresh
snapshot; infeasible requests are shed in the same script, which answers them), the core's `take` (the policy's state
committed, the worker busy on its subnet), run it with the same `run_batch` as the embedded workers, the core's
completion (ok/late per request, `policy.observe`, the profile correction), and COMPLETE (a reply per request to its
front end, only for requests still leased to this worker). The policy state and the online profile correction are
this worker's own: its latency is what its host measures; the policy is rebuilt from the corrected table every
`correction_interval_s`, the correction relaxing toward the table meanwhile, as in the embedded engine.

A heartbeat thread keeps the registration alive (key with TTL), extends the lease on claimed requests, reaps dead
workers, and notices a new zoo/policy published by a front end. Redis errors anywhere: back off and retry; a batch
whose answers cannot be delivered is dropped here (its front end already answered those calls with an error).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.base import Policy, make_policy
from superserve.cluster.redis_queue import (ClusterConfig, Keys, RedisURL, Scripts, connect, encode_reply,
                                            parse_member, wall_clock)
from superserve.dispatch import Dispatch, DispatchCore
from superserve.outcomes import Outcome
from superserve.profile_correction import CORRECTION_INTERVAL_S, ProfileCorrector
from superserve.server.workers import process_device, run_batch, synchronize
from superserve.types import QueueSnapshot, Request, WorkerState
from superserve.zoo import HostFingerprint, Zoo

log = logging.getLogger("superserve.cluster.worker")


@dataclass(frozen=True)
class WorkerConfig:
    checkpoint: Path
    namespace: str = "superserve"
    threads: int = 1  # torch intra-op threads
    heartbeat_ttl_s: int = 3  # registration TTL: a worker silent this long is declared dead, its requests re-queued
    lease_ttl_s: int = 60  # TTL of the lease set (refreshed by the heartbeat): only matters if every process dies
    reply_ttl_s: int = 30
    max_attempts: int = 3
    grace_s: float = 2.0
    correction_interval_s: float | None = CORRECTION_INTERVAL_S  # rebuild the policy from corrected latencies; None = off
    device: str = "cpu"  # cpu, cuda or cuda:N: where this worker's copy of the model runs
    # auto: spot-check the published latency table on this worker's device at start and scale it to this worker's
    # speed when it was profiled elsewhere (or runs at another speed here); never: take it as published
    reprofile: str = "auto"


class ClusterWorker:
    def __init__(self, url: RedisURL, config: WorkerConfig) -> None:
        from superserve.profiler import device_name

        self.url, self.config = url, config
        self.device = process_device(config.device)  # CUDA asked for and absent: a clear error before anything else
        if self.device.type == "cuda":  # this process's one CUDA context, on this GPU only
            torch.cuda.set_device(self.device)
        self.host = HostFingerprint.current(device=device_name(self.device), threads=config.threads)
        self.keys = Keys(config.namespace)
        self.client = connect(url)  # BackendError when Redis is not there
        self.scripts = Scripts(self.client, self.keys)
        self.token = uuid.uuid4().hex[:8]
        self.worker_id = -1
        self.batches = 0
        self.stale_batches = 0  # batches whose answers were not delivered (lease lost): someone else answers them
        self._stop = threading.Event()
        self._config_id: bytes | None = None
        self._reload = threading.Event()
        self._net: Any = None

    # --- setup ----------------------------------------------------------------------------------------------------
    def wait_for_config(self, say=print) -> ClusterConfig:  # noqa: ANN001
        said = False
        while not self._stop.is_set():
            raw, cid = self.client.mget(self.keys.config, self.keys.config_id)
            if raw is not None:
                self._config_id = cid
                return ClusterConfig.from_json(raw)
            if not said:
                say(f"superserve worker: waiting for a front end to publish its zoo at {self.url.display} "
                    f"(superserve serve --backend {self.url.display})")
                said = True
            self._stop.wait(0.5)
        raise InterruptedError("stopped while waiting for a front end")

    def load(self, published: ClusterConfig) -> None:
        """Build the policy from the published zoo; load the checkpoint (once), warm every subnet up and fit the
        published latency table to this worker's device (`_table_for_this_worker`) before it takes work."""
        from supernet.checkpoint import load_checkpoint

        zoo = Zoo.from_dict(published.zoo)
        if self._net is None:
            torch.set_num_threads(self.config.threads)
            self._net, _ = load_checkpoint(self.config.checkpoint, map_location=self.device)  # weights moved once
        missing = [e.subnet_id for e in zoo.entries if e.subnet_id not in self._net.norm_table.stats]
        if missing:
            raise ValueError(f"checkpoint {self.config.checkpoint} has no SubnetNorm statistics for the published "
                             f"zoo's subnets {', '.join(missing)}: is it the checkpoint the front end serves?")
        self.published = published
        self.configs = {e.subnet_id: e.config for e in zoo.entries}
        self.sample_shape = (zoo.space.in_channels, zoo.space.image_size, zoo.space.image_size)
        sample = torch.zeros((1, *self.sample_shape), device=self.device)
        self.zoo = zoo = self._table_for_this_worker(zoo, sample)
        self.install_scheduler(zoo)

    def _table_for_this_worker(self, zoo: Zoo, sample: torch.Tensor) -> Zoo:
        """The published table as this worker's scheduler starts from it (`table_scale`: the factor applied). With
        reprofile="auto", the embedded server's spot check (`profiling.check_speed`: every subnet at batch 1, warm-up
        included, so it doubles as the warm-up) on this worker's device: a table profiled elsewhere (fingerprint,
        device included, differs) is scaled by the measured factor; a matching one only when it is off by more than
        `SPEED_TOLERANCE` (a machine of another speed behind the same fingerprint). The check runs a second time,
        without warm-up, when the first says "scale", and the faster of the two counts: a stall while the worker
        starts must not scale the table up. Online correction refines the table per subnet from there."""
        from superserve.server import profiling

        matches = zoo.host_matches(self.host)
        self.table_scale = 1.0
        if self.config.reprofile == "never":
            with torch.inference_mode():
                for cfg in self.configs.values():
                    self._net(sample, cfg)
            synchronize(self.device)
            if not matches:  # e.g. a CPU table and this worker on a GPU
                log.warning("the published latency table was profiled on %s (%s, %d thread(s)); this worker runs on "
                            "%s (%s, %d thread(s)): --reprofile never, so its decisions start from that table and "
                            "rely on online correction", zoo.host.device, zoo.host.processor, zoo.host.threads,
                            self.host.device, self.host.processor, self.host.threads)
            return zoo
        speed = profiling.check_speed(self._net, zoo, sample)
        if not matches or not speed.fits():
            again = profiling.check_speed(self._net, zoo, sample, warm_up=False)
            speed = min(speed, again, key=lambda s: s.ratio)
        where = (f"on {zoo.host.device} ({zoo.host.processor}, {zoo.host.threads} thread(s))" if not matches
                 else "on a host with this worker's fingerprint")
        if matches and speed.fits():
            log.info("the published latency table (profiled %s) fits: this worker runs the subnets at %.2fx its "
                     "batch-1 latencies", where, speed.ratio)
            return zoo
        self.table_scale = speed.ratio
        log.warning("the published latency table was profiled %s; this worker (%s, %s, %d thread(s)) runs the "
                    "subnets at %.2fx its batch-1 latencies (median over %d subnets): serving with the table scaled "
                    "by %.3g, corrected online", where, self.host.device, self.host.processor, self.host.threads,
                    speed.ratio, speed.subnets, speed.ratio)
        return profiling.scaled_for_host(zoo, speed)

    def install_scheduler(self, zoo: Zoo) -> None:
        """A fresh dispatch core for `zoo` and the published policy (its state and the correction start afresh)."""
        corrector = ProfileCorrector(zoo) if self.config.correction_interval_s else None
        # The queue is Redis's: the core gets each snapshot from `step` and the claimed batch from CLAIM.
        self.core = DispatchCore(zoo, self._make_policy(zoo), _NoLocalQueue(), 1, "shed", corrector,
                                 worker_ids=[self.worker_id])
        self.core.last_correction_s = time.monotonic()

    @property
    def policy(self) -> Policy:
        return self.core.policy

    def _make_policy(self, zoo: Zoo) -> Policy:
        return make_policy(self.published.policy, zoo, **self.published.policy_params)

    def register(self) -> None:
        k = self.keys
        self.worker_id = int(self.client.incr(k.worker_seq))
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "started_s": time.time(), "device": self.host.device})
        pipe = self.client.pipeline(transaction=False)
        pipe.set(k.heartbeat(self.worker_id), info, ex=self.config.heartbeat_ttl_s)
        pipe.sadd(k.workers, self.worker_id)
        pipe.execute()
        self._info = info

    def deregister(self) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.srem(self.keys.workers, self.worker_id)
            pipe.delete(self.keys.heartbeat(self.worker_id), self.keys.inflight(self.worker_id))
            pipe.execute()
        except Exception:  # noqa: BLE001 - Redis may be gone; the heartbeat key expires anyway
            pass

    # --- heartbeat ------------------------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        import redis

        cfg, k = self.config, self.keys
        period = max(0.1, cfg.heartbeat_ttl_s / 4)
        last_reap = 0.0
        while not self._stop.wait(period):
            try:
                wid = self.worker_id
                pipe = self.client.pipeline(transaction=False)
                pipe.get(k.heartbeat(wid))
                pipe.get(k.config_id)
                mine, cid = pipe.execute()
                if mine is None or json.loads(mine).get("token") != self.token:
                    # Declared dead (we stalled), Redis restarted, or another worker holds this id: a fresh id.
                    # In-flight answers under the old id are then dropped; whoever holds those requests answers.
                    log.warning("worker %d lost its registration; registering again", wid)
                    self.register()
                else:
                    pipe = self.client.pipeline(transaction=False)
                    pipe.set(k.heartbeat(wid), self._info, ex=cfg.heartbeat_ttl_s)
                    pipe.sadd(k.workers, wid)
                    pipe.expire(k.inflight(wid), cfg.lease_ttl_s)
                    pipe.execute()
                if cid is not None and cid != self._config_id:
                    self._reload.set()
                now = time.time()
                if now - last_reap >= 1.0:
                    last_reap = now
                    dead, requeued, failed, expired = self.scripts.reap(now, cfg.grace_s, cfg.max_attempts,
                                                                        cfg.reply_ttl_s)
                    if dead:
                        log.warning("declared %d worker(s) dead: %d request(s) re-queued, %d failed", dead,
                                    requeued, failed)
            except redis.RedisError as exc:
                log.warning("heartbeat: Redis unavailable (%s); retrying", exc)

    # --- the loop -------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        """Serve until `stop()`: the worker must be loaded and registered."""
        import redis

        hb = threading.Thread(target=self._heartbeat_loop, name="superserve-worker-heartbeat", daemon=True)
        hb.start()
        backoff = 0.05
        try:
            while not self._stop.is_set():
                try:
                    if self._reload.is_set():
                        self._reload.clear()
                        self.load(self.wait_for_config(say=log.info))
                    self.step()
                    backoff = 0.05
                except redis.RedisError as exc:
                    log.warning("Redis unavailable (%s); retrying in %.2f s", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(2 * backoff, 2.0)
        finally:
            self._stop.set()
            hb.join(timeout=5)
            self.deregister()

    def step(self) -> None:
        """One dispatch: snapshot, decide, claim, execute, complete (or wait for work)."""
        k, cfg = self.keys, self.config
        pipe = self.client.pipeline(transaction=False)
        core = self.core
        pipe.zrange(k.queue, 0, core.policy.snapshot_limit - 1, withscores=True)
        pipe.zcard(k.queue)
        head, queued = pipe.execute()
        if not head:
            self.client.blpop([k.wake], timeout=0.5)
            return
        now = wall_clock()
        members: dict[int, bytes] = {}
        requests = []
        for raw, deadline in head:
            rid, arrival, min_acc = parse_member(raw)
            members[rid] = raw
            requests.append(Request(rid, arrival, deadline, min_acc))
        snapshot = QueueSnapshot(tuple(requests), int(queued))
        wid = self.worker_id
        if core.workers[0].worker_id != wid:  # registered again under a new id: the policy sees this one
            core.workers[0] = WorkerState(wid, core.workers[0].loaded_subnet_id)
        decision, state = core.decide(0, now, snapshot)
        if decision is None:
            self.client.blpop([k.wake], timeout=0.01)
            return
        claim = [members[r] for r in decision.request_ids]
        infeasible = [members[r] for r in decision.infeasible_ids]
        out = self.scripts.claim(keys=[k.queue, k.inflight(wid), k.metrics],
                                 args=[k.prefix, repr(now), cfg.lease_ttl_s, cfg.reply_ttl_s, len(claim), *claim,
                                       len(infeasible), *infeasible])
        if not int(out[0]):  # another worker took part of the batch: decide again on a fresh snapshot
            return
        got = out[3:]
        rids = [int(got[i]) for i in range(0, len(got), 3)]
        by_id = {r.request_id: r for r in requests}
        d = core.take(0, decision, state, now, batch=[by_id[r] for r in rids],
                      infeasible=[by_id[r] for r in decision.infeasible_ids])
        core.shed.clear()  # CLAIM answered them (a "shed" reply each, to their front ends)
        if d is None:
            return
        fes = [got[i + 1] for i in range(0, len(got), 3)]
        x = np.frombuffer(b"".join(got[i + 2] for i in range(0, len(got), 3)), dtype=np.float32)
        inputs = torch.from_numpy(x.reshape(len(rids), *self.sample_shape).copy())  # (B, C, S, S)
        self._execute(wid, d, fes, inputs)

    def _execute(self, wid: int, d: Dispatch, fes: list[bytes], inputs: torch.Tensor) -> None:
        k, cfg = self.keys, self.config
        subnet_id, rids, dispatch_s = d.subnet_id, d.request_ids, d.dispatch_s
        result = run_batch(self._net, self.configs, self.batches, subnet_id, inputs, wid, self.device)
        self.batches += 1
        finish = wall_clock()
        on_time, _ = self.core.complete(d, finish, failed=result.error is not None)
        args: list[Any] = [k.prefix, cfg.reply_ttl_s, len(rids)]
        for j, rid in enumerate(rids):
            if result.error is not None:
                status, row, msg = Outcome.ERROR, None, result.error
            else:
                status, row, msg = (Outcome.OK if on_time[j] else Outcome.LATE), result.probabilities[j], ""
            args += [rid, fes[j], status, encode_reply(rid, status, subnet_id if row is not None else "", wid,
                                                       dispatch_s, finish, row, msg.replace("|", "/"))]
        args += [int(result.compute_s * 1e6), subnet_id]
        delivered = int(self.scripts.complete(keys=[k.inflight(wid), k.metrics], args=args))
        if delivered < len(rids):
            self.stale_batches += 1
            log.warning("batch %d: %d of %d answers not delivered (lease lost: re-dispatched elsewhere)",
                        self.batches, len(rids) - delivered, len(rids))
        if self.core.corrector is not None and result.error is None:
            self._maybe_correct()

    def _maybe_correct(self) -> None:
        assert self.config.correction_interval_s
        self.core.correct_when_due(time.monotonic(), self.config.correction_interval_s, self._make_policy)


class _NoLocalQueue:
    """The core's queue in a cluster worker: empty here, the queue is Redis's (`step` reads it and CLAIMs from it)."""

    def __len__(self) -> int:
        return 0

    def __contains__(self, request_id: int) -> bool:
        return False

    def snapshot(self, limit: int) -> QueueSnapshot:
        return QueueSnapshot((), 0)

    def pop_ids(self, request_ids: Any) -> list[Request]:
        raise KeyError("the cluster's queue is Redis's: CLAIM takes the requests")

    def drain(self) -> list[Request]:
        return []

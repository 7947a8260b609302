"""What the doors (the gRPC servicer, the HTTP door, the hint defense's per-image split) need from an engine.

Two engines satisfy it: the embedded `superserve.server.engine.Engine` (an in-process EDF queue and worker pool) and
the cluster front end's `superserve.cluster.frontend.RedisEngine` (Redis's queue, `superserve worker` processes).
`tests/test_parity.py` checks that both have every member with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from superserve.dispatch import CallResult


@runtime_checkable
class ServingEngine(Protocol):
    clock: Callable[[], float]  # the engine's monotonic clock, seconds: arrival stamps are taken on it

    @property
    def accepting(self) -> bool:
        """Admitting calls (False once draining; the cluster's also while Redis or every worker is away)."""

    @property
    def serving(self) -> bool:
        """Able to serve what it admits (False while no worker is up)."""

    def submit(self, inputs: Any, slo_ms: float | None, min_accuracy: float, on_done: Callable[[CallResult], None],
               arrival_s: float | None = None) -> Callable[[], bool]:
        """Queue one call of B images ((B, C, S, S) tensor); `on_done` gets its one answer later, from another
        thread. Raises `superserve.outcomes.Refused` when refused at once (nothing queued, `on_done` never runs).
        Returns `cancel()`: withdraws the call (True if it was still unanswered)."""

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Stop admitting calls and wait until every admitted one is answered (True if all were in time)."""

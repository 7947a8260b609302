"""How much a serving host adds to the latency table: a per-batch cost and a per-arrival stall, fitted from a server's
per-request records (`superserve serve --records`), for the simulator's `SimConfig.host_ms_per_*`.

On a CPU host the process that runs the model also receives, decodes and answers calls, under one interpreter lock
and on the same cores as the workers (and, in a benchmark, as the client). A batch then takes longer than the table
says, by roughly a fixed cost plus a stall for every call that arrives while it runs. Fitted by least squares over the
batches of a run:

    observed - table median (subnet, size)  =  ms_per_batch + ms_per_request x (arrivals during the batch)

The slope is Theil-Sen's (the median of pairwise slopes, scipy.stats.theilslopes), not least squares: a few batches
stalled by something else (a page fault, the client's collector) would otherwise tilt it; on five 10-20 s
calibration runs here least squares gave 1.08-1.76 ms per arrival and Theil-Sen 1.08-1.65. Both are clipped at 0.
The fit is only as good as the run it comes from: calibrate on a run that covers light and heavy moments (20 s of a
ramp gave 1.20 and 1.35 in two runs), and not on the runs the simulator is then compared with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from superserve.records import LATE, OK, RequestRecord
from superserve.zoo import Zoo

JITTER_LEVELS = tuple(np.linspace(0.0, 1.0, 41).tolist())  # quantile levels of the fitted spreads below
STALL_MIN_MS = 10.0  # a batch this much beyond the host-cost line, or more, may be a stall


@dataclass(frozen=True)
class HostCost:
    ms_per_batch: float
    ms_per_request: float
    batches: int  # batches the fit used
    mean_arrivals_per_batch: float
    residual_ms: float  # root mean square of the fit's residuals
    # the residuals' quantiles at the levels of JITTER_LEVELS, stalls left out: the spread of a batch's time around
    # the fitted line (the table's own noise with the host's), for `SimConfig.host_batch_jitter_ms`
    residual_quantiles_ms: tuple[float, ...] = ()
    # stalls: batches that took far longer than the line (`stall_threshold_ms`), counted per second of batch time
    # (a stall hits a batch that is running when it comes: the longer the batch, the likelier), and the quantiles
    # of their extra time; for `SimConfig.host_stall_rate_per_s` and `host_stall_ms`
    stall_rate_per_s: float = 0.0
    stall_ms_quantiles: tuple[float, ...] = ()
    # the factor on the table's time, fitted with `fit_host_cost(..., table_scale=True)` (1: the additive model)
    table_scale: float = 1.0


def batch_excess(records: Iterable[RequestRecord], zoo: Zoo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per served batch: (arrivals while it ran, observed minus the table's median ms, observed ms). A batch is the
    requests one worker started at one instant on one subnet."""
    recs = list(records)
    arrivals = np.sort(np.array([r.arrival_s for r in recs], dtype=float))
    batches: dict[tuple[int | None, float, str], list[RequestRecord]] = defaultdict(list)
    for r in recs:
        if r.status in (OK, LATE) and r.dispatch_s is not None and r.finish_s is not None and r.subnet_id:
            batches[(r.worker_id, r.dispatch_s, r.subnet_id)].append(r)
    by_id = {e.subnet_id: e for e in zoo.entries}
    sizes = np.array(zoo.batch_sizes, dtype=float)
    during, excess, observed = [], [], []
    for (_, start, sid), rs in batches.items():
        entry = by_id.get(sid)
        if entry is None:
            continue
        finish = max(r.finish_s for r in rs)  # type: ignore[type-var]
        table_ms = float(np.interp(len(rs), sizes, [entry.latency_ms[b].median_ms for b in zoo.batch_sizes]))
        during.append(np.searchsorted(arrivals, finish, "left") - np.searchsorted(arrivals, start, "right"))
        excess.append((finish - start) * 1e3 - table_ms)
        observed.append((finish - start) * 1e3)
    return np.array(during, dtype=float), np.array(excess, dtype=float), np.array(observed, dtype=float)


def stall_threshold_ms(rest: np.ndarray) -> float:
    """Residuals above this are stalls, not spread: 6 robust standard deviations (1.4826 MAD) above the median, and
    never under STALL_MIN_MS."""
    med = float(np.median(rest))
    return max(STALL_MIN_MS, med + 6 * 1.4826 * float(np.median(np.abs(rest - med))))


def _fit_scaled(during: np.ndarray, excess: np.ndarray, table: np.ndarray) -> tuple[float, float, float]:
    """excess = a + (scale - 1) x table + c x during, robustly (soft-L1 loss, 1 ms scale: a stalled batch counts
    about linearly, not squared); a >= 0 and c >= 0 as in the additive fit, scale in [0.5, 3]."""
    from scipy.optimize import least_squares

    x = np.column_stack([np.ones_like(table), table, during])
    fit = least_squares(lambda p: x @ p - excess, x0=np.array([max(float(np.median(excess)), 0.0), 0.0, 0.0]),
                        bounds=([0.0, -0.5, 0.0], [np.inf, 2.0, np.inf]), loss="soft_l1", f_scale=1.0)
    a, m, c = (float(v) for v in fit.x)
    return a, 1.0 + m, c


def fit_host_cost(records: Iterable[RequestRecord], zoo: Zoo, table_scale: bool = False) -> HostCost:
    """Fit the host cost of a run. With `table_scale` the table's time also gets a fitted factor (`_fit_scaled`)."""
    during, excess, observed = batch_excess(records, zoo)
    if len(during) < 2:
        raise ValueError(f"need at least 2 served batches to fit a host cost, got {len(during)}")
    from scipy import stats  # 0.7 s to import: only when fitting

    table = observed - excess
    scale = 1.0
    if table_scale:
        a, scale, c = _fit_scaled(during, excess, table)
    elif np.ptp(during) == 0:  # no spread in arrivals: only the per-batch cost is identifiable
        a, c = float(np.median(excess)), 0.0
    else:
        c, a = (float(x) for x in stats.theilslopes(excess, during)[:2])
        if c < 0:  # more arrivals never make a batch faster: refit the constant alone
            a, c = float(np.median(excess)), 0.0
    a, c = max(float(a), 0.0), max(float(c), 0.0)
    rest = excess - a - (scale - 1.0) * table - c * during
    residual = float(np.sqrt(np.mean(rest ** 2)))
    stalled = rest > stall_threshold_ms(rest)
    stalls = rest[stalled]
    # per second of batch time without the stalls, as the simulator draws them
    rate = float(len(stalls) / ((observed.sum() - stalls.sum()) * 1e-3)) if len(stalls) else 0.0
    return HostCost(a, c, len(during), float(np.mean(during)), residual,
                    tuple(round(float(x), 4) for x in np.quantile(rest[~stalled], JITTER_LEVELS)), rate,
                    tuple(round(float(x), 4) for x in np.quantile(stalls, JITTER_LEVELS)) if len(stalls) else (),
                    scale)


@dataclass(frozen=True)
class ClientPath:
    """The call's path outside the scheduler, for `SimConfig.host_ms_per_receive/host_ms_per_answer/network_ms`."""

    ms_per_receive: float
    ms_per_answer: float
    network_ms: float
    requests: int  # served calls the fit used
    residual_ms: float  # mean absolute error of the fitted model over them
    # what is left per call around network_ms, at the levels of JITTER_LEVELS: the path's tail (a call stuck behind
    # the interpreter lock, a client that sent late), for `SimConfig.network_jitter_ms`
    jitter_ms: tuple[float, ...] = ()
    # the client's send lag (scheduled to sent), at the levels of JITTER_LEVELS: a call reaches the server that much
    # late, and the server's deadline counts from its arrival there (for `SimConfig.client_send_lag_ms`)
    send_lag_ms: tuple[float, ...] = ()


_PATH_GRID_MS = np.round(np.arange(0.0, 1.55, 0.1), 2)  # candidate receive / answer costs per call


def _host_waits(arrivals_s: np.ndarray, batches: list[tuple[float, list[int]]], receive_s: float,
                answer_s: float) -> np.ndarray:
    """Per request (index into arrivals_s): its wait on one first-come-first-served host thread that takes in every
    call (`receive_s`) and sends every answer of a finished batch one after another (`answer_s`)."""
    events = [(t, 0, k) for k, t in enumerate(arrivals_s.tolist())] + [(f, 1, j) for j, (f, _) in enumerate(batches)]
    events.sort()
    wait = np.zeros(len(arrivals_s))
    free = -np.inf
    for t, kind, k in events:
        if kind == 0:
            free = max(t, free) + receive_s
            wait[k] += free - t
        else:
            for rid in batches[k][1]:
                free = max(t, free) + answer_s
                wait[rid] += free - t
    return wait


def fit_client_path(server_records: Iterable[RequestRecord], client_records: Iterable[RequestRecord]) -> ClientPath:
    """Fit the simulator's client path from one run seen from both ends: the server's `--records` and the client's
    (`loadtest.replayer`: `dispatch_s` = sent, `finish_s` = answer received). The two do not share request ids, so
    the k-th call the server received is paired with the k-th the client sent (calls leave one event loop in order;
    a swap inside a burst blurs the fit a little, it does not bias it). Per served call, what the client waited beyond
    the server's own time (received to answered) is modelled as `network_ms` plus its wait on one first-come-first-
    served host thread that takes in each call and sends each answer of a finished batch one after another
    (`_host_waits`, replayed on the server's event times); the two per-call costs are chosen on a 0.1 ms grid by
    least mean absolute error, `network_ms` is the median of what is left and `jitter_ms` its quantiles around it
    (the simulator draws from them: the tail, not the median, decides whether a call planned to finish a few ms
    before its deadline is late at the client)."""
    srv = sorted(server_records, key=lambda r: r.arrival_s)
    cli = sorted((r for r in client_records if r.dispatch_s is not None), key=lambda r: r.dispatch_s)  # type: ignore
    if len(srv) != len(cli):
        raise ValueError(f"cannot pair the runs: the server recorded {len(srv)} calls, the client sent {len(cli)}")
    arrivals = np.array([r.arrival_s for r in srv], dtype=float)
    groups: dict[tuple[int | None, float, str], list[int]] = defaultdict(list)
    served: list[int] = []
    extra: list[float] = []
    for k, (s, c) in enumerate(zip(srv, cli)):
        if s.status in (OK, LATE) and s.finish_s is not None and s.dispatch_s is not None and s.subnet_id:
            groups[(s.worker_id, s.dispatch_s, s.subnet_id)].append(k)
            if c.finish_s is not None:
                served.append(k)
                extra.append((c.finish_s - c.dispatch_s) - (s.finish_s - s.arrival_s))  # type: ignore[operator]
    if len(served) < 10:
        raise ValueError(f"need at least 10 calls served and answered to fit the client path, got {len(served)}")
    batches = sorted((max(srv[k].finish_s for k in ks), sorted(ks, key=lambda k: srv[k].request_id))  # type: ignore
                     for ks in groups.values())
    idx, obs = np.array(served), np.array(extra) * 1e3
    best: tuple[float, float, float, float] | None = None
    best_rest = obs
    for receive in _PATH_GRID_MS:
        for answer in _PATH_GRID_MS:
            rest = obs - _host_waits(arrivals, batches, receive * 1e-3, answer * 1e-3)[idx] * 1e3
            network = float(np.median(rest))
            err = float(np.mean(np.abs(rest - network)))
            if best is None or err < best[3] - 1e-9:
                best, best_rest = (float(receive), float(answer), network, err), rest
    assert best is not None
    network = max(best[2], 0.0)
    jitter = np.quantile(best_rest - network, JITTER_LEVELS)
    lag = np.maximum(np.quantile([(c.dispatch_s - c.arrival_s) * 1e3 for c in cli], JITTER_LEVELS), 0.0)  # type: ignore
    return ClientPath(best[0], best[1], network, len(served), best[3],
                      tuple(round(float(x), 4) for x in np.maximum(jitter, -network)),
                      tuple(round(float(x), 4) for x in lag))


def sim_fields(host: HostCost | None, path: ClientPath | None, host_spread: bool = False,
               server_clock: bool = True) -> dict[str, Any]:
    """The `superserve.sim.SimConfig` fields that make the simulator this host (None: that part ideal), so that every
    driver (`superserve simulate`, the benchmarks) maps a fit to the simulator the same way.

    With `host_spread` each batch's time spreads around the fitted line as the host's did (the fit's residual
    quantiles, in place of the table's own log-normal noise, which they include) and suffers the host's stalls at
    their fitted rate per second of batch time. With `server_clock` calls reach the simulated server after the
    client's send lag and the inbound half of the transport, and its deadlines count from there, as the server's do.
    The two processes' clocks share no zero, so the transport cannot be split by measurement: half each way, as on
    loopback with calls and answers of similar size."""
    fields: dict[str, Any] = {}
    if host is not None:
        fields |= {"host_ms_per_batch": host.ms_per_batch, "host_ms_per_request": host.ms_per_request,
                   "host_table_scale": host.table_scale}
        if host_spread and host.residual_quantiles_ms:
            fields |= {"host_batch_jitter_ms": host.residual_quantiles_ms, "noise": False}
            if host.stall_rate_per_s > 0:
                fields |= {"host_stall_rate_per_s": host.stall_rate_per_s, "host_stall_ms": host.stall_ms_quantiles}
    if path is not None:
        fields |= {"host_ms_per_receive": path.ms_per_receive, "host_ms_per_answer": path.ms_per_answer,
                   "network_ms": path.network_ms, "network_jitter_ms": path.jitter_ms}
        if server_clock:
            fields |= {"network_in_ms": path.network_ms / 2, "client_send_lag_ms": path.send_lag_ms}
    return fields

"""The simulator: conservation, timing invariants, determinism, shed vs serve-late, rejection, service times."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_zoo
from loadtest.traces import gamma
from policies.base import available, make_policy
from superserve.metrics import summarize
from superserve.records import LATE, OK, REJECTED, SHED, RecordTable
from superserve.sim import ServiceTimes, SimConfig, simulate

ZOO = make_zoo()


def check_conservation(t: RecordTable, n: int, workers: int) -> None:
    """Every request has exactly one record and a final status; served ones have consistent times; a worker runs
    one batch at a time and batches never exceed the largest profiled size."""
    assert len(t) == n and np.array_equal(t.request_id, np.arange(n))
    served = t.served
    assert np.all(served | t.status_is(SHED) | t.status_is(REJECTED))
    assert np.all(t.dispatch_s[served] >= t.arrival_s[served] - 1e-12)
    assert np.all(t.finish_s[served] > t.dispatch_s[served])
    assert np.all(np.isnan(t.finish_s[~served])) and np.all(t.subnet[~served] == -1)
    assert np.array_equal(t.met, served & (t.finish_s <= t.deadline_s))
    for w in range(workers):
        mine = served & (t.worker_id == w)
        batches = sorted(set(zip(t.dispatch_s[mine].tolist(), t.finish_s[mine].tolist())))
        for (d0, f0), (d1, _f1) in zip(batches, batches[1:]):
            assert d1 >= f0 - 1e-12  # no overlap on one worker
        _, sizes = np.unique(t.dispatch_s[mine], return_counts=True)
        assert sizes.size == 0 or sizes.max() <= ZOO.batch_sizes[-1]


@pytest.mark.parametrize("name", sorted(["slackfit", "maxacc", "maxbatch", "clipper+", "infaas", "clockwork"]))
def test_every_policy_conserves_requests_under_a_burst(name: str) -> None:
    arrivals = gamma(3000.0, 8.0, 2.0, np.random.default_rng(0))  # overloads this zoo at times
    t = simulate(arrivals, make_policy(name, ZOO), slo_ms=20.0, config=SimConfig(workers=3))
    check_conservation(t, len(arrivals), 3)


def test_serve_late_serves_everything_and_shed_serves_on_time_only() -> None:
    arrivals = gamma(12000.0, 8.0, 1.0, np.random.default_rng(1))  # beyond 2 workers
    policy = make_policy("slackfit", ZOO)
    shed = simulate(arrivals, policy, 20.0, config=SimConfig(workers=2, late="shed"))
    late = simulate(arrivals, policy, 20.0, config=SimConfig(workers=2, late="serve"))
    check_conservation(shed, len(arrivals), 2)
    check_conservation(late, len(arrivals), 2)
    assert shed.status_is(SHED).sum() > 0
    assert late.status_is(SHED).sum() == 0 and late.served.all() and late.status_is(LATE).sum() > 0


def test_light_load_meets_every_slo_on_the_most_accurate_subnet() -> None:
    arrivals = np.arange(200) * 0.05  # one request every 50 ms, 1 worker
    t = simulate(arrivals, make_policy("slackfit", ZOO), 36.0, config=SimConfig(workers=1, noise=False))
    s = summarize(t)
    assert s.slo_attainment == 1.0 and s.mean_accuracy == pytest.approx(0.98)
    assert s.p50_latency_ms == pytest.approx(4.0)  # batch of one on the big subnet, median table, no queueing


def test_determinism_and_seeded_noise() -> None:
    arrivals = gamma(2000.0, 4.0, 1.0, np.random.default_rng(2))
    policy = make_policy("slackfit", make_zoo(p99_factor=1.3))  # p99 > median: noise on
    a = simulate(arrivals, policy, 20.0, config=SimConfig(workers=2, seed=1))
    b = simulate(arrivals, policy, 20.0, config=SimConfig(workers=2, seed=1))
    c = simulate(arrivals, policy, 20.0, config=SimConfig(workers=2, seed=2))
    assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True)
    assert not np.array_equal(a.finish_s, c.finish_s, equal_nan=True)


def test_full_queue_rejects_arrivals() -> None:
    arrivals = np.zeros(50)  # 50 at once, room for 10
    t = simulate(arrivals, make_policy("slackfit", ZOO), 1000.0, config=SimConfig(workers=1, queue_capacity=10))
    assert t.status_is(REJECTED).sum() == 40 and t.status_is(OK).sum() == 10


def test_switch_cost_is_charged_on_a_change_of_subnet() -> None:
    arrivals = np.array([0.0, 1.0, 2.0])
    hints = np.array([0.0, 0.97, 0.97])  # the second request needs the big subnet: the worker must load it
    runs = [simulate(arrivals, make_policy("infaas", ZOO, switch_ms=ms), 36.0, hints, SimConfig(1, noise=False))
            for ms in (0.0, 5.0)]
    extra_ms = (runs[1].finish_s - runs[0].finish_s) * 1e3
    assert extra_ms.tolist() == pytest.approx([0.0, 5.0, 0.0])  # warm start, one load, then reuse


def test_service_times_interpolate_and_noise_matches_p99() -> None:
    zoo = make_zoo(p99_factor=1.5)
    flat = ServiceTimes(zoo, noise=False, rng=np.random.default_rng(0))
    assert flat(2, 1) == pytest.approx(4e-3) and flat(2, 3) == pytest.approx((5e-3 + 7e-3) / 2)
    noisy = ServiceTimes(zoo, noise=True, rng=np.random.default_rng(0))
    draws = np.array([noisy(2, 1) for _ in range(20000)])
    assert np.median(draws) == pytest.approx(4e-3, rel=0.03)
    assert np.percentile(draws, 99) == pytest.approx(6e-3, rel=0.05)


def test_bad_inputs_are_rejected() -> None:
    policy = make_policy("slackfit", ZOO)
    with pytest.raises(ValueError, match="sorted"):
        simulate([1.0, 0.5], policy, 36.0)
    with pytest.raises(ValueError, match="SLO"):
        simulate([0.0], policy, 0.0)
    with pytest.raises(ValueError):
        SimConfig(workers=0)
    assert len(simulate([], policy, 36.0)) == 0
    assert set(available()) >= {"slackfit"}


@pytest.mark.parametrize("late", ["shed", "serve"])
def test_accuracy_hints_hold_end_to_end(late: str) -> None:
    rng = np.random.default_rng(3)
    arrivals = gamma(3000.0, 4.0, 1.0, rng)
    hints = rng.choice([0.0, 0.95, 0.98, 0.99], size=len(arrivals))  # 0.99: no subnet is that accurate
    for name in ("slackfit", "maxacc", "maxbatch", "infaas"):
        t = simulate(arrivals, make_policy(name, ZOO), 20.0, hints, SimConfig(workers=2, late=late))
        check_conservation(t, len(arrivals), 2)
        served = t.served
        assert np.all(t.accuracy[served] >= t.min_accuracy[served] - 1e-12), name
        assert np.all(t.status_is(SHED)[hints == 0.99]), name  # reported, never served, in both modes


def test_infaas_loads_on_the_critical_path_even_when_the_load_misses_the_slo() -> None:
    # A model load (40 ms, as measured by benchmarks/actuation.py) longer than the 36 ms SLO: INFaaS still switches
    # for the request whose hint the loaded variant cannot meet, pays the load, and the request finishes late.
    arrivals = np.array([0.0, 1.0, 2.0])
    hints = np.array([0.0, 0.97, 0.0])
    t = simulate(arrivals, make_policy("infaas", ZOO, switch_ms=40.0), 36.0, hints, SimConfig(1, noise=False))
    service_ms = ((t.finish_s - t.dispatch_s) * 1e3).tolist()
    assert service_ms == pytest.approx([1.0, 44.0, 4.0])  # small (warm), load + big, big kept (it qualifies)
    assert [t.status_is(s)[1] for s in (LATE, SHED)] == [True, False]


def test_host_cost_stalls_running_batches_and_the_fit_recovers_it() -> None:
    """A host cost makes batches slower by the per-batch cost plus a stall per arrival while they run; fitting the
    simulator's own records gives the costs back, and a fit on an ideal host finds none."""
    from superserve.host_cost import fit_host_cost

    arrivals = gamma(400.0, 4.0, 2.0, np.random.default_rng(3))
    policy = make_policy("slackfit", ZOO)
    ideal = simulate(arrivals, policy, slo_ms=40.0, config=SimConfig(workers=2, noise=False))
    costly = simulate(arrivals, make_policy("slackfit", ZOO), slo_ms=40.0,
                      config=SimConfig(workers=2, noise=False, host_ms_per_request=0.3, host_ms_per_batch=0.8))
    check_conservation(costly, len(arrivals), 2)
    assert summarize(costly).p50_latency_ms > summarize(ideal).p50_latency_ms + 1.0
    fit = fit_host_cost(costly.to_records(), ZOO)
    assert fit.batches > 100 and fit.mean_arrivals_per_batch > 0.5
    assert fit.ms_per_batch == pytest.approx(0.8, abs=0.02) and fit.ms_per_request == pytest.approx(0.3, abs=0.01)
    none = fit_host_cost(ideal.to_records(), ZOO)
    assert none.ms_per_batch == pytest.approx(0.0, abs=1e-6) and none.ms_per_request == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        SimConfig(host_ms_per_request=-1.0)


def test_host_stalls_hit_long_batches_and_the_fit_recovers_their_rate() -> None:
    """Stalls come per second of batch time, so a simulated host with them is slower and misses more deadlines; the
    fit on its records finds stalls of the simulated length at about the simulated rate, the spread around the line
    without them, and an ideal host none."""
    from superserve.host_cost import fit_host_cost

    arrivals = gamma(300.0, 4.0, 10.0, np.random.default_rng(5))
    base = dict(workers=2, noise=False, host_ms_per_batch=0.5)
    calm = simulate(arrivals, make_policy("maxbatch", ZOO), slo_ms=30.0, config=SimConfig(**base))
    stalled = simulate(arrivals, make_policy("maxbatch", ZOO), slo_ms=30.0,
                       config=SimConfig(**base, host_stall_rate_per_s=20.0, host_stall_ms=(40.0, 50.0)))
    check_conservation(stalled, len(arrivals), 2)
    assert summarize(stalled).slo_attainment < summarize(calm).slo_attainment
    fit = fit_host_cost(stalled.to_records(), ZOO)
    q = fit.stall_ms_quantiles
    assert 40.0 - 1e-6 <= q[0] and 40.0 <= q[len(q) // 2] <= 50.0 and q[-1] <= 100.0 + 1e-6  # 2 stalls at most here
    assert fit.stall_rate_per_s == pytest.approx(20.0, rel=0.3)
    assert max(abs(x) for x in fit.residual_quantiles_ms) < 1.0  # no noise: only the stalls stray from the line
    none = fit_host_cost(calm.to_records(), ZOO)
    assert none.stall_rate_per_s == 0.0 and none.stall_ms_quantiles == ()
    for bad in (dict(host_stall_rate_per_s=1.0), dict(host_stall_rate_per_s=-1.0, host_stall_ms=(1.0, 2.0)),
                dict(host_batch_jitter_ms=(3.0, 1.0))):
        with pytest.raises(ValueError):
            SimConfig(**bad)


def test_batch_jitter_spreads_batch_times_by_the_given_quantiles() -> None:
    arrivals = np.arange(200) * 0.05  # one request at a time, never queued
    plain = simulate(arrivals, make_policy("maxacc", ZOO), slo_ms=100.0, config=SimConfig(workers=1, noise=False))
    spread = simulate(arrivals, make_policy("maxacc", ZOO), slo_ms=100.0,
                      config=SimConfig(workers=1, noise=False, host_batch_jitter_ms=(2.0, 4.0)))
    extra_ms = (spread.finish_s - spread.dispatch_s - (plain.finish_s - plain.dispatch_s)) * 1e3
    assert extra_ms.min() >= 2.0 - 1e-6 and extra_ms.max() <= 4.0 + 1e-6 and np.ptp(extra_ms) > 1.0


def test_client_path_queues_calls_and_answers_on_one_host_thread() -> None:
    """With a client path, a call reaches the scheduler once the host thread has taken it in (a burst waits in line),
    a batch's answers leave one `host_ms_per_answer` apart and arrive `network_ms` later, and the status is judged on
    when the client has the answer: a batch that ends in time on the server but not at the client is late."""
    clipper = lambda: make_policy("clipper+", ZOO, subnet=0)  # noqa: E731 - subnet 0: 1 ms at batch 1, +0.25 ms each
    one = simulate(np.array([0.0]), clipper(), slo_ms=50.0,
                   config=SimConfig(workers=1, noise=False, host_ms_per_receive=0.5, host_ms_per_answer=0.25,
                                    network_ms=2.0))
    assert one.dispatch_s[0] * 1e3 == pytest.approx(0.5)
    assert one.finish_s[0] * 1e3 == pytest.approx(0.5 + 1.0 + 0.25 + 2.0)
    # a burst of 4 while the worker is busy with a first call: they leave in batches, each answered 0.25 ms apart
    arrivals = np.array([0.0, 0.0002, 0.0002, 0.0002, 0.0002])
    t = simulate(arrivals, clipper(), slo_ms=50.0, config=SimConfig(workers=1, noise=False, host_ms_per_answer=0.25))
    groups = [np.sort(t.finish_s[t.dispatch_s == d]) for d in np.unique(t.dispatch_s)]
    assert max(len(g) for g in groups) >= 2
    for g in groups:
        assert np.diff(g) * 1e3 == pytest.approx([0.25] * (len(g) - 1))
    t = simulate(arrivals, clipper(), slo_ms=50.0, config=SimConfig(workers=1, noise=False, host_ms_per_receive=1.0))
    assert t.dispatch_s[0] * 1e3 == pytest.approx(1.0)  # the first call, taken in after 1 ms
    assert np.all(np.diff(t.dispatch_s) >= 0) and t.dispatch_s[-1] * 1e3 >= 5.0 - 1e-9  # the fifth waited for four
    # the server is in time; the client is not: late, not shed (the scheduler never saw a problem)
    late = simulate(arrivals, clipper(), slo_ms=10.0, config=SimConfig(workers=1, noise=False, network_ms=20.0))
    assert late.status_is(LATE).all()
    plain = simulate(arrivals, clipper(), slo_ms=10.0, config=SimConfig(workers=1, noise=False))
    assert plain.status_is(OK).all() and np.array_equal(plain.dispatch_s, late.dispatch_s)
    with pytest.raises(ValueError):
        SimConfig(network_ms=-1.0)
    # jitter: each answer's delay drawn from the quantiles (here uniform 0-10 ms around network 1 ms), seeded
    spread = np.linspace(0.0, 2.0, 2000)
    runs = [simulate(spread, clipper(), slo_ms=50.0, config=SimConfig(workers=8, noise=False, network_ms=1.0,
                                                                     network_jitter_ms=(0.0, 10.0), seed=seed))
            for seed in (0, 0, 1)]
    plain = simulate(spread, clipper(), slo_ms=50.0, config=SimConfig(workers=8, noise=False, network_ms=1.0))
    extra_ms = (runs[0].finish_s - plain.finish_s) * 1e3
    assert extra_ms.min() >= 0.0 and extra_ms.max() <= 10.0 and 4.0 < extra_ms.mean() < 6.0
    assert np.array_equal(runs[0].finish_s, runs[1].finish_s) and not np.array_equal(runs[0].finish_s,
                                                                                   runs[2].finish_s)
    with pytest.raises(ValueError):
        SimConfig(network_jitter_ms=(2.0, 1.0))


def test_calls_reach_the_server_late_and_its_deadline_counts_from_there() -> None:
    """With `network_in_ms` and `client_send_lag_ms`, a call reaches the scheduler that much after its scheduled
    arrival and the server's deadline counts from there (the engine's), while the client judges from the scheduled
    time: a batch the server finishes inside its own deadline is late at the client. Order is kept; seeded."""
    clipper = lambda: make_policy("clipper+", ZOO, subnet=0)  # noqa: E731 - subnet 0: 1 ms at batch 1
    one = np.array([0.0])
    lagged = SimConfig(workers=1, noise=False, network_ms=1.0, network_in_ms=0.5, client_send_lag_ms=(3.0, 3.0))
    t = simulate(one, clipper(), slo_ms=4.9, config=lagged)
    assert t.dispatch_s[0] * 1e3 == pytest.approx(3.5)  # sent 3 ms late, 0.5 ms on the way in
    assert t.finish_s[0] * 1e3 == pytest.approx(3.5 + 1.0 + 0.5)  # the rest of network_ms on the way back
    assert t.status_is(LATE).all()  # 5 ms > the client's 4.9 ms SLO: the server (deadline 8.4 ms) saw no problem
    on_time = simulate(one, clipper(), slo_ms=4.9, config=SimConfig(workers=1, noise=False, network_ms=1.0))
    assert on_time.status_is(OK).all() and on_time.finish_s[0] * 1e3 == pytest.approx(2.0)
    # the server sheds what is infeasible by its own clock only: a 0.8 ms SLO cannot be met from 3.5 ms on
    assert simulate(one, clipper(), slo_ms=0.8, config=lagged).status_is(SHED).all()
    spread = np.linspace(0.0, 1.0, 500)
    drawn = [simulate(spread, clipper(), slo_ms=50.0,
                      config=SimConfig(workers=2, noise=False, client_send_lag_ms=(0.0, 4.0), seed=seed))
             for seed in (0, 0, 1)]
    lag_ms = (drawn[0].dispatch_s - spread) * 1e3
    assert lag_ms.min() >= 0.0 and lag_ms.max() <= 4.0 + 1e-9 and 1.0 < lag_ms.mean() < 3.0
    assert np.all(np.diff(drawn[0].dispatch_s[drawn[0].worker_id == 0]) >= 0)
    assert np.array_equal(drawn[0].finish_s, drawn[1].finish_s)
    assert not np.array_equal(drawn[0].finish_s, drawn[2].finish_s)
    for bad in (dict(network_ms=1.0, network_in_ms=2.0), dict(client_send_lag_ms=(-1.0, 1.0)),
                dict(client_send_lag_ms=(2.0, 1.0))):
        with pytest.raises(ValueError):
            SimConfig(**bad)


def test_client_path_fit_recovers_known_costs() -> None:
    """Server and client records made by the fit's own model (one first-come-first-served host thread, known costs)
    give those costs back; runs that cannot be paired are refused."""
    from superserve.host_cost import _host_waits, fit_client_path
    from superserve.records import RequestRecord

    rng = np.random.default_rng(7)
    arrivals = np.sort(rng.uniform(0.0, 2.0, 400))
    server, batches, k = [], [], 0
    while k < len(arrivals):  # batches of 1-6 calls, each ending 4 ms after its last call arrived
        size = int(rng.integers(1, 7))
        ids = list(range(k, min(k + size, len(arrivals))))
        end = arrivals[ids[-1]] + 0.004
        batches.append((end, ids))
        server += [RequestRecord(i, arrivals[i], arrivals[i] + 1.0, OK, end - 0.003, end, "s0", 0.9, 0.0, 0)
                   for i in ids]
        k += size
    waits = _host_waits(arrivals, batches, 0.0007, 0.0003)
    offset, network = 50.0, 0.0015  # the client's clock is its own
    lag = 0.002 * (np.arange(len(arrivals)) % 2)  # every other call sent 2 ms late
    client = [RequestRecord(i, offset + arrivals[i] - lag[i], offset + arrivals[i] - lag[i] + 1.0, OK,
                            offset + arrivals[i], offset + server[i].finish_s + waits[i] + network)
              for i in range(len(arrivals))]
    fit = fit_client_path(server, client)
    assert fit.send_lag_ms[0] == 0.0 and fit.send_lag_ms[-1] == pytest.approx(2.0)
    assert np.mean(fit.send_lag_ms) == pytest.approx(1.0, abs=0.1)
    assert (fit.ms_per_receive, fit.ms_per_answer) == pytest.approx((0.7, 0.3))
    assert fit.network_ms == pytest.approx(1.5, abs=1e-6) and fit.residual_ms < 1e-6 and fit.requests == 400
    assert len(fit.jitter_ms) > 2 and max(abs(x) for x in fit.jitter_ms) < 1e-6  # nothing left around the median
    with pytest.raises(ValueError, match="pair"):
        fit_client_path(server, client[:-1])


def test_online_correction_follows_a_slow_host_as_the_server_does() -> None:
    """On a host slower than the table (a large per-batch host cost), MaxAcc built from the table keeps choosing
    subnets that no longer fit and finishes them late; with the server's online correction the simulated policy learns
    the slower service times: it picks faster subnets, and what it dispatches is far less often late (it sheds what
    the slower table says cannot make it instead). Without a factory the correction is refused."""
    arrivals = gamma(300.0, 2.0, 3.0, np.random.default_rng(5))
    config = SimConfig(workers=1, noise=False, host_ms_per_batch=6.0)
    plain = summarize(simulate(arrivals, make_policy("maxacc", ZOO), slo_ms=25.0, config=config))
    corrected_config = SimConfig(workers=1, noise=False, host_ms_per_batch=6.0, correction_interval_s=0.25)
    corrected = summarize(simulate(arrivals, make_policy("maxacc", ZOO), slo_ms=25.0, config=corrected_config,
                                   policy_factory=lambda z: make_policy("maxacc", z)))
    assert corrected.late < plain.late / 3
    assert corrected.mean_accuracy < plain.mean_accuracy - 0.01
    with pytest.raises(ValueError, match="policy_factory"):
        simulate(arrivals, make_policy("maxacc", ZOO), slo_ms=25.0, config=corrected_config)
    with pytest.raises(ValueError):
        SimConfig(correction_interval_s=0.0)


def test_a_table_off_by_a_factor_is_simulated_and_fitted_as_one() -> None:
    """A host 30% slower than its table (the table profiled at a quieter moment) stretches every batch by a factor;
    the fit with `table_scale` gives back the factor, the per-batch cost and the per-arrival stall, and leaves far
    less unexplained than the additive fit, which can only add the same ms to a short and a long batch."""
    from superserve.host_cost import batch_excess, fit_host_cost

    arrivals = gamma(200.0, 4.0, 6.0, np.random.default_rng(11))
    host = dict(workers=2, noise=False, host_ms_per_request=0.2, host_ms_per_batch=0.5)
    plain = simulate(arrivals, make_policy("slackfit", ZOO), slo_ms=60.0, config=SimConfig(**host))
    slow = simulate(arrivals, make_policy("slackfit", ZOO), slo_ms=60.0,
                    config=SimConfig(**host, host_table_scale=1.3))
    check_conservation(slow, len(arrivals), 2)
    assert summarize(slow).p50_latency_ms > summarize(plain).p50_latency_ms
    _, excess, observed = batch_excess(slow.to_records(), ZOO)
    table = observed - excess
    assert table.max() > 3 * table.min()  # batches of several sizes: the factor is identifiable
    fit = fit_host_cost(slow.to_records(), ZOO, table_scale=True)
    assert fit.table_scale == pytest.approx(1.3, abs=0.01)
    assert fit.ms_per_batch == pytest.approx(0.5, abs=0.05) and fit.ms_per_request == pytest.approx(0.2, abs=0.02)
    additive = fit_host_cost(slow.to_records(), ZOO)
    assert additive.table_scale == 1.0 and additive.residual_ms > 5 * fit.residual_ms
    same = fit_host_cost(plain.to_records(), ZOO, table_scale=True)
    assert same.table_scale == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError):
        SimConfig(host_table_scale=0.0)


def test_sim_fields_map_a_fit_onto_the_simulator():
    """One mapping from fits to `SimConfig` for every driver: the host's line, its spread and stalls on request, the
    client path, and the server's clock (half the transport inbound plus the client's send lag) unless turned off."""
    from superserve.host_cost import ClientPath, HostCost, sim_fields
    from superserve.sim import SimConfig

    cost = HostCost(1.5, 0.4, 50, 2.0, 0.3, (-1.0, 0.0, 2.0), 0.5, (20.0, 40.0), 1.2)
    path = ClientPath(0.3, 0.2, 1.2, 10, 0.1, (-0.5, 0.0, 2.0), (0.1, 0.8, 3.0))
    assert sim_fields(None, None) == {}
    plain = SimConfig(**sim_fields(cost, None))
    assert (plain.host_ms_per_batch, plain.host_ms_per_request, plain.host_table_scale) == (1.5, 0.4, 1.2)
    assert plain.noise and plain.host_batch_jitter_ms == () and not plain.client_path
    spread = SimConfig(**sim_fields(cost, None, host_spread=True))
    assert not spread.noise and spread.host_batch_jitter_ms == (-1.0, 0.0, 2.0)
    assert spread.host_stall_rate_per_s == 0.5 and spread.host_stall_ms == (20.0, 40.0)
    on = SimConfig(**sim_fields(cost, path))
    assert (on.host_ms_per_receive, on.host_ms_per_answer, on.network_ms) == (0.3, 0.2, 1.2)
    assert on.network_in_ms == pytest.approx(0.6) and on.client_send_lag_ms == (0.1, 0.8, 3.0)
    off = SimConfig(**sim_fields(cost, path, server_clock=False))
    assert off.network_in_ms == 0.0 and off.client_send_lag_ms == () and off.network_jitter_ms == (-0.5, 0.0, 2.0)

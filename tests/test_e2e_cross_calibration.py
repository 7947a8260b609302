"""e2e_tradeoff --cross-calibration: a policy's runs are simulated with the fits of the OTHER policies' graded runs,
never its own (which would grade the simulator on data it was fitted to)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("bench_e2e_tradeoff", REPO / "benchmarks" / "e2e_tradeoff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_policy_is_simulated_with_the_other_servers_fits_only():
    e2e = _load()
    from superserve.defaults import DEFAULT_ZOO
    from superserve.host_cost import ClientPath, HostCost
    from superserve.zoo import Zoo

    zoo = Zoo.load(DEFAULT_ZOO)
    policies = [("maxacc", "maxacc", {}), ("maxbatch", "maxbatch", {})]
    args = argparse.Namespace(duration=2.0, seed=0, slo_ms=100.0, no_client_path=True, host_spread=False,
                              server_clock=True)
    rows = [{"policy": label, "family": family, "trace": "gamma:8", "load": 1.0, "rate_qps": 40.0,
             "real": {"slo_attainment": 1.0}, "sim": None} for label, family, _ in policies]
    path = ClientPath(0.0, 0.0, 0.0, 10, 0.0, ())
    # maxacc's own runs say the host is hopeless, maxbatch's say it is ideal
    fits = [("maxacc", HostCost(500.0, 0.0, 10, 1.0, 0.0), path), ("maxacc", HostCost(300.0, 0.0, 10, 1.0, 0.0), path),
            ("maxbatch", HostCost(0.0, 0.0, 10, 1.0, 0.0), path)]
    out = e2e.cross_simulate(rows, fits, policies, zoo, args)
    assert out["maxacc"]["ms_per_batch"] == 0.0 and out["maxacc"]["runs"] == 1
    assert out["maxbatch"]["ms_per_batch"] == pytest.approx(400.0) and out["maxbatch"]["runs"] == 2
    acc_row, batch_row = rows
    assert acc_row["sim_cross_calibration_host_spread"] is not None
    assert acc_row["sim_cross_calibration"]["slo_attainment"] > 0.9  # an ideal host at 40 q/s: MaxAcc keeps up
    assert batch_row["sim_cross_calibration"]["slo_attainment"] < 0.2  # 400 ms per batch against a 100 ms SLO
    assert acc_row["sim"] is None  # which simulation grades the server is main's choice


def test_the_table_factor_of_the_other_servers_reaches_the_simulation():
    """With the table-scale fits, a policy is simulated with the others' factor: on a host 3x slower than its table
    MaxAcc (correcting its table online, as the server) falls back to smaller subnets and still misses more
    deadlines, where on a host as fast as the table it keeps up with the most accurate one."""
    e2e = _load()
    from superserve.defaults import DEFAULT_ZOO
    from superserve.host_cost import ClientPath, HostCost
    from superserve.zoo import Zoo

    zoo = Zoo.load(DEFAULT_ZOO)
    policies = [("maxacc", "maxacc", {}), ("maxbatch", "maxbatch", {})]
    args = argparse.Namespace(duration=3.0, seed=0, slo_ms=30.0, no_client_path=True, host_spread=False,
                              server_clock=True)
    path = ClientPath(0.0, 0.0, 0.0, 10, 0.0, ())
    attainment = {}
    for scale in (1.0, 3.0):
        rows = [{"policy": "maxacc", "family": "maxacc", "trace": "gamma:2", "load": 1.0, "rate_qps": 100.0,
                 "real": {"slo_attainment": 1.0}, "sim": None}]
        fits = [("maxbatch", HostCost(0.0, 0.0, 10, 1.0, 0.0, table_scale=scale), path),
                ("maxacc", HostCost(0.0, 0.0, 10, 1.0, 0.0, table_scale=1.0), path)]
        out = e2e.cross_simulate(rows, fits, policies, zoo, args, key="sim_scaled")
        assert out["maxacc"]["table_scale"] == scale
        attainment[scale] = rows[0]["sim_scaled"]["slo_attainment"], rows[0]["sim_scaled"]["mean_accuracy"]
    (att_fast, acc_fast), (att_slow, acc_slow) = attainment[1.0], attainment[3.0]
    assert att_slow < att_fast - 0.05 and acc_slow < acc_fast - 0.005, attainment


def test_cross_calibration_needs_another_servers_runs():
    e2e = _load()
    from superserve.defaults import DEFAULT_ZOO
    from superserve.host_cost import ClientPath, HostCost
    from superserve.zoo import Zoo

    args = argparse.Namespace(duration=1.0, seed=0, slo_ms=100.0, no_client_path=True, host_spread=False,
                              server_clock=True)
    fits = [("maxacc", HostCost(1.0, 0.0, 10, 1.0, 0.0), ClientPath(0.0, 0.0, 0.0, 10, 0.0, ()))]
    with pytest.raises(RuntimeError, match="two policies"):
        e2e.cross_simulate([], fits, [("maxacc", "maxacc", {})], Zoo.load(DEFAULT_ZOO), args)


def test_a_refused_cross_calibration_leaves_every_row_as_it_was():
    """Only one server's runs were fitted: the other policy could be re-simulated, this one not; the benchmark then
    falls back to the global calibration, so no row may have been switched to a cross-calibrated simulation."""
    e2e = _load()
    from superserve.defaults import DEFAULT_ZOO
    from superserve.host_cost import ClientPath, HostCost
    from superserve.zoo import Zoo

    policies = [("maxbatch", "maxbatch", {}), ("maxacc", "maxacc", {})]
    args = argparse.Namespace(duration=1.0, seed=0, slo_ms=100.0, no_client_path=True, host_spread=False,
                              server_clock=True)
    rows = [{"policy": label, "family": family, "trace": "gamma:8", "load": 1.0, "rate_qps": 40.0,
             "real": {"slo_attainment": 1.0}, "sim": {"slo_attainment": 0.5}} for label, family, _ in policies]
    fits = [("maxacc", HostCost(1.0, 0.0, 10, 1.0, 0.0), ClientPath(0.0, 0.0, 0.0, 10, 0.0, ()))]
    with pytest.raises(RuntimeError, match="two policies"):
        e2e.cross_simulate(rows, fits, policies, Zoo.load(DEFAULT_ZOO), args)
    assert all(r["sim"] == {"slo_attainment": 0.5} and "sim_cross_calibration" not in r for r in rows)



def test_cross_calibration_is_the_default_and_can_be_turned_off():
    e2e = _load()
    assert e2e.parse_args([]).cross_calibration is True
    assert e2e.parse_args(["--no-cross-calibration"]).cross_calibration is False


def test_the_server_clock_and_a_fresh_table_are_the_defaults():
    """By default the simulated server sees a call after the client's send lag and half the measured transport (its
    deadline counted from there); --no-server-clock starts it at the scheduled arrival. The table is profiled afresh
    unless --table auto."""
    e2e = _load()
    from superserve.host_cost import ClientPath, HostCost

    args = e2e.parse_args([])
    assert args.server_clock is True and args.table == "fresh"
    assert e2e.parse_args(["--no-server-clock", "--table", "auto"]).server_clock is False
    path = ClientPath(0.3, 0.2, 1.2, 10, 0.1, (-0.5, 0.0, 2.0), (0.1, 0.8, 3.0))
    cost = HostCost(1.0, 0.5, 10, 1.0, 0.0)
    on = e2e.sim_config(cost, path, 0)
    assert on.network_ms == 1.2 and on.network_in_ms == pytest.approx(0.6)
    assert on.client_send_lag_ms == (0.1, 0.8, 3.0)
    off = e2e.sim_config(cost, path, 0, server_clock=False)
    assert off.network_in_ms == 0.0 and off.client_send_lag_ms == ()
    _, both = e2e.mean_fit([cost, cost], [path, ClientPath(0.3, 0.2, 1.2, 10, 0.1, (-0.5, 0.0, 2.0))])
    assert both.send_lag_ms == (0.1, 0.8, 3.0)  # runs without a measured lag do not dilute it

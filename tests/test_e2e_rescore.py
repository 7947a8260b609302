"""benchmarks/e2e_rescore.py: kept server runs are graded again against the simulator, each policy with the other
policies' fits, under both clock models, from the manifest or (older records) the lineup order."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    for p in (REPO, REPO / "benchmarks"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    spec = importlib.util.spec_from_file_location("bench_e2e_rescore", REPO / "benchmarks" / "e2e_rescore.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keep(tmp_path: Path, zoo, policies, runs) -> Path:  # noqa: ANN001 - kept records made by the simulator
    from loadtest.replayer import make_trace
    from policies.base import make_policy
    from superserve.records import write_jsonl
    from superserve.sim import SimConfig, simulate

    out = tmp_path / "kept"
    out.mkdir()
    zoo.save(out / "zoo.json")
    manifest = []
    for k, ((label, family, params), (trace, load)) in enumerate((p, r) for p in policies for r in runs):
        rate = 20.0 * load
        arrivals = make_trace(trace, rate, 2.0, 0)
        table = simulate(arrivals, make_policy(family, zoo, overhead_ms=2.0, **params), 100.0,
                         config=SimConfig(workers=1, seed=k, host_ms_per_batch=3.0))
        server = table.to_records()
        client = [replace(r, dispatch_s=r.arrival_s + 0.0005, finish_s=None if r.finish_s is None
                          else r.finish_s + 0.002) for r in server]
        stem = f"{k:02d}_{family}_{trace.replace(':', '_cv2_') if trace != 'azure' else 'azure'}_load_{load:g}"
        write_jsonl(out / f"{stem}_server.jsonl", server)
        write_jsonl(out / f"{stem}_client.jsonl", client)
        manifest.append({"stem": stem, "policy": label, "family": family, "params": params, "trace": trace,
                         "load": load, "rate_qps": rate, "duration_s": 2.0, "seed": 0, "slo_ms": 100.0})
    (out / "runs.json").write_text(json.dumps(manifest))
    return out


def test_kept_runs_are_graded_under_both_clock_models(tmp_path):
    rescore = _load()
    from superserve.defaults import DEFAULT_ZOO
    from superserve.zoo import Zoo

    zoo = Zoo.load(DEFAULT_ZOO)
    policies = [("maxbatch", "maxbatch", {}), ("clipper+[small]", "clipper+", {"subnet": 0})]
    kept = _keep(tmp_path, zoo, policies, [("gamma:2", 1.0), ("gamma:8", 2.0)])
    out = tmp_path / "rescore.json"
    assert rescore.main([str(kept), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    h = result["headline"]
    assert h["runs"] == 4 and out.with_suffix(".png").is_file()
    for model in ("server_clock", "client_clock"):
        assert 0.0 <= h[f"real_vs_sim_{model}_mean_abs_attainment_diff_points"] <= 100.0
        assert f"real_vs_sim_{model}_clipperplus_mean_abs_attainment_diff_points" in h
    assert [r["policy"] for r in result["rows"]] == ["maxbatch", "maxbatch", "clipper+[small]", "clipper+[small]"]
    # the real side is the client's records: every served call answered 2 ms after the server's finish
    assert all(0.0 <= r["real_attainment"] <= 1.0 for r in result["rows"])


def test_records_without_a_manifest_follow_the_lineup_or_are_refused(tmp_path):
    rescore = _load()
    from superserve.defaults import DEFAULT_ZOO
    from superserve.zoo import Zoo

    zoo = Zoo.load(DEFAULT_ZOO)
    kept = _keep(tmp_path, zoo, rescore.lineup(zoo), [("gamma:8", 0.5)])
    (kept / "runs.json").unlink()
    import argparse

    args = argparse.Namespace(duration=2.0, seed=0, slo_ms=100.0, max_rate=400.0)
    runs = rescore.manifest(kept, zoo, args)
    assert [r["policy"] for r in runs] == [label for label, _, _ in rescore.lineup(zoo)]
    assert all(r["trace"] == "gamma:8" and r["duration_s"] == 2.0 for r in runs)
    first = sorted(kept.glob("*_server.jsonl"))[0]
    shutil.move(first, kept / "99_maxacc_gamma_cv2_8_load_0.5_server.jsonl")  # the order no longer matches
    with pytest.raises(SystemExit, match="lineup"):
        rescore.manifest(kept, zoo, args)

"""SlackFit against the systems SuperServe compares with (Clipper+, INFaaS), in the simulator, from measured points:
accuracy gained at equal SLO attainment (paper: +4.67 points) and SLO attainment gained at equal accuracy (paper:
2.85x), per zoo and trace (superserve.experiments.measured_comparison):

- at equal attainment: 100 x (plain SlackFit's mean accuracy - that of the most accurate configuration of the system
  whose attainment is at least SlackFit's - 0.005); null when no configuration attains that much;
- at equal accuracy: SlackFit is run again with accuracy hints (floors, mixed between two levels) tuned until its
  mean accuracy is within 0.3 points of each configuration's, and the measured attainments are divided; the figure
  is the largest ratio over configurations that attain at least 5% (below that the ratio measures the baseline's
  collapse); null when no configuration is matched (SlackFit is more accurate than all of them even unhinted:
  hints only raise accuracy).

Zoos: the shipped CPU zoo (8 workers); the shipped zoo's subnets under each GPU latency profile (1 GPU); the
paper-like zoo, published OFA-ResNet50 (MACs, top-1) points on the A100 TensorRT FP16 profile (1 GPU)
(superserve.gpu_model). SLO 36 ms. Traces: gamma CV² 2, 4, 8 and the Azure Functions sample; on the paper-like zoo
the Azure trace is replayed at real minute pacing (`azure-paced`: ten minutes around the day's spike, 600 s), on
the others its 40-minute burst window is compressed into the run's duration (`azure`). Loads are multiples of what
the most accurate subnet sustains (superserve.experiments.capacity_qps). Clockwork-style and the ablations (MaxAcc,
MaxBatch) are in the detail, beside the systems. The headline is at load 2 (HEADLINE_LOAD); every load is in the
detail. `..._interpolated_vs_all` is the older, secondary figure: against the interpolated frontier of every other
configuration. Paced loads other than the headline's get their own headline keys, suffixed `_load4` etc.

    nice -n 10 python benchmarks/tradeoff.py [--jobs 2] [--paced-loads 0.5,1,2,4]

`--reuse results/tradeoff.json` takes the (zoo, trace, load) units an earlier run measured (same durations) from
that file's detail instead of running them again, and records which units came from which command: the paced Azure
units take minutes to hours each (load 8: 13.7 M requests x ~20 configurations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import platform
import shlex
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from superserve.commands.experiment import plot, point_dicts, print_tables
from superserve.experiments import Point, TradeoffSetup, run_tradeoff
from superserve.gpu_model import DEFAULT_GPU_PROFILE, GPU_PROFILES, PAPER_SLO_MS, describe, gpu_zoo, ofa_resnet50_zoo
from superserve.synthetic import load_zoo
from superserve.zoo import Zoo

from _common import measured_model_load_ms  # benchmarks/ is sys.path[0] when run as a script

RESULTS = Path(__file__).resolve().parent / "results"
HEADLINE_LOAD = 2.0
GAMMA_TRACES = ("gamma:2", "gamma:4", "gamma:8")
LOADS = (0.5, 1.0, 2.0, 4.0, 8.0)


def trace_key(spec: str) -> str:
    return spec.replace("gamma:", "gamma_cv2_").replace(":", "_").replace("-", "_")


def zoo_for(key: str) -> tuple[Zoo, str]:
    base, label = load_zoo(None)
    if key == "cpu":
        return base, label
    if key == "paper":
        zoo = ofa_resnet50_zoo(DEFAULT_GPU_PROFILE)
        return zoo, f"paper-like OFA-ResNet50 zoo (8 published points) on {describe(GPU_PROFILES[DEFAULT_GPU_PROFILE])}"
    name = key.removeprefix("gpu_").replace("_", "-")
    return gpu_zoo(base, name), f"{label}; GPU model {describe(GPU_PROFILES[name])}"


def setup_for(key: str, args: argparse.Namespace) -> TradeoffSetup:
    switch = measured_model_load_ms()
    if key == "cpu":
        return TradeoffSetup(duration_s=args.duration, workers=8, infaas_switch_ms=switch, slo_ms=PAPER_SLO_MS)
    return TradeoffSetup(duration_s=args.gpu_duration, workers=1, infaas_switch_ms=switch, slo_ms=PAPER_SLO_MS)


def units_from_report(report: dict[str, Any], duration_s: float, gpu_duration_s: float
                      ) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    """The (zoo, trace, load) results an earlier tradeoff.json holds, with its points as Points again, for the zoos
    whose trace duration matches (units measured at another duration are not the same experiment)."""
    out: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for key, zoo_detail in report.get("detail", {}).items():
        want = duration_s if key == "cpu" else gpu_duration_s
        if zoo_detail["setup"]["duration_s"] != want:
            continue
        for r in zoo_detail["results"]:
            unit = {**r, "points": [Point(**p) for p in r["points"]], "matched": [Point(**p) for p in r["matched"]]}
            out.setdefault((key, r["trace"], float(r["load"])), []).append(unit)
    return out


def run_unit(unit: tuple[str, str, float, argparse.Namespace]) -> tuple[str, str, float, list[dict[str, Any]], float]:
    key, trace, load, args = unit
    zoo, _ = zoo_for(key)
    setup = dataclasses.replace(setup_for(key, args), traces=(trace,), loads=(load,))
    start = time.perf_counter()
    results = run_tradeoff(zoo, setup)
    return key, trace, load, results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="trace seconds on the CPU zoo (default 3)")
    parser.add_argument("--gpu-duration", type=float, default=5.0, help="trace seconds on GPU zoos (default 5)")
    parser.add_argument("--zoos", default="cpu," + ",".join(f"gpu_{p.replace('-', '_')}" for p in GPU_PROFILES)
                        + ",paper", help="zoos, comma-separated: cpu, gpu_<profile>, paper (default: all)")
    parser.add_argument("--loads", default=",".join(f"{x:g}" for x in LOADS),
                        help="loads, multiples of capacity, comma-separated (default %(default)s)")
    parser.add_argument("--paced-loads", default=None,
                        help="loads of the real-pacing Azure runs (default: --loads); each is 600 trace seconds")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--cache", default="tradeoff_cache",
                        help="where finished (zoo, trace, load) units are kept between runs (default ./tradeoff_cache)")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where tradeoff.json and the PNGs go")
    parser.add_argument("--reuse", default=None,
                        help="an earlier tradeoff.json: units it holds (same durations) are taken from it, not run")
    args = parser.parse_args(argv)
    loads = tuple(float(x) for x in args.loads.split(","))
    paced_loads = loads if args.paced_loads is None else tuple(float(x) for x in args.paced_loads.split(","))
    if HEADLINE_LOAD not in loads:
        raise SystemExit(f"the headline load {HEADLINE_LOAD} must be among the loads")
    zoo_keys = args.zoos.split(",")
    traces_of = {k: (("azure-paced",) if k == "paper" else ("azure",)) + GAMMA_TRACES for k in zoo_keys}
    units = [(k, t, load, args) for k in zoo_keys for t in traces_of[k]
             for load in (paced_loads if t == "azure-paced" else loads)]
    units.sort(key=lambda u: -(u[2] * (600 if u[1] == "azure-paced" else 5)))  # longest first
    done: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    wall: dict[str, float] = {}
    # Each finished unit is kept on disk until the report is written, so a failure after hours loses nothing.
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    def cached(u: tuple[str, str, float, argparse.Namespace]) -> Path:
        return cache / f"{u[0]}_{trace_key(u[1])}_{u[2]:g}_{args.duration:g}_{args.gpu_duration:g}.pkl"

    for u in units:
        if cached(u).is_file():
            key, trace, load, results, seconds = pickle.loads(cached(u).read_bytes())
            done[(key, trace, load)], wall[f"{key}/{trace}/{load:g}"] = results, round(seconds, 1)
    reused: dict[str, Any] = {}
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text())
        old_units = units_from_report(earlier, args.duration, args.gpu_duration)
        taken = [u for u in units if u[:3] not in done and u[:3] in old_units]
        for u in taken:
            name = f"{u[0]}/{u[1]}/{u[2]:g}"
            done[u[:3]] = old_units[u[:3]]
            if name in earlier.get("wall_s", {}):
                wall[name] = earlier["wall_s"][name]
        reused = {"command": earlier.get("command"), "host": earlier.get("host"),
                  "units": sorted(f"{u[0]}/{u[1]}/{u[2]:g}" for u in taken)}
    todo = [u for u in units if u[:3] not in done]
    with Pool(args.jobs) as pool, tqdm(total=len(todo), desc="(zoo, trace, load)", file=sys.stderr) as bar:
        for out in pool.imap_unordered(run_unit, todo):
            key, trace, load, results, seconds = out
            cached((key, trace, load, args)).write_bytes(pickle.dumps(out))
            done[(key, trace, load)] = results
            wall[f"{key}/{trace}/{load:g}"] = round(seconds, 1)
            bar.update()
    headline: dict[str, float | int | None] = {}
    detail: dict[str, Any] = {}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for key in zoo_keys:
        zoo, label = zoo_for(key)
        setup = dataclasses.replace(setup_for(key, args), traces=traces_of[key], loads=loads)
        results = [r for t in traces_of[key] for load in loads for r in done.get((key, t, load), [])]
        print_tables(key, label, zoo, dataclasses.replace(setup, loads=tuple(
            x for x in loads if any(r["load"] == x for r in results))), results)
        plot_setup = dataclasses.replace(setup, loads=tuple(sorted({r["load"] for r in results})))
        plot(key, label, plot_setup, results, out_dir / f"tradeoff_{key}.png")
        for r in results:
            if r["load"] != HEADLINE_LOAD and not r["trace"].endswith("-paced"):
                continue
            # The paced trace's other loads (the real-pacing runs are few and long) get their own keys.
            t = trace_key(r["trace"]) + ("" if r["load"] == HEADLINE_LOAD else f"_load{r['load']:g}")
            for versus in ("clipper", "infaas"):
                c = r[f"vs_{versus}"]
                g1, g2 = c["accuracy_gain_points"], c["attainment_gain_x"]
                headline[f"slackfit_accuracy_gain_points_at_equal_attainment_vs_{versus}_{key}_{t}"] = \
                    None if g1 is None else round(g1, 3)
                headline[f"slackfit_attainment_gain_x_at_equal_accuracy_vs_{versus}_{key}_{t}"] = \
                    None if g2 is None else round(g2, 3)
            i = r["vs_all_interpolated"]
            headline[f"slackfit_accuracy_gain_points_interpolated_vs_all_{key}_{t}"] = \
                None if i["accuracy_gain_points"] is None else round(i["accuracy_gain_points"], 3)
            headline[f"slackfit_attainment_gain_x_interpolated_vs_all_{key}_{t}"] = \
                None if i["attainment_gain_x"] is None else round(i["attainment_gain_x"], 3)
        detail[key] = {"label": label, "setup": dataclasses.asdict(setup), "results": point_dicts(results)}
    best: dict[str, Any] = {}  # the largest measured gains over loads, with their load: context, not the headline
    for (key, trace, load), results in done.items():
        for r in results:
            for versus in ("clipper", "infaas"):
                for metric in ("accuracy_gain_points", "attainment_gain_x"):
                    v = r[f"vs_{versus}"][metric]
                    name = f"{metric}_vs_{versus}_{key}_{trace_key(trace)}"
                    if v is not None and (name not in best or v > best[name]["value"]):
                        best[name] = {"value": round(v, 3), "load": load}
    out = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
           "host": f"{platform.node()}: {platform.processor() or platform.machine()}, shared 2-core VM",
           "headline_load": HEADLINE_LOAD, "paced_loads": paced_loads, "infaas_switch_ms": measured_model_load_ms(),
           "headline": headline, "paper": {"accuracy_gain_points": 4.67, "attainment_gain_x": 2.85},
           "best_over_loads": best, "wall_s": wall, "reused": reused, "detail": detail}
    (out_dir / "tradeoff.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

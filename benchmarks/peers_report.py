"""benchmarks/peers.py's reporting: run names, the 'at equal' comparison with the peers, the flat headline, the table,
the printed comparisons and the plot. Pure functions of the result rows (tested without the peers); running the
servers and the client is benchmarks/peers.py."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

from superserve.experiments import ACCURACY_TOL, Point, compare

SYSTEMS = ("superserve", "triton", "ray")
FLOOR_PREFIX = "slackfit@"  # role of a superserve run whose requests carry a peer subnet's accuracy as their hint


# --- run names ------------------------------------------------------------------------------------------------------
def trace_key(spec: str) -> str:
    return spec.replace("gamma:", "gamma_cv2_").replace(":", "_").replace(".", "p")


def run_name(trace: str, load: float) -> str:
    """One (trace, load) run: "gamma:8@2"."""
    return f"{trace}@{load:g}"


def trace_of(run: str) -> str:
    return run.rpartition("@")[0] or run


def run_key(run: str) -> str:
    """A run's suffix in headline keys: "gamma:8@1.5" -> "gamma_cv2_8_load_1p5" (a bare trace: its key)."""
    trace, _, load = run.rpartition("@")
    return trace_key(trace) + f"_load_{load}".replace(".", "p") if trace else trace_key(run)


# --- results: table and headline -----------------------------------------------------------------------------------
def as_point(row: dict[str, Any]) -> Point:
    acc = row["mean_accuracy"]
    return Point(row["config"], row["system"], row["trace"], row.get("load", 0.0), row.get("rate_qps", 0.0),
                 row["requests"], row["slo_attainment"], 0.0 if acc is None or math.isnan(acc) else acc,
                 row.get("p99_latency_ms", float("nan")), row.get("goodput_qps", float("nan")))


def _run(row: dict[str, Any]) -> str:
    return row.get("run", row["trace"])


def trace_comparison(rows: Sequence[dict[str, Any]], run: str) -> dict[str, Any] | None:
    """superserve vs the peers' frontier on one run (superserve.experiments.compare: 'at equal' accuracy or
    attainment, linear between two peer configurations); None without a superserve row or peer rows."""
    group = [r for r in rows if _run(r) == run]
    ours = next((r for r in group if r["system"] == "superserve" and not _is_floor(r)), None)
    peers = [r for r in group if r["system"] != "superserve"]
    if ours is None or not peers:
        return None
    cmp = compare(as_point(ours), [as_point(r) for r in peers])
    best = max(peers, key=lambda r: (r["slo_attainment"], as_point(r).mean_accuracy))
    # Per peer subnet (role): its best configuration, and superserve at that subnet's own accuracy: superserve's best
    # attainment at mean accuracy >= the subnet's (its runs with that accuracy as the requests' hint, or plain
    # SlackFit when that is as accurate). Nothing interpolated: both sides are measured runs.
    by_role: dict[str, dict[str, Any]] = {}
    at_peer: dict[str, dict[str, Any]] = {}
    ss_rows = [r for r in group if r["system"] == "superserve"]
    for role in dict.fromkeys(r.get("role", "") for r in peers):
        top = max((r for r in peers if r.get("role", "") == role), key=lambda r: r["slo_attainment"])
        by_role[role] = {"config": top["config"], "slo_attainment": top["slo_attainment"],
                         "mean_accuracy": top["mean_accuracy"]}
        acc = as_point(top).mean_accuracy
        able = [r for r in ss_rows if as_point(r).mean_accuracy >= acc - ACCURACY_TOL]
        mine = max(able, key=lambda r: (r["slo_attainment"], as_point(r).mean_accuracy)) if able else None
        gain = None
        if mine is not None and top["slo_attainment"] > 0:
            gain = mine["slo_attainment"] / top["slo_attainment"]
        elif mine is not None and mine["slo_attainment"] > 0:
            gain = math.inf  # the peer attains nothing at all
        at_peer[role] = {"accuracy": acc, "peer_config": top["config"], "peer_slo_attainment": top["slo_attainment"],
                         "superserve_config": None if mine is None else mine["config"],
                         "superserve_slo_attainment": None if mine is None else mine["slo_attainment"],
                         "superserve_mean_accuracy": None if mine is None else mine["mean_accuracy"],
                         "attainment_gain_x": gain}
    return {"run": run, "trace": group[0]["trace"], "superserve_slo_attainment": ours["slo_attainment"],
            "superserve_mean_accuracy": ours["mean_accuracy"],
            "best_peer_config": best["config"], "best_peer_slo_attainment": best["slo_attainment"],
            "best_peer_mean_accuracy": best["mean_accuracy"],
            "peer_attainment_at_equal_accuracy": cmp["baseline_attainment_at_equal_accuracy"],
            "peer_accuracy_at_equal_attainment": cmp["baseline_accuracy_at_equal_attainment"],
            "attainment_gain_x_at_equal_accuracy": cmp["attainment_gain_x"],
            "accuracy_gain_points_at_equal_attainment": cmp["accuracy_gain_points"],
            "best_peer_by_subnet": by_role, "peer_frontier": cmp["frontier"], "at_peer_accuracy": at_peer}


def _is_floor(row: dict[str, Any]) -> bool:
    return str(row.get("role", "")).startswith(FLOOR_PREFIX)


def _r(x: Any, nd: int) -> Any:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def _gain(x: float | None) -> float | str | None:
    """A ratio for the flat headline: "inf" when the peer attained nothing (JSON has no infinity)."""
    return "inf" if x is not None and math.isinf(x) else _r(x, 3)


def headline(rows: Sequence[dict[str, Any]], runs: Sequence[str], startups: dict[str, float],
             burstiest: str | None) -> dict[str, Any]:
    """Flat key -> number/str, units in the key names; `runs` are run names (or bare traces), `burstiest` a trace:
    the issue's targets are judged on its runs."""
    h: dict[str, Any] = {}
    for run in runs:
        c = trace_comparison(rows, run)
        if c is None:
            continue
        k = run_key(run)
        h[f"superserve_slo_attainment_frac_{k}"] = _r(c["superserve_slo_attainment"], 4)
        h[f"superserve_mean_accuracy_pct_{k}"] = _r(100 * c["superserve_mean_accuracy"], 2)
        h[f"best_peer_config_{k}"] = c["best_peer_config"]
        h[f"best_peer_slo_attainment_frac_{k}"] = _r(c["best_peer_slo_attainment"], 4)
        h[f"best_peer_mean_accuracy_pct_{k}"] = _r(100 * c["best_peer_mean_accuracy"], 2)
        h[f"attainment_gain_x_at_equal_accuracy_{k}"] = _r(c["attainment_gain_x_at_equal_accuracy"], 3)
        h[f"accuracy_gain_points_at_equal_attainment_{k}"] = _r(c["accuracy_gain_points_at_equal_attainment"], 2)
        for role, b in c["best_peer_by_subnet"].items():
            if role:
                h[f"best_peer_{role.replace(' ', '_')}_subnet_slo_attainment_frac_{k}"] = _r(b["slo_attainment"], 4)
        gains: list[float | None] = []
        for role, a in c["at_peer_accuracy"].items():
            if not role:
                continue
            if a["superserve_config"] is None:  # no superserve run as accurate: no verdict at every peer's accuracy
                gains.append(None)
                continue
            name = role.replace(" ", "_")
            h[f"superserve_slo_attainment_frac_at_{name}_subnet_accuracy_{k}"] = _r(a["superserve_slo_attainment"], 4)
            h[f"superserve_mean_accuracy_pct_at_{name}_subnet_accuracy_{k}"] = \
                _r(100 * a["superserve_mean_accuracy"], 2)
            h[f"attainment_gain_x_at_{name}_subnet_accuracy_{k}"] = _gain(a["attainment_gain_x"])
            gains.append(a["attainment_gain_x"])
        if gains and all(g is not None for g in gains):
            h[f"attainment_gain_x_at_each_peer_subnet_accuracy_min_{k}"] = _gain(min(gains))
    if burstiest is not None:
        h["burstiest_trace"] = burstiest
    for run in runs:
        k = run_key(run)
        if burstiest is None or trace_of(run) != burstiest or f"superserve_slo_attainment_frac_{k}" not in h:
            continue
        g = h[f"attainment_gain_x_at_equal_accuracy_{k}"]
        a = h[f"accuracy_gain_points_at_equal_attainment_{k}"]
        # None = no peer configuration is as accurate (resp. attains as much): superserve wins that side outright.
        h[f"target_attainment_2x_at_equal_accuracy_met_{k}"] = "yes" if g is None or g >= 2 else "no"
        h[f"target_higher_accuracy_at_equal_attainment_met_{k}"] = "yes" if a is None or a > 0 else "no"
        g_min = h.get(f"attainment_gain_x_at_each_peer_subnet_accuracy_min_{k}")
        if g_min is not None:  # superserve run at every peer subnet's accuracy: 2x the best peer on each
            h[f"target_attainment_2x_at_each_peer_subnet_accuracy_met_{k}"] = \
                "yes" if g_min == "inf" or g_min >= 2 else "no"
    for system in SYSTEMS:
        vals = sorted(v for lbl, v in startups.items() if lbl.startswith(system + "["))
        if vals:
            h[f"startup_s_{system}_median"] = round(vals[len(vals) // 2], 2)
    return h


def format_table(rows: Sequence[dict[str, Any]], startups: dict[str, float]) -> str:
    head = (f"{'trace@load':13s} {'configuration':38s} {'SLO att.':>8s} {'mean acc.':>9s} {'p99 ms':>8s} "
            f"{'shed+rej':>8s} {'start-up':>8s} {'sat. q/s':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = r["mean_accuracy"]
        acc_s = "-" if acc is None or math.isnan(acc) else f"{100 * acc:.2f}%"
        p99 = r.get("p99_latency_ms", float("nan"))
        p99_s = "-" if p99 is None or math.isnan(p99) else f"{p99:.1f}"
        st = startups.get(r["config"])
        sat = r.get("saturation_qps")
        sat_s = "-" if sat is None else f"{sat:.0f}"
        lines.append(f"{_run(r):13s} {r['config']:38s} {100 * r['slo_attainment']:7.1f}% {acc_s:>9s} {p99_s:>8s} "
                     f"{r.get('shed', 0) + r.get('rejected', 0):8d} {'-' if st is None else f'{st:.1f} s':>8s} "
                     f"{sat_s:>8s}")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], runs: Sequence[str], startups: dict[str, float], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"superserve": "tab:red", "triton": "tab:green", "ray": "tab:blue"}
    panels = len(runs) + 1
    cols = min(3, panels)
    nrows = math.ceil(panels / cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    axes = [[ax for row in grid for ax in row]]
    for ax in axes[0][panels:]:
        ax.axis("off")
    for ax, t in zip(axes[0], runs):
        for r in (r for r in rows if _run(r) == t):
            p = as_point(r)
            marker = "*" if r["system"] == "superserve" else ("s" if "timeout" in r["config"] else "o")
            face = colors[r["system"]] if r.get("role") != "mid" and not _is_floor(r) else "white"
            ax.scatter(100 * p.mean_accuracy, p.slo_attainment, marker=marker, s=140 if marker == "*" else 50,
                       facecolors=face, edgecolors=colors[r["system"]], linewidths=1.5, zorder=3)
            role = {"most accurate": "top", "mid": "mid", "extra": "extra"}.get(r.get("role", ""), "")
            floor = f" acc>={100 * r['min_accuracy']:.1f}" if _is_floor(r) and r.get("min_accuracy") else ""
            ax.annotate(r["config"].split("[")[0] + (floor if r["system"] == "superserve" else
                                                     f" {role} b{r.get('max_batch')}" +
                                                     (" +timeout" if "timeout" in r["config"] else "")),
                        (100 * p.mean_accuracy, p.slo_attainment), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
        rate = next((r["rate_qps"] for r in rows if _run(r) == t and "rate_qps" in r), None)
        ax.set_title(f"{t.replace('@', ', load ')}" + (f" ({rate:.0f} q/s)" if rate else ""), fontsize=9)
        ax.set_ylim(-0.03, 1.05)
        ax.margins(x=0.25)
        ax.set_xlabel("mean serving accuracy (%)", fontsize=8)
        ax.set_ylabel("SLO attainment", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[0][panels - 1]
    labels = list(startups)
    ax.barh(range(len(labels)), [startups[x] for x in labels],
            color=[colors.get(x.split("[")[0], "gray") for x in labels])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.set_xlabel("start-up: process start to first answer (s)", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(textwrap.fill(title, 60 * cols), fontsize=9)  # one line of it ran off the figure
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_comparisons(rows: Sequence[dict[str, Any]], runs: Sequence[str]) -> None:
    """Per run: superserve against the best peer, at equal accuracy and attainment, and at each peer subnet's
    accuracy."""
    for t in runs:
        c = trace_comparison(rows, t)
        if c:
            g, a = c["attainment_gain_x_at_equal_accuracy"], c["accuracy_gain_points_at_equal_attainment"]
            print(f"{t}: superserve {100 * c['superserve_slo_attainment']:.1f}% at "
                  f"{100 * c['superserve_mean_accuracy']:.2f}%; best peer {c['best_peer_config']} "
                  f"{100 * c['best_peer_slo_attainment']:.1f}%; at equal accuracy "
                  f"{'no peer is as accurate' if g is None else f'{g:.2f}x'}; at equal attainment "
                  f"{'no peer attains as much' if a is None else f'{a:+.2f} points'}")
            for role, ap in c["at_peer_accuracy"].items():
                if ap["superserve_config"] is None:
                    continue
                gx = ap["attainment_gain_x"]
                print(f"  at the {role or 'peer'} subnet's accuracy ({100 * ap['accuracy']:.2f}%): "
                      f"{ap['superserve_config']} {100 * ap['superserve_slo_attainment']:.1f}% at "
                      f"{100 * ap['superserve_mean_accuracy']:.2f}% vs {ap['peer_config']} "
                      f"{100 * ap['peer_slo_attainment']:.1f}%: {'-' if gx is None else f'{gx:.2f}x'}")

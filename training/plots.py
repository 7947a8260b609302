"""PNG plots of a zoo: the front (accuracy vs batch-1 latency, with all search candidates) and the latency tables."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from superserve.zoo import Zoo  # noqa: E402


def plot_front(zoo: Zoo, out_png: str | Path, candidates_json: str | Path | None = None) -> Path:
    """Accuracy vs batch-1 median latency of the served subnets. Candidates (which were never profiled) are placed
    on the latency axis by MACs through a least-squares fit latency ~ a + b * MACs over the served subnets."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lat = [e.latency_ms[min(e.latency_ms)].median_ms for e in zoo.entries]
    macs = [e.flops for e in zoo.entries]
    if candidates_json and Path(candidates_json).is_file():
        cands = json.loads(Path(candidates_json).read_text())["candidates"]
        n = len(macs)
        mean_m, mean_l = sum(macs) / n, sum(lat) / n
        var = sum((m - mean_m) ** 2 for m in macs) or 1.0
        slope = sum((m - mean_m) * (t - mean_l) for m, t in zip(macs, lat)) / var
        xs = [mean_l + slope * (c["macs"] - mean_m) for c in cands]
        ax.scatter(xs, [100 * c["val_accuracy"] for c in cands], s=12, c="0.7",
                   label=f"search candidates ({len(cands)}, latency from MACs fit)")
    ax.plot(lat, [100 * e.accuracy for e in zoo.entries], "o-", c="C0", label=f"served front ({len(lat)}), val")
    if all(e.test_accuracy is not None for e in zoo.entries):
        ax.plot(lat, [100 * e.test_accuracy for e in zoo.entries], "s--", c="C1", ms=4, label="served front, test")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, median (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{zoo.dataset}: accuracy vs latency ({zoo.host.device}, {zoo.host.threads} thread(s))")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def plot_latency_tables(zoo: Zoo, out_png: str | Path) -> Path:
    """Latency (median, with p99 as a dotted line) vs batch size, one line per served subnet."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    for k, e in enumerate(zoo.entries):
        sizes = sorted(e.latency_ms)
        color = cmap(k / max(1, len(zoo.entries) - 1))
        ax.plot(sizes, [e.latency_ms[b].median_ms for b in sizes], "o-", c=color, ms=3,
                label=f"{e.subnet_id} ({100 * e.accuracy:.1f}%)")
        ax.plot(sizes, [e.latency_ms[b].p99_ms for b in sizes], ":", c=color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch (ms; solid median, dotted p99)")
    ax.set_title("latency tables on this host")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)

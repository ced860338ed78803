"""Plots of the bench results (matplotlib, Agg): the latency distribution and the
throughput-vs-sessions curve, each Bamboo (at each durability) against the relay and
Socket.IO.

    python -m bench.plot    # from bench/out/*.json to bench/latency.png, bench/throughput.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import common


def plot_all(source: Path, target: Path) -> list[Path]:
    """Draws every plot whose JSON exists in ``source``; the PNGs written to ``target``."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    latency = source / "latency.json"
    if latency.exists():
        written.append(plot_latency(json.loads(latency.read_text()), target / "latency.png"))
    throughput = source / "throughput.json"
    if throughput.exists():
        written.append(
            plot_throughput(json.loads(throughput.read_text()), target / "throughput.png")
        )
    return written


def plot_latency(results: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind, run in results["runs"].items():
        edges, counts = run["histogram_ms"]["edges"], run["histogram_ms"]["counts"]
        if not counts:
            continue
        total = sum(counts)
        # Complementary CDF on log axes: the tail (p99, p99.9) is where the story is.
        remaining, xs, ys = total, [], []
        for edge, count in zip(edges[1:], counts, strict=True):
            remaining -= count
            if remaining > 0:
                xs.append(edge)
                ys.append(remaining / total)
        label = (
            f"{kind}: p50 {run['p50_ms']:.2f}, p99 {run['p99_ms']:.2f}, "
            f"p99.9 {run['p999_ms']:.2f} ms"
        )
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(10, color="grey", linestyle=":", label="goal: p99 10 ms")
    ax.axhline(0.01, color="grey", linestyle="--", linewidth=0.5)
    ax.axhline(0.001, color="grey", linestyle="--", linewidth=0.5)
    any_run = next(iter(results["runs"].values()))
    ax.set_title(
        f"Publish to delivery, open loop {any_run['rate']:.0f} events/s over "
        f"{any_run['sessions']} sessions (nproc {results.get('nproc')})"
    )
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of events slower")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


LABELS = {"relay": "relay", "socketio": "Socket.IO", "baseline": "relay"}


def plot_throughput(results: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    points = results["points"]
    sessions = [p["sessions"] for p in points]
    kinds = list(dict.fromkeys(kind for p in points for kind in p["runs"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind in kinds:
        label = LABELS.get(kind, kind.replace("bamboo-", "Bamboo ("))
        label += ")" if kind.startswith("bamboo-") else ""
        ax.plot(
            sessions,
            # NaN leaves a gap where a kind has no run, as None did: matplotlib turns
            # None into NaN, but its stubs take floats only.
            [p["runs"][kind]["events_per_s"] if kind in p["runs"] else math.nan for p in points],
            marker="o",
            label=label,
        )
    if all("relay" in p["runs"] for p in points):
        ax.plot(
            sessions,
            [0.6 * p["runs"]["relay"]["events_per_s"] for p in points],
            linestyle=":",
            color="grey",
            label="goal: 0.6x relay",
        )
    for p in points:
        if "ratio" not in p:
            continue
        ax.annotate(
            f"{p['ratio']:.2f}x",
            (p["sessions"], p["runs"][p["goal_kind"]]["events_per_s"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"Events delivered per second vs sessions, window {results['window']} "
        f"(nproc {results.get('nproc')})"
    )
    ax.set_xlabel("sessions (one agent and one viewer each)")
    ax.set_ylabel("events/s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    for written in plot_all(common.OUT_DIR, common.BENCH_DIR):
        print(f"plotted {written}")

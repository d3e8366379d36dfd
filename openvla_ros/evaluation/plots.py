"""The evaluation's two figures (matplotlib, headless Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success_per_task(per_task: list[dict], suite: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(per_task) + 2.0), 3.5))
    labels = [str(row["task_id"]) for row in per_task]
    rates = [100.0 * row["success_rate"] for row in per_task]
    bars = ax.bar(labels, rates, color="tab:green")
    for bar, row in zip(bars, per_task):
        ax.annotate(f"{row['successes']}/{row['episodes']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_xlabel("task id")
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"{suite}: success per task")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_latency_histogram(latencies_ms: list[float], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.5))
    if latencies_ms:
        values = np.asarray(latencies_ms)
        # Log-spaced bins: a few slow steps (a loaded machine) must not squash the bulk into one bar.
        low, high = max(values.min(), 1e-3), max(values.max(), 1e-3)
        bins = np.geomspace(low, high * 1.0001, min(50, max(5, values.size // 5)) + 1)
        ax.hist(values, bins=bins, color="tab:blue")
        ax.set_xscale("log")
        for q, style in ((50, "--"), (90, ":")):
            percentile = np.percentile(values, q)
            ax.axvline(percentile, color="black", linestyle=style, label=f"p{q} {percentile:.1f} ms")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("frame published -> action received (ms)")
    ax.set_ylabel("steps")
    ax.set_title("per-step policy latency through ROS")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

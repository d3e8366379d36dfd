"""Evaluation results: per-episode records, aggregates (success per task and per suite with 95 %
Wilson intervals, latency stats), and their files: results.json and results.md."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SUCCESS_PLOT = "success_per_task.png"
LATENCY_PLOT = "latency_hist.png"
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class EpisodeResult:
    task_suite: str
    task_id: int
    init_state_id: int
    instruction: str
    success: bool
    steps: int
    max_steps: int
    actions_rejected: int
    wall_s: float
    latency_ms: list[float]  # per step: frame published -> its action received
    video: str | None  # relative to the output directory
    worker: int
    domain_id: int
    # the nodes' RSS right after this episode (from /proc); None where it could not be read
    bridge_rss_mb: float | None = None
    policy_rss_mb: float | None = None

    def to_json(self) -> dict:
        raw = asdict(self)
        raw["latency_ms"] = [round(v, 3) for v in self.latency_ms]
        raw["latency_ms_stats"] = latency_stats(self.latency_ms)
        raw["wall_s"] = round(self.wall_s, 3)
        return raw

    @classmethod
    def from_json(cls, raw: dict) -> "EpisodeResult":
        """An episode as results.json recorded it (`to_json`'s derived fields dropped)."""
        return cls(**{f.name: raw[f.name] for f in fields(cls)})


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % by default); (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def latency_stats(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    if not len(values_ms):
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    values = np.asarray(values_ms, dtype=np.float64)
    return {"count": int(values.size), "mean": round(float(values.mean()), 3),
            **{f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)},
            "max": round(float(values.max()), 3)}


def per_task(episodes: Sequence[EpisodeResult]) -> list[dict]:
    """One row per task, in task order: instruction, episodes, successes, success rate."""
    rows: dict[int, dict] = {}
    for ep in sorted(episodes, key=lambda e: (e.task_id, e.init_state_id)):
        row = rows.setdefault(ep.task_id, {"task_id": ep.task_id, "instruction": ep.instruction,
                                           "episodes": 0, "successes": 0})
        row["episodes"] += 1
        row["successes"] += int(ep.success)
    for row in rows.values():
        row["success_rate"] = row["successes"] / row["episodes"]
        row["success_ci95"] = [round(v, 4) for v in wilson_interval(row["successes"], row["episodes"])]
    return list(rows.values())


def summarize(episodes: Sequence[EpisodeResult], run: dict) -> dict:
    """The content of results.json: `run` (the settings), aggregates, then every episode."""
    successes = sum(ep.success for ep in episodes)
    return {
        "run": run,
        "episodes_total": len(episodes),
        "successes_total": successes,
        "success_rate": successes / len(episodes) if episodes else None,
        "success_ci95": [round(v, 4) for v in wilson_interval(successes, len(episodes))] if episodes else None,
        "per_task": per_task(episodes),
        "latency_ms": latency_stats([v for ep in episodes for v in ep.latency_ms]),
        "steps_total": sum(ep.steps for ep in episodes),
        "episodes": [ep.to_json() for ep in sorted(episodes, key=lambda e: (e.task_id, e.init_state_id))],
    }


def results_markdown(summary: dict) -> str:
    run, latency = summary["run"], summary["latency_ms"]
    rate = summary["success_rate"]
    lines = [
        f"# LIBERO evaluation: {run['suite']}",
        "",
        f"Model `{run['model_dir']}` ({run['backend']}, unnorm key `{run['unnorm_key'] or '(only key)'}`), "
        f"{run['episodes_per_task']} episode(s) per task, {run['workers']} worker(s), "
        f"{run['wall_s']:.0f} s wall time.",
        "",
    ]
    if rate is not None:
        low, high = wilson_interval(summary["successes_total"], summary["episodes_total"])
        lines.append(f"**Success rate ({run['suite']}): {summary['successes_total']}/{summary['episodes_total']} "
                     f"({100.0 * rate:.1f}%, 95% CI {100.0 * low:.1f}-{100.0 * high:.1f}%)**")
    else:
        lines.append("**No episodes.**")
    lines += _protocol_lines(run)
    lines += [
        "",
        "| task | instruction | episodes | successes | success rate | 95% CI (Wilson) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["per_task"]:
        low, high = wilson_interval(row["successes"], row["episodes"])
        lines.append(f"| {row['task_id']} | {row['instruction']} | {row['episodes']} | {row['successes']} | "
                     f"{100.0 * row['success_rate']:.1f}% | {100.0 * low:.1f}-{100.0 * high:.1f}% |")
    if latency["count"]:
        lines += ["", f"Per-step latency (frame published -> action received, {latency['count']} steps): "
                      f"mean {latency['mean']:.1f} ms, p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, "
                      f"max {latency['max']:.1f} ms."]
    if run.get("software"):
        lines += ["", "Software: " + ", ".join(f"{name} {version or '(not found)'}"
                                                for name, version in run["software"].items()) + "."]
    lines += ["", f"![success per task]({SUCCESS_PLOT})", f"![latency histogram]({LATENCY_PLOT})", ""]
    return "\n".join(lines)


def _protocol_lines(run: dict) -> list[str]:
    if "protocol" not in run:
        return []
    drift = run.get("protocol_drift") or []
    if not drift:
        return ["", f"Protocol: `{run['protocol']}` exactly (settings in results.json)."]
    lines = ["", f"**Protocol drift** from `{run['protocol']}`: these results are not comparable with the "
                 f"published ones.", "", "| setting | protocol | this run |", "| --- | --- | --- |"]
    lines += [f"| {d['setting']} | {d['protocol']} | {d['run']} |" for d in drift]
    return lines


def write_results(out: Path, summary: dict) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / RESULTS_JSON, "markdown": out / RESULTS_MD}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(results_markdown(summary), encoding="utf-8")
    return paths

"""Memory of the evaluation's node processes: what is recorded per episode and per worker in
results.json, and what it implies for a longer evaluation.

Per episode: both nodes' RSS right after it. Per worker: both nodes' peak RSS (VmHWM) before
they stop. `projected_total_peak_rss_mb` extends a short run to a long one: each worker's peak
plus its bridge's and policy's growth per episode after the warm-up, times the episodes the
worker would still run."""
from __future__ import annotations

from openvla_ros.evaluation.node_pair import BRIDGE, POLICY, NodePair
from openvla_ros.process_stats import ProcessStats, read_process_stats

NODES = {BRIDGE: "bridge", POLICY: "policy"}  # node name -> key prefix in results.json


def pair_stats(pair: NodePair) -> dict[str, ProcessStats | None]:
    """/proc stats of both processes of a pair, by node name (None for one that has exited)."""
    return {name: read_process_stats(process.proc.pid) if process.proc else None
            for name, process in ((BRIDGE, pair.bridge), (POLICY, pair.policy))}


def node_rss_mb(pair: NodePair) -> dict[str, float | None]:
    """{"bridge_rss_mb": ..., "policy_rss_mb": ...}, rounded to 0.1 MB."""
    return {f"{NODES[name]}_rss_mb": round(stats.rss_mb, 1) if stats else None
            for name, stats in pair_stats(pair).items()}


def worker_memory(pair: NodePair, worker: int) -> dict:
    """One worker's entry under results.json's run.memory.workers."""
    peaks = {f"{NODES[name]}_peak_rss_mb": round(stats.peak_rss_mb, 1) if stats else None
             for name, stats in pair_stats(pair).items()}
    return {"worker": worker, "domain_id": pair.config.domain_id, **peaks,
            "total_peak_rss_mb": round(sum(v for v in peaks.values() if v is not None), 1)}


def growth_per_episode_mb(rss_mb: list[float], warmup: int) -> float:
    """Mean RSS growth per episode after episode `warmup` (least squares slope, >= 0)."""
    if warmup < 1 or len(rss_mb) < warmup + 2:
        raise ValueError(f"need at least {warmup + 2} episodes to measure growth after {warmup} warm-up episode(s), "
                         f"got {len(rss_mb)}")
    points = rss_mb[warmup - 1:]
    n = len(points)
    mean_x, mean_y = (n - 1) / 2.0, sum(points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(points)) / sum((x - mean_x) ** 2 for x in range(n))
    return max(0.0, slope)


def projected_total_peak_rss_mb(summary: dict, episodes: int, workers: int, warmup: int = 2) -> float:
    """Total peak RSS of an evaluation of `episodes` on `workers` pairs, from a recorded one.

    Every recorded worker must have run at least warmup + 2 episodes. A new worker is taken to
    be like the largest recorded one: its peak, plus its per-episode growth (bridge + policy)
    times the episodes beyond those it ran."""
    recorded = summary["run"]["memory"]["workers"]
    if not recorded:
        raise ValueError("results.json records no worker memory")
    per_worker = []
    for worker in recorded:
        mine = [ep for ep in summary["episodes"] if ep["worker"] == worker["worker"]]
        growth = sum(growth_per_episode_mb([ep[f"{key}_rss_mb"] for ep in mine], warmup) for key in NODES.values())
        remaining = max(0, -(-episodes // workers) - len(mine))
        per_worker.append(worker["total_peak_rss_mb"] + growth * remaining)
    return max(per_worker) * workers

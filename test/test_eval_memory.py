"""`eval-libero` records its nodes' memory in results.json, and a short evaluation's figures
keep "100 episodes with 2 workers stay under 8 GB in total" from regressing (the long version is
the benchmark command in the README)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from openvla_ros.evaluation.memory import projected_total_peak_rss_mb
from openvla_ros.process_stats import growth_after

BUDGET_MB = 8192.0  # 100 episodes, 2 workers, on this project's 24 GB machine


def _summary(per_worker_rss: dict[int, list[tuple[float, float]]], peaks: dict[int, float]) -> dict:
    episodes = [{"worker": w, "bridge_rss_mb": b, "policy_rss_mb": p}
                for w, values in per_worker_rss.items() for b, p in values]
    return {"run": {"memory": {"workers": [{"worker": w, "total_peak_rss_mb": v} for w, v in peaks.items()]}},
            "episodes": episodes}


def test_projection_adds_each_workers_growth_for_the_episodes_it_did_not_run():
    flat = [(1900.0, 130.0), (2100.0, 130.0), (2100.0, 130.0), (2100.0, 130.0)]
    leaking = [(1900.0, 130.0), (2100.0, 130.0), (2228.0, 130.0), (2356.0, 130.0)]
    assert projected_total_peak_rss_mb(_summary({0: flat, 1: flat}, {0: 2300.0, 1: 2300.0}), 100, 2) == 4600.0
    # 128 MB per episode after the warm-up, 46 more episodes per worker: far over the budget
    leaked = projected_total_peak_rss_mb(_summary({0: leaking, 1: flat}, {0: 2500.0, 1: 2300.0}), 100, 2)
    assert leaked == pytest.approx(2 * (2500.0 + 128.0 * 46))
    with pytest.raises(ValueError, match="at least 4 episodes"):
        projected_total_peak_rss_mb(_summary({0: flat[:3]}, {0: 2300.0}), 100, 2)


@pytest.mark.slow
@pytest.mark.sim
def test_short_evaluation_records_memory_and_fits_the_budget(demo_model, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "openvla_ros.cli", "eval-libero", "--suite", "libero_object", "--tasks", "0",
           "--episodes-per-task", "10", "--max-steps", "5", "--camera-size", "128", "--workers", "2",
           "--model-dir", str(demo_model / "onnx"), "--backend", "onnxruntime", "--no-video", "--no-progress",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    memory = results["run"]["memory"]
    assert [w["worker"] for w in memory["workers"]] == [0, 1]
    for worker in memory["workers"]:
        assert worker["bridge_peak_rss_mb"] > 500 and worker["policy_peak_rss_mb"] > 50
        assert worker["total_peak_rss_mb"] == pytest.approx(worker["bridge_peak_rss_mb"] + worker["policy_peak_rss_mb"],
                                                            abs=0.11)
    assert memory["total_peak_rss_mb"] == pytest.approx(sum(w["total_peak_rss_mb"] for w in memory["workers"]),
                                                        abs=0.11)
    for worker in (0, 1):
        mine = [e for e in results["episodes"] if e["worker"] == worker]
        assert len(mine) >= 4, "each worker needs 2 warm-up episodes and 2 measured ones"
        for key in ("bridge_rss_mb", "policy_rss_mb"):
            rss = [e[key] for e in mine]
            assert all(v > 0 for v in rss)
            assert growth_after(rss, warmup=2) <= 0.05, (key, rss)
    assert projected_total_peak_rss_mb(results, episodes=100, workers=2) < BUDGET_MB

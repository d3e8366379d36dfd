"""`openvla-ros eval-libero`: the episode plan and result files (fast), and the acceptance run
`--suite libero_object --tasks 0 --episodes-per-task 2` with the demo model through the real
bridge and policy node processes (slow), checking every output it writes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from openvla_ros.evaluation.results import EpisodeResult, latency_stats, per_task, results_markdown, summarize
from openvla_ros.evaluation.runner import EvalConfig, Job, parse_tasks, plan_episodes


def test_parse_tasks():
    assert parse_tasks("all", 10) == tuple(range(10))
    assert parse_tasks("0", 10) == (0,)
    assert parse_tasks("3,0-2,3", 10) == (3, 0, 1, 2)
    with pytest.raises(ValueError, match="task ids"):
        parse_tasks("zero", 10)


def test_plan_follows_openvla_protocol():
    # episode k of a task starts from the task's fixed initial state k
    assert plan_episodes((2, 5), 3) == [Job(2, 0), Job(2, 1), Job(2, 2), Job(5, 0), Job(5, 1), Job(5, 2)]


@pytest.mark.parametrize("change, message", [
    ({"tasks": (10,)}, r"0\.\.9"),
    ({"episodes_per_task": 51}, "one per initial state"),
    ({"workers": 0}, "workers"),
    ({"domain_id_base": 232, "workers": 2}, "out of range"),
    ({"suite": "libero_100"}, "unknown LIBERO suite"),
])
def test_bad_settings_are_rejected(tmp_path, change, message):
    settings = dict(suite="libero_object", tasks=(0,), episodes_per_task=2, backend="onnxruntime",
                    model_dir=tmp_path, out=tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        EvalConfig(**{**settings, **change}).validate()


def _episode(task: int, init: int, success: bool, latencies: list[float]) -> EpisodeResult:
    return EpisodeResult("libero_goal", task, init, f"task {task}", success, 10 if success else 300, 300, 0, 1.0,
                         latencies, None, 0, 1)


def test_summary_aggregates_per_task_and_latency():
    episodes = [_episode(1, 0, True, [10.0, 20.0]), _episode(0, 1, False, [30.0]), _episode(1, 1, False, [40.0])]
    rows = per_task(episodes)
    assert [(r["task_id"], r["episodes"], r["successes"]) for r in rows] == [(0, 1, 0), (1, 2, 1)]
    assert rows[1]["success_rate"] == 0.5
    assert latency_stats([10.0, 20.0, 30.0, 40.0])["mean"] == 25.0
    assert latency_stats([])["count"] == 0
    run = {"suite": "libero_goal", "model_dir": "m", "backend": "onnxruntime", "unnorm_key": "", "episodes_per_task": 2,
           "workers": 1, "wall_s": 3.0}
    summary = summarize(episodes, run)
    assert summary["success_rate"] == pytest.approx(1 / 3)
    assert [(e["task_id"], e["init_state_id"]) for e in summary["episodes"]] == [(0, 1), (1, 0), (1, 1)]
    markdown = results_markdown(summary)
    assert "| 1 | task 1 | 2 | 1 | 50.0% |" in markdown
    assert "1/3 (33.3%)" in markdown


def _video_frames(path) -> int:
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    next(frames)  # metadata
    return sum(1 for _ in frames)


@pytest.mark.slow
@pytest.mark.sim
def test_eval_libero_object_task0_two_episodes(demo_model, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "openvla_ros.cli", "eval-libero", "--suite", "libero_object", "--tasks", "0",
           "--episodes-per-task", "2", "--model-dir", str(demo_model / "onnx"), "--backend", "onnxruntime",
           "--out", str(out), "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "episode" in done.stderr  # the tqdm progress bar (with its ETA) goes to stderr

    results = json.loads((out / "results.json").read_text())
    assert results["run"]["complete"] and results["run"]["workers"] == 2
    assert results["episodes_total"] == 2
    episodes = results["episodes"]
    assert [(e["task_suite"], e["task_id"], e["init_state_id"]) for e in episodes] == [
        ("libero_object", 0, 0), ("libero_object", 0, 1)]
    for episode in episodes:
        assert episode["instruction"] == "pick up the alphabet soup and place it in the basket"
        assert episode["max_steps"] == 280
        assert 1 <= episode["steps"] <= 280 and (episode["success"] or episode["steps"] == 280)
        assert episode["actions_rejected"] == 0
        assert len(episode["latency_ms"]) == episode["steps"]
        assert all(v > 0 for v in episode["latency_ms"])
        video = out / episode["video"]
        assert video.is_file()
        assert _video_frames(video) == episode["steps"] + 1  # the first frame, then one per step
    assert {e["domain_id"] for e in episodes} == set(results["run"]["domain_ids"])  # both pairs worked
    assert results["per_task"] == [{"task_id": 0, "instruction": episodes[0]["instruction"], "episodes": 2,
                                    "successes": sum(e["success"] for e in episodes),
                                    "success_rate": sum(e["success"] for e in episodes) / 2}]
    assert results["latency_ms"]["count"] == sum(e["steps"] for e in episodes)

    markdown = (out / "results.md").read_text()
    assert "| 0 | pick up the alphabet soup and place it in the basket | 2 |" in markdown
    from PIL import Image

    for plot in ("success_per_task.png", "latency_hist.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        p.split("/")[-1] for p in (e["video"] for e in episodes))

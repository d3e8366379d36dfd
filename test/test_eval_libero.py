"""`openvla-ros eval-libero`: the episode plan and result files (fast), and the acceptance run
`--suite libero_object --tasks 0 --episodes-per-task 2` with the demo model through the real
bridge and policy node processes (slow), checking every output it writes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from openvla_ros.evaluation.protocol import protocol_drift, protocol_settings
from openvla_ros.evaluation.results import (EpisodeResult, latency_stats, per_task, results_markdown, summarize,
                                            wilson_interval, write_results)
from openvla_ros.evaluation.runner import (EvalConfig, Job, ProtocolDriftError, evaluate, parse_tasks, plan_episodes,
                                           recorded_episodes)


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
    ({"center_crop_scale": 1.5}, r"policy parameter center_crop_scale=1.5: expected a value in \[0.01, 1.0\]"),
    ({"camera_size": 0}, "camera_size must be > 0"),
    ({"num_steps_wait": -1}, "num_steps_wait must be >= 0"),
])
def test_bad_settings_are_rejected(tmp_path, change, message):
    settings = dict(suite="libero_object", tasks=(0,), episodes_per_task=2, backend="onnxruntime",
                    model_dir=tmp_path, out=tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        EvalConfig(**{**settings, **change}).validate()


def test_a_pair_passes_only_the_overrides_it_is_given(tmp_path):
    """Each default lives with its node: a setting not overridden is not passed at all."""
    from openvla_ros.evaluation.node_pair import PairConfig

    plain = PairConfig("onnxruntime", tmp_path, 5, tmp_path)
    assert "center_crop_scale" not in plain.policy_parameters()
    assert "camera_size" not in plain.bridge_parameters()
    pair = PairConfig("onnxruntime", tmp_path, 5, tmp_path, policy_overrides={"center_crop_scale": 1, "max_rate_hz": 4},
                      bridge_overrides={"camera_size": 128, "control_rate_hz": 10})
    assert pair.policy_parameters()["center_crop_scale"] == 1.0 and pair.policy_parameters()["max_rate_hz"] == 4.0
    assert type(pair.policy_parameters()["center_crop_scale"]) is float  # a node refuses an int for a double
    assert pair.bridge_parameters()["camera_size"] == 128 and pair.bridge_parameters()["control_rate_hz"] == 10.0
    assert type(pair.bridge_parameters()["control_rate_hz"]) is float


@pytest.mark.parametrize("change, message", [
    ({"policy_overrides": {"centre_crop_scale": 0.9}}, "policy parameter 'centre_crop_scale' is not declared"),
    ({"policy_overrides": {"center_crop_scale": "0.9"}}, "center_crop_scale='0.9': expected a float"),
    ({"policy_overrides": {"max_consecutive_errors": 0}}, r"max_consecutive_errors=0: expected a value in \[1, "),
    ({"policy_overrides": {"mode": "continuous"}}, r"policy parameters \['mode'\] are set by the node pair"),
    ({"bridge_overrides": {"camera": 128}}, "unknown bridge parameters"),
    ({"bridge_overrides": {"camera_size": -1}}, "camera_size must be > 0"),
    ({"bridge_overrides": {"call_policy_step": False}}, r"bridge parameters \['call_policy_step'\] are set by"),
])
def test_a_pair_refuses_overrides_the_nodes_would_refuse(tmp_path, change, message):
    from openvla_ros.evaluation.node_pair import PairConfig

    with pytest.raises(ValueError, match=message):
        PairConfig("onnxruntime", tmp_path, 5, tmp_path, **change).validate()


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
    assert "| 1 | task 1 | 2 | 1 | 50.0% | 9.5-90.5% |" in markdown
    assert "1/3 (33.3%, 95% CI 6.1-79.2%)" in markdown


def test_wilson_interval():
    # reference values: Wilson score interval, z = 1.96 (by hand for 44/50: centre 0.85289, half width 0.09093)
    assert wilson_interval(44, 50) == pytest.approx((0.76195, 0.94382), abs=5e-5)
    assert wilson_interval(0, 50) == pytest.approx((0.0, 0.07135), abs=5e-5)
    assert wilson_interval(50, 50) == pytest.approx((0.92865, 1.0), abs=5e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_protocol_preset_is_openvlas_published_settings():
    expected_steps = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                      "libero_90": 400}
    for suite, steps in expected_steps.items():
        settings = protocol_settings("openvla", suite, 10)
        assert settings == {"tasks": list(range(10)), "episodes_per_task": 50, "camera_size": 256,
                            "num_steps_wait": 10, "max_steps": steps, "center_crop_scale": 0.9,
                            "image_preprocess": "openvla", "unnorm_key": f"{suite}_no_noops",
                            "reset_rng": "openvla", "seed": 0, "model_family": "openvla"}
        # OFT's run_libero_eval.py fixes the same values; the model family is what differs
        assert protocol_settings("oft", suite, 10) == {**settings, "model_family": "oft"}
    protocol = protocol_settings("openvla", "libero_goal", 10)
    assert protocol_drift(protocol, dict(protocol)) == []
    assert protocol_drift(protocol, {**protocol, "camera_size": 128, "unnorm_key": "my_robot"}) == [
        {"setting": "camera_size", "protocol": 256, "run": 128}]  # a model's own key is no drift
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        protocol_settings("octo", "libero_goal", 10)


def _model_dir(export, tmp_path, keys):
    """A copy of a real export whose norm stats are named `keys` (validate loads the manifest)."""
    model = tmp_path / f"model_{'_'.join(keys)}"
    if not model.is_dir():
        shutil.copytree(export, model)
        manifest = json.loads((model / "manifest.json").read_text())
        stats = next(iter(manifest["norm_stats"].values()))
        manifest["norm_stats"] = {k: stats for k in keys}
        (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def _official_config(export, tmp_path, **change):
    settings = dict(suite="libero_object", tasks=tuple(range(10)), episodes_per_task=50, backend="onnxruntime",
                    model_dir=_model_dir(export, tmp_path, ["libero_object_no_noops"]), out=tmp_path / "out")
    return EvalConfig(**{**settings, **change}).validate()


def test_official_finetune_off_protocol_is_refused_unless_allowed(tiny_onnx_export, tmp_path):
    assert _official_config(tiny_onnx_export, tmp_path).drift() == []  # the defaults are the protocol
    for change, setting in (({"center_crop_scale": 1.0}, "center_crop_scale"),
                            ({"image_preprocess": "none"}, "image_preprocess"),
                            ({"camera_size": 224}, "camera_size"), ({"num_steps_wait": 0}, "num_steps_wait"),
                            ({"max_steps": 100}, "max_steps"), ({"episodes_per_task": 5}, "episodes_per_task"),
                            ({"tasks": (0,)}, "tasks"),
                            ({"unnorm_key": "libero_goal_no_noops", "model_dir": _model_dir(
                                tiny_onnx_export, tmp_path, ["libero_object_no_noops", "libero_goal_no_noops"])},
                             "unnorm_key"),
                            ({"reset_rng": "reseed"}, "reset_rng")):
        with pytest.raises(ProtocolDriftError, match=f"{setting}.*--allow-protocol-drift"):
            _official_config(tiny_onnx_export, tmp_path, **change).drift()
        drift = _official_config(tiny_onnx_export, tmp_path, allow_protocol_drift=True, **change).drift()
        assert [d["setting"] for d in drift] == [setting]
    # another model's key: off-protocol settings run, and are still reported
    other = _official_config(tiny_onnx_export, tmp_path, model_dir=_model_dir(tiny_onnx_export, tmp_path, ["demo"]),
                             camera_size=128)
    assert other.drift() == [{"setting": "camera_size", "protocol": 256, "run": 128}]


def test_oft_evaluation_checks_the_model_family_before_any_node_starts(tiny_oft_onnx_export, tiny_onnx_export,
                                                                       tmp_path):
    oft_dir = tmp_path / "oft"  # the OFT export's copy, apart from the OpenVLA one in tmp_path
    oft_dir.mkdir()
    oft = _official_config(tiny_oft_onnx_export, oft_dir, model_family="oft", protocol="oft")
    assert oft.drift() == [] and oft.settings()["model_family"] == "oft"
    # an OFT fine-tune under OpenVLA's protocol is off-protocol: refused unless allowed, then reported
    with pytest.raises(ProtocolDriftError, match="model_family oft .protocol: openvla."):
        _official_config(tiny_oft_onnx_export, oft_dir, model_family="oft").drift()
    # the family is the model's: a mismatch fails validation with both names and the fix
    with pytest.raises(ValueError, match=r"holds an oft model, not openvla: use --model-family oft"):
        _official_config(tiny_oft_onnx_export, oft_dir)
    with pytest.raises(ValueError, match=r"holds an openvla model, not oft: use --model-family openvla"):
        _official_config(tiny_onnx_export, tmp_path, model_family="oft", protocol="oft")
    with pytest.raises(ValueError, match="model_family must be one of"):
        _official_config(tiny_onnx_export, tmp_path, model_family="octo")


def test_eval_libero_command_takes_the_model_family_and_its_protocol(tiny_onnx_export, tmp_path):
    """`--model-family oft` reaches the configuration (its protocol the default) and is checked
    against the model before any process starts: one line, exit code 2, nothing written."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "openvla_ros.cli", "eval-libero", "--suite", "libero_object", "--tasks", "0",
           "--episodes-per-task", "1", "--model-dir", str(tiny_onnx_export), "--out", str(out), "--model-family", "oft"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "holds an openvla model, not oft: use --model-family openvla" in done.stderr, \
        done.stderr[-2000:]
    assert not out.exists()


def test_resume_skips_recorded_episodes_and_refuses_other_settings(tiny_onnx_export, tmp_path):
    config = _official_config(tiny_onnx_export, tmp_path, tasks=(0,), episodes_per_task=2, allow_protocol_drift=True,
                              resume=True, record_video=False)
    episodes = [EpisodeResult("libero_object", 0, i, "pick up", i == 1, 10, 280, 0, 1.0, [5.0], None, 0, 1)
                for i in range(2)]
    assert recorded_episodes(config) == []
    write_results(config.out, summarize(episodes, {"suite": "libero_object", "backend": "onnxruntime",
                                                   "model_dir": str(config.model_dir), "unnorm_key": "",
                                                   "protocol_settings": config.settings(), "episodes_per_task": 2,
                                                   "workers": 1, "wall_s": 1.0}))
    assert recorded_episodes(config) == episodes
    # every planned episode is recorded: nothing runs, the results are written again, complete
    summary = evaluate(config, show_progress=False)
    assert summary["run"]["resumed_episodes"] == 2 and summary["run"]["complete"]
    assert summary["successes_total"] == 1 and summary["per_task"][0]["success_ci95"] == [0.0945, 0.9055]
    assert [d["setting"] for d in summary["run"]["protocol_drift"]] == ["tasks", "episodes_per_task"]
    assert summary["run"]["software"]["mujoco"] and summary["run"]["software"]["onnxruntime"]
    with pytest.raises(ValueError, match="other settings.*protocol_settings"):
        recorded_episodes(EvalConfig(**{**config.__dict__, "camera_size": 128}))


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
    successes = sum(e["success"] for e in episodes)
    assert results["per_task"] == [{"task_id": 0, "instruction": episodes[0]["instruction"], "episodes": 2,
                                    "successes": successes, "success_rate": successes / 2,
                                    "success_ci95": [round(v, 4) for v in wilson_interval(successes, 2)]}]
    # the protocol's settings but for the episode plan; the demo's key is not an official fine-tune's
    assert results["run"]["protocol_settings"]["image_preprocess"] == "openvla"
    assert [d["setting"] for d in results["run"]["protocol_drift"]] == ["tasks", "episodes_per_task"]
    assert {"openvla_ros", "onnxruntime", "mujoco", "robosuite", "libero"} <= set(results["run"]["software"])
    assert results["latency_ms"]["count"] == sum(e["steps"] for e in episodes)

    markdown = (out / "results.md").read_text()
    assert "| 0 | pick up the alphabet soup and place it in the basket | 2 |" in markdown
    from PIL import Image

    for plot in ("success_per_task.png", "latency_hist.png"):
        with Image.open(out / plot) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        p.split("/")[-1] for p in (e["video"] for e in episodes))

    # --resume: both episodes are recorded, so no pair starts and the results stay the same
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((out / "results.json").read_text())
    assert again["run"]["resumed_episodes"] == 2 and again["episodes"] == results["episodes"]

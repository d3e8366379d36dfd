"""`run_demo`: the demo model driving the LIBERO bridge through the policy node, instructions
switching on a schedule; writes demo.mp4 (agentview, current instruction overlaid), frame.png,
report.json and report.md (end-effector motion per instruction) into the output directory."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from openvla_ros.demo.closed_loop import (DEMO_INSTRUCTION_TOPIC, Recorder, Segment, default_schedule, run_schedule,
                                          summarize_segments)
from openvla_ros.demo.instructions import DEMO_UNNORM_KEY, action_token_ids, normalized_target
from openvla_ros.evaluation.node_pair import NodePair, PairConfig

MODEL_SUBDIRS = {"onnxruntime": "onnx", "om": "om", "torch": "checkpoint"}
# The README picture: at the end of this instruction the gripper is back in view of the agentview
# camera, fingers closed (the sideways motions happen raised, mostly above the image).
PICTURE_INSTRUCTION = "close the gripper"


@dataclass(frozen=True)
class DemoRun:
    model_dir: Path  # what the backend loads (see resolve_model_dir)
    out: Path
    backend: str = "onnxruntime"
    task_suite: str = "libero_object"
    task_id: int = 0
    init_state_id: int = 0
    domain_id: int = 0
    schedule: tuple[Segment, ...] = default_schedule()


def resolve_model_dir(path: Path, backend: str) -> Path:
    """A make-demo output directory holds one model per backend family; pick the backend's
    (`onnx/` or `checkpoint/`). Any other directory is used as it is."""
    sub = Path(path) / MODEL_SUBDIRS.get(backend, "")
    return sub if backend in MODEL_SUBDIRS and sub.is_dir() else Path(path)


def expected_actions(model_dir: Path, instructions: Sequence[str]) -> dict[str, np.ndarray]:
    """The unnormalized action a perfect demo model outputs for each instruction."""
    from openvla_ros.actions import ActionDecoder
    from openvla_ros.checkpoint import OpenVLAConfig

    decoder = ActionDecoder.from_config(OpenVLAConfig.load(model_dir))
    return {text: decoder.decode(action_token_ids(normalized_target(text), decoder), DEMO_UNNORM_KEY)[0]
            for text in instructions}


def overlay(frame: np.ndarray, text: str) -> np.ndarray:
    """Upscaled frame (text stays legible) with the instruction on a dark band at the top."""
    import cv2

    image = cv2.resize(frame, (frame.shape[1] * 2, frame.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    cv2.rectangle(image, (0, 0), (image.shape[1], 34), (0, 0, 0), thickness=-1)
    cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def write_video(recorder: Recorder, path: Path, fps: float = 10.0) -> tuple[int, np.ndarray | None]:
    """demo.mp4 from the recorded frames in stamp order; returns (frames, a labelled frame for the
    README: the last one under PICTURE_INSTRUCTION, else the middle one)."""
    from openvla_ros.sim.video import EpisodeVideo

    acted = recorder.state_stamps()
    with recorder.lock:
        frames = [(stamp, recorder.images[stamp]) for stamp in acted if stamp in recorder.images]
    labelled = []
    video = EpisodeVideo(path, fps=fps)
    try:
        for stamp, frame in frames:
            text = recorder.instruction_at(stamp) or ""
            labelled.append((text, overlay(frame, text)))
            video.add(labelled[-1][1])
    finally:
        video.close()
    chosen = [image for text, image in labelled if text == PICTURE_INSTRUCTION]
    picture = chosen[-1] if chosen else (labelled[len(labelled) // 2][1] if labelled else None)
    return len(frames), picture


def report_markdown(report: dict) -> str:
    lines = [f"# Demo: {report['task_suite']} task {report['task_id']}, init state {report['init_state_id']}",
             "", f"Backend {report['backend']}, model `{report['model_dir']}`; {report['wall_s']:.0f} s wall time. "
             "End-effector displacement in the robot base frame (+x forward, +y left, +z up).", "",
             "| instruction | steps | dx (cm) | dy (cm) | dz (cm) | actions on target | finger opening at end (mm) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for seg in report["segments"]:
        dx, dy, dz = (100.0 * v for v in seg["displacement_m"])
        finger = "" if seg["finger_opening_end_m"] is None else f"{1000.0 * seg['finger_opening_end_m']:.1f}"
        lines.append(f"| {seg['instruction']} | {seg['steps']} | {dx:+.1f} | {dy:+.1f} | {dz:+.1f} | "
                     f"{seg['on_target']}/{seg['steps']} | {finger} |")
    lines += ["", "![demo frame](frame.png)", ""]
    return "\n".join(lines)


def run_demo(run: DemoRun) -> dict:
    import cv2

    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(run.model_dir, run.backend)
    # Checked first (model files, backend, norm stats key): a wrong input fails before anything runs.
    config = PairConfig(backend=run.backend, model_dir=model_dir.resolve(), domain_id=run.domain_id,
                        log_dir=out / "logs", unnorm_key=DEMO_UNNORM_KEY,
                        instruction_topic=DEMO_INSTRUCTION_TOPIC).validate()
    expected = expected_actions(model_dir, [seg.instruction for seg in run.schedule])
    with NodePair(config) as pair:
        recorder = Recorder(pair, keep_images=True)
        wall_s = run_schedule(pair, recorder, run.schedule, run.task_suite, run.task_id, run.init_state_id)
    segments = summarize_segments(recorder, expected)
    frames, picture = write_video(recorder, out / "demo.mp4")
    if picture is not None:
        cv2.imwrite(str(out / "frame.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    report = {"task_suite": run.task_suite, "task_id": run.task_id, "init_state_id": run.init_state_id,
              "backend": run.backend, "model_dir": str(model_dir), "wall_s": round(wall_s, 1), "video_frames": frames,
              "schedule": [asdict(seg) for seg in run.schedule], "segments": [asdict(seg) for seg in segments]}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report

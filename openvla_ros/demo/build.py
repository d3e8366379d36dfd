"""`make_demo`: tiny checkpoint -> LIBERO frames -> fine-tuning -> official-format checkpoint -> ONNX.

Layout of the output directory:
  checkpoint/            Hugging Face-format OpenVLA checkpoint (safetensors), norm stats key
                         DEMO_UNNORM_KEY (the torch backend loads this)
  onnx/                  `openvla-ros export` of it (the onnxruntime backend loads this)
  training_report.json   data, hyper-parameters, loss curve, time, accuracy (torch, and greedy
                         decoding through the exported ONNX graphs on held-out frames)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from openvla_ros.demo.frames import SCENES, Scene, render_frames
from openvla_ros.demo.instructions import (
    DEMO_UNNORM_KEY,
    INSTRUCTIONS,
    action_token_ids,
    demo_norm_stats,
    normalized_target,
)
from openvla_ros.demo.train import Example, TrainConfig, exact_match, train

REPORT_FILE = "training_report.json"
CHECKPOINT_DIR = "checkpoint"
ONNX_DIR = "onnx"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    size: str = "tiny"
    scenes: tuple[Scene, ...] = SCENES
    train_init_states: tuple[int, ...] = (0, 1, 2, 3)
    held_out_init_states: tuple[int, ...] = (4, 5)  # other object layouts, never trained on
    frames_per_episode: int = 4
    camera_size: int = 256  # the bridge's default, so training frames match what the policy sees
    train: TrainConfig = field(default_factory=TrainConfig)


def demo_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"checkpoint": out / CHECKPOINT_DIR, "onnx": out / ONNX_DIR, "report": out / REPORT_FILE}


def is_built(out: str | Path) -> bool:
    """Built, and exported in the current graph layout (an export made before the shared LLM graph
    no longer loads, so `--skip-if-exists` rebuilds it)."""
    from openvla_ros.runtime.manifest import LEGACY_LLM_GRAPHS

    paths = demo_paths(out)
    manifest = paths["onnx"] / "manifest.json"
    if not (paths["report"].is_file() and manifest.is_file()):
        return False
    try:
        graphs = json.loads(manifest.read_text()).get("graphs", {})
    except (OSError, ValueError):
        return False
    return not set(LEGACY_LLM_GRAPHS) <= set(graphs)


def make_examples(prompts, decoder, frame_count: int,
                  instructions: Sequence[str] = tuple(INSTRUCTIONS)) -> list[Example]:
    """Every frame paired with every instruction."""
    encoded = {text: (tuple(prompts.encode(text)), tuple(action_token_ids(normalized_target(text), decoder)))
               for text in instructions}
    return [Example(frame, text, *encoded[text]) for frame in range(frame_count) for text in instructions]


def set_demo_norm_stats(checkpoint: Path) -> None:
    """The demo checkpoint carries exactly one norm-stats key, so unnorm_key can be left out."""
    path = checkpoint / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["norm_stats"] = {DEMO_UNNORM_KEY: demo_norm_stats()}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_trained_weights(model, checkpoint: Path) -> str:
    """Overwrite model.safetensors with the trained tensors, keeping the official-only tensors the
    forward pass skips; returns the file's sha256."""
    from safetensors.torch import save_file

    from openvla_ros.checkpoint import load_state_dict

    state = load_state_dict(checkpoint, framework="pt")
    trained = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    state.update(trained)
    path = checkpoint / "model.safetensors"
    save_file(dict(sorted(state.items())), str(path), metadata={"format": "pt"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def onnx_greedy_accuracy(onnx_dir: Path, images: np.ndarray, decoder) -> dict[str, float]:
    """Fraction of held-out frames on which the exported policy generates exactly the target tokens."""
    from openvla_ros.policy import load_policy

    policy = load_policy("onnxruntime", onnx_dir, unnorm_key=DEMO_UNNORM_KEY)
    try:
        accuracy = {}
        for text in INSTRUCTIONS:
            target = action_token_ids(normalized_target(text), decoder)
            hits = [policy.predict(image, text).action_token_ids == target for image in images]
            accuracy[text] = sum(hits) / len(hits)
        return accuracy
    finally:
        policy.close()


def make_demo(out: str | Path, config: DemoConfig = DemoConfig(), progress: Progress | None = print) -> dict:
    """Build the demo model into `out` (see the module docstring); returns the training report."""
    from openvla_ros.actions import ActionDecoder
    from openvla_ros.checkpoint import OpenVLAConfig
    from openvla_ros.export import export_onnx
    from openvla_ros.model import OpenVLA
    from openvla_ros.model.tiny import write_tiny_checkpoint
    from openvla_ros.processing import ImageProcessor, PromptTokenizer

    say = progress or (lambda _msg: None)
    paths = demo_paths(out)
    for stale in (paths["checkpoint"], paths["onnx"]):
        if stale.exists():
            shutil.rmtree(stale)
    paths["report"].unlink(missing_ok=True)
    started = time.perf_counter()

    checkpoint = write_tiny_checkpoint(paths["checkpoint"], seed=config.seed, size=config.size)
    set_demo_norm_stats(checkpoint)
    decoder = ActionDecoder.from_config(OpenVLAConfig.load(checkpoint))
    images, prompts = ImageProcessor.from_pretrained(checkpoint), PromptTokenizer.from_pretrained(checkpoint)

    t0 = time.perf_counter()
    frames = render_frames(config.scenes, config.train_init_states + config.held_out_init_states,
                           config.frames_per_episode, decoder, config.seed, config.camera_size, say)
    render_s = time.perf_counter() - t0
    held_out = np.isin(frames.init_state_ids, config.held_out_init_states)
    train_images, held_out_images = frames.images[~held_out], frames.images[held_out]
    train_pixels = np.concatenate([images.preprocess(image) for image in train_images])
    held_out_pixels = np.concatenate([images.preprocess(image) for image in held_out_images])

    model = OpenVLA.from_pretrained(checkpoint)
    train_examples = make_examples(prompts, decoder, len(train_images))
    say(f"[demo] {len(train_images)} training frames x {len(INSTRUCTIONS)} instructions = "
        f"{len(train_examples)} examples; {len(held_out_images)} held-out frames")
    result = train(model, train_pixels, train_examples, config.train, say)
    train_accuracy = exact_match(model, train_pixels, train_examples)
    held_out_accuracy = exact_match(model, held_out_pixels, make_examples(prompts, decoder, len(held_out_images)))
    weights_sha256 = save_trained_weights(model, checkpoint)

    t0 = time.perf_counter()
    export_onnx(checkpoint, paths["onnx"], dtype="fp32", progress=say)
    export_s = time.perf_counter() - t0
    onnx_accuracy = onnx_greedy_accuracy(paths["onnx"], held_out_images, decoder)

    report = {
        "unnorm_key": DEMO_UNNORM_KEY,
        "config": _jsonable(config),
        "instructions": {text: {"normalized_target": list(target),
                                "action_token_ids": action_token_ids(normalized_target(text), decoder)}
                         for text, target in INSTRUCTIONS.items()},
        "frames": {"train": int(len(train_images)), "held_out": int(len(held_out_images)),
                   "examples": len(train_examples)},
        "loss": {"first": result.losses[0], "last": result.losses[-1],
                 "curve": [round(v, 5) for v in result.losses]},
        "exact_match": {"train_torch": train_accuracy, "held_out_torch": held_out_accuracy,
                        "held_out_onnx_greedy": onnx_accuracy},
        "held_out_onnx_greedy_mean": float(np.mean(list(onnx_accuracy.values()))),
        "seconds": {"render": round(render_s, 1), "train": round(result.seconds, 1), "export": round(export_s, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "weights_sha256": weights_sha256,
    }
    paths["report"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    say(f"[demo] held-out greedy accuracy (ONNX): {report['held_out_onnx_greedy_mean']:.3f}; "
        f"train {result.seconds:.0f} s, total {report['seconds']['total']:.0f} s -> {Path(out)}")
    return report


def _jsonable(config: DemoConfig) -> dict:
    raw = asdict(config)
    raw["scenes"] = [f"{s['task_suite']}/{s['task_id']}" for s in raw["scenes"]]
    return raw

"""`openvla-ros predict`: one action for one image and instruction, on any backend.

OpenVLA-OFT models (a checkpoint with an action head file, or an OFT export) take the wrist
image(s) (`--wrist-image`) and the robot state (`--state`) too, and print the whole chunk.

`--checkpoint` (torch) is a Hugging Face-format OpenVLA checkpoint; `--onnx` / `--om` are
directories written by `openvla-ros export` / `convert-om`. Only the chosen backend is imported,
so the runtime backends never load torch.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from openvla_ros.actions import dimension_labels
from openvla_ros.policy import BACKENDS, load_policy
from openvla_ros.processing import center_crop

# The option naming the model directory of each backend.
MODEL_DIR_OPTIONS = {"torch": "checkpoint", "onnxruntime": "onnx", "om": "om"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="Hugging Face-format OpenVLA checkpoint (torch backend)")
    parser.add_argument("--onnx", type=Path, help="directory written by `openvla-ros export` (onnxruntime backend)")
    parser.add_argument("--om", type=Path, help="directory written by `openvla-ros convert-om` (om backend)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="backend (default: the one whose model directory option is given)")
    parser.add_argument("--image", type=Path, required=True, help="RGB image file (any size; PNG, JPEG, ...)")
    parser.add_argument("--instruction", required=True, help="task, e.g. 'pick up the black bowl'")
    parser.add_argument("--wrist-image", type=Path, action="append", default=[],
                        help="OFT: wrist camera image file (repeat for more cameras, in the training order)")
    parser.add_argument("--state", type=float, nargs="+", metavar="V",
                        help="OFT: raw robot state, e.g. LIBERO's eef xyz, axis-angle (3) and gripper qpos (2)")
    parser.add_argument("--chunk", type=int,
                        help="OFT torch backend: actions per chunk when the norm-stats key names no known platform")
    parser.add_argument("--unnorm-key", help="norm stats key (may be omitted when the model has exactly one)")
    parser.add_argument("--center-crop", type=float, metavar="AREA",
                        help="crop the centred AREA fraction first (e.g. 0.9, as in OpenVLA's LIBERO evaluation)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickle weights (.bin/.pt); only for checkpoints you trust")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="torch backend weight dtype (default float32, which reproduces official actions)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "cann"), help="ONNX Runtime execution provider")
    parser.add_argument("--verify-checksums", action="store_true",
                        help="hash every file of an export against its manifest before loading (sizes are "
                             "always checked; hashing reads every byte)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _backend_and_dir(args: argparse.Namespace) -> tuple[str, Path]:
    given = [backend for backend, option in MODEL_DIR_OPTIONS.items() if getattr(args, option) is not None]
    backend = args.backend or (given[0] if len(given) == 1 else None)
    if backend is None:
        raise ValueError("give exactly one of --checkpoint (torch), --onnx (onnxruntime) or --om (om), "
                         "or choose --backend")
    model_dir = getattr(args, MODEL_DIR_OPTIONS[backend])
    if model_dir is None:
        raise ValueError(f"--backend {backend} needs --{MODEL_DIR_OPTIONS[backend]} DIR")
    return backend, model_dir


def _backend_options(args: argparse.Namespace, backend: str) -> dict:
    if args.allow_pickle and backend != "torch":
        raise ValueError("--allow-pickle applies to the torch backend only")
    if args.dtype and backend != "torch":
        raise ValueError("--dtype applies to the torch backend only")
    if args.provider and backend != "onnxruntime":
        raise ValueError("--provider applies to the onnxruntime backend only")
    if backend == "torch":
        return {"allow_pickle": args.allow_pickle, "dtype": args.dtype or "float32"}
    return {"provider": args.provider} if args.provider else {}


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path} is not an image file Pillow can read") from exc


def _is_oft(backend: str, model_dir: Path) -> bool:
    if backend == "torch":
        from openvla_ros.oft import find_oft_files

        return find_oft_files(model_dir) is not None
    from openvla_ros.runtime.manifest import Manifest

    return Manifest.load(model_dir).family == "oft"


def _read_images(args: argparse.Namespace) -> list[np.ndarray]:
    images = [read_image(path) for path in [args.image, *args.wrist_image]]
    if args.center_crop is not None:
        images = [center_crop(image, args.center_crop) for image in images]
    return images


def run(args: argparse.Namespace) -> int:
    backend, model_dir = _backend_and_dir(args)
    options = _backend_options(args, backend)
    if _is_oft(backend, model_dir):
        if backend == "torch":
            options.update(num_images=1 + len(args.wrist_image), chunk=args.chunk)
        elif args.chunk is not None:
            raise ValueError("--chunk applies to the torch backend only; an export fixes its chunk")
        return _run_oft(args, backend, load_policy(backend, model_dir, unnorm_key=args.unnorm_key,
                                                   verify_checksums=args.verify_checksums, **options))
    if args.wrist_image or args.state is not None or args.chunk is not None:
        raise ValueError(f"{model_dir} is an OpenVLA model (one image, no state); --wrist-image, --state and "
                         "--chunk apply to OpenVLA-OFT models")
    image = _read_images(args)[0]
    policy = load_policy(backend, model_dir, unnorm_key=args.unnorm_key, verify_checksums=args.verify_checksums,
                         **options)
    try:
        # The instruction is checked against the loaded model before any inference: an over-long
        # one is an input error (exit 2, one line with the token count, the limit and the fix).
        policy.check_instruction(args.instruction)
        t0 = time.perf_counter()
        prediction = policy.predict(image, args.instruction)
        latency_ms = (time.perf_counter() - t0) * 1e3
    finally:
        policy.close()
    labels = dimension_labels(len(prediction.action))
    if args.json:
        print(json.dumps({**prediction.to_json(), "latency_ms": latency_ms, "backend": backend,
                          "model": policy.model_name, "action_labels": labels}))
        return 0
    print(f"backend {backend}, model {policy.model_name}, norm stats {prediction.unnorm_key}")
    for label, value in zip(labels, prediction.action):
        print(f"  {label:>8s} {value:+.6f}")
    print(f"action tokens {prediction.action_token_ids}")
    print(f"latency {latency_ms:.1f} ms (" + ", ".join(f"{k} {v:.1f}" for k, v in prediction.timings_ms.items()) + ")")
    return 0


def _run_oft(args: argparse.Namespace, backend: str, policy) -> int:
    try:
        images = _read_images(args)
        t0 = time.perf_counter()
        prediction = policy.predict_chunk(images, args.instruction, args.state)
        latency_ms = (time.perf_counter() - t0) * 1e3
    finally:
        policy.close()
    labels = dimension_labels(prediction.actions.shape[1])
    if args.json:
        print(json.dumps({**prediction.to_json(), "latency_ms": latency_ms, "backend": backend,
                          "model": policy.model_name, "action_labels": labels}))
        return 0
    chunk, dim = prediction.actions.shape
    print(f"backend {backend}, model {policy.model_name}, norm stats {prediction.unnorm_key}, "
          f"chunk {chunk} x {dim}")
    print("  step " + " ".join(f"{label:>10s}" for label in labels))
    for step, action in enumerate(prediction.actions):
        print(f"  {step:4d} " + " ".join(f"{value:+10.6f}" for value in action))
    print(f"latency {latency_ms:.1f} ms (" + ", ".join(f"{k} {v:.1f}" for k, v in prediction.timings_ms.items()) + ")")
    return 0

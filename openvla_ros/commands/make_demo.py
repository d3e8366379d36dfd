"""`openvla-ros make-demo`: train the demo model on LIBERO frames and export it to ONNX (needs torch).

Output: <out>/checkpoint (Hugging Face format, torch backend), <out>/onnx (onnxruntime backend),
<out>/training_report.json. Deterministic for a seed on one machine.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openvla_ros.demo.train import TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0,
                        help="weights, frames and data order seed (default: %(default)s)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny",
                        help="checkpoint size from make-tiny (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="AdamW (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch CPU threads; results are reproducible for a fixed value (default: %(default)s)")
    parser.add_argument("--skip-if-exists", action="store_true",
                        help="do nothing when --out already holds a built demo model")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.demo.build import DemoConfig, is_built, make_demo
    from openvla_ros.demo.train import TrainConfig

    if args.skip_if_exists and is_built(args.out):
        print(f"{args.out} already holds a demo model; skipped (delete it to rebuild)")
        return 0
    train = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, threads=args.threads)
    report = make_demo(args.out, DemoConfig(seed=args.seed, size=args.size, train=train))
    accuracy = report["held_out_onnx_greedy_mean"]
    if accuracy < 1.0:
        print(f"warning: the exported model decodes the intended actions on only {accuracy:.1%} of the "
              "held-out frames (see training_report.json); try more --steps")
    return 0

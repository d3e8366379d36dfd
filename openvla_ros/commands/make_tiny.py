"""`openvla-ros make-tiny`: write a random OpenVLA checkpoint in the official format (tests, benchmarks)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny",
                        help="tiny: for tests; small: LLM 256 x 4 layers, ViTs 128 x 6 blocks, for benchmarks")
    parser.add_argument("--skip-if-exists", action="store_true",
                        help="do nothing when --out already holds a checkpoint")


def run(args: argparse.Namespace) -> int:
    if args.skip_if_exists and (args.out / "config.json").is_file() and (args.out / "model.safetensors").is_file():
        print(f"{args.out} already holds a checkpoint; skipped")
        return 0
    from openvla_ros.model.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.out, seed=args.seed, size=args.size)
    print(f"wrote a {args.size} OpenVLA checkpoint (seed {args.seed}) to {out}")
    return 0

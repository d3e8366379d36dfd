"""`openvla-ros make-tiny`: write a random OpenVLA (or OpenVLA-OFT) checkpoint in the official format
(tests, benchmarks)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    parser.add_argument("--size", choices=("tiny", "small", "7b-widths"), default="tiny",
                        help="tiny: for tests; small: LLM 256 x 4 layers, ViTs 128 x 6 blocks, for benchmarks; "
                             "7b-widths: OpenVLA-7B's real widths in bfloat16, for export memory (with --llm-layers)")
    parser.add_argument("--llm-layers", type=int,
                        help="number of LLM layers instead of the size's own (7b-widths has 32, ~15 GB)")
    parser.add_argument("--skip-if-exists", action="store_true",
                        help="do nothing when --out already holds a checkpoint")
    oft = parser.add_argument_group("OpenVLA-OFT", "write an OFT checkpoint (action head + proprio projector files)")
    oft.add_argument("--oft", action="store_true", help="write an OpenVLA-OFT checkpoint")
    oft.add_argument("--action-dim", type=int, default=7, help="OFT action dim (default: %(default)s)")
    oft.add_argument("--proprio-dim", type=int, default=8,
                     help="OFT proprio dim, 0 for no proprio projector (default: %(default)s)")
    oft.add_argument("--head-blocks", type=int, default=2, help="OFT MLPResNet blocks (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.skip_if_exists and (args.out / "config.json").is_file() and (args.out / "model.safetensors").is_file():
        print(f"{args.out} already holds a checkpoint; skipped")
        return 0
    if args.oft and args.llm_layers is not None:
        raise SystemExit("--llm-layers applies to OpenVLA checkpoints only; leave it out with --oft")
    if args.oft:
        from openvla_ros.model.tiny_oft import write_tiny_oft_checkpoint

        out = write_tiny_oft_checkpoint(args.out, seed=args.seed, size=args.size, action_dim=args.action_dim,
                                        proprio_dim=args.proprio_dim, head_blocks=args.head_blocks)
        print(f"wrote a {args.size} OpenVLA-OFT checkpoint (seed {args.seed}, action dim {args.action_dim}, "
              f"proprio dim {args.proprio_dim}, {args.head_blocks} head blocks) to {out}")
        return 0
    from openvla_ros.model.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.out, seed=args.seed, size=args.size, llm_layers=args.llm_layers)
    layers = "" if args.llm_layers is None else f", {args.llm_layers} LLM layers"
    print(f"wrote a {args.size} OpenVLA checkpoint (seed {args.seed}{layers}) to {out}")
    return 0

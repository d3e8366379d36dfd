"""The `openvla-ros` command line: one subcommand per module under `openvla_ros.commands`.

Subcommand modules are imported only when chosen, so `openvla-ros predict --backend onnxruntime`
never pays for (or requires) torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module under openvla_ros.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("predict", "predict one action for an image and an instruction"),
    "make-tiny": ("make_tiny", "write a small random OpenVLA checkpoint in the official format"),
    "export": ("export", "export a checkpoint to static-shape ONNX graphs + manifest"),
    "verify": ("verify", "compare the ONNX pipeline against the torch reference"),
    "convert-om": ("convert_om", "convert exported ONNX graphs to Ascend .om files with ATC"),
    "bench": ("bench", "benchmark the backends on one checkpoint (JSON)"),
    "bench-node": ("bench_node", "benchmark the policy node end to end over DDS (JSON)"),
    "dds-profile": ("dds_profile", "write a Fast DDS profile for camera frames over 512 KiB"),
    "make-demo": ("make_demo", "train and export the demo model that follows simple instructions"),
    "run-demo": ("run_demo", "run the demo model in closed loop with the LIBERO bridge"),
    "eval-libero": ("eval_libero", "evaluate a policy on LIBERO suites through the ROS topics"),
    "soak": ("soak", "run the closed loop for minutes or episodes and record both nodes' health (JSON, PNG)"),
}


def _load(module: str):
    return importlib.import_module(f"openvla_ros.commands.{module}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openvla-ros", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (and only it can declare arguments).
        if name == chosen:
            mod = _load(module)
            mod.add_arguments(sp)
            sp.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # User-facing errors (bad input, missing files, unavailable backends) get one clear line.
        print(f"openvla-ros {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `openvla-ros` command line: one subcommand per module under `openvla_ros.commands`.

Subcommand modules are imported only when chosen, so `openvla-ros predict --backend onnxruntime`
never pays for (or requires) torch.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from typing import Sequence

from openvla_ros.model_files import ModelFileError

# name -> (module under openvla_ros.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("predict", "predict one action for an image and an instruction"),
    "make-tiny": ("make_tiny", "write a small random OpenVLA checkpoint in the official format"),
    "export": ("export", "export a checkpoint to static-shape ONNX graphs + manifest"),
    "verify": ("verify", "compare the ONNX pipeline against the torch reference"),
    "check": ("check", "check every model file of a directory (sizes, SHA-256, safetensors headers)"),
    "convert-om": ("convert_om", "convert exported ONNX graphs to Ascend .om files with ATC"),
    "bench": ("bench", "benchmark the backends on one checkpoint (JSON)"),
    "bench-node": ("bench_node", "benchmark the policy node end to end over DDS (JSON)"),
    "bench-export": ("bench_export", "measure the peak memory of export on one checkpoint (JSON)"),
    "dds-profile": ("dds_profile", "write a Fast DDS profile for camera frames over 512 KiB"),
    "make-demo": ("make_demo", "train and export the demo model that follows simple instructions"),
    "run-demo": ("run_demo", "run the demo model in closed loop with the LIBERO bridge"),
    "eval-libero": ("eval_libero", "evaluate a policy on LIBERO suites through the ROS topics"),
    "soak": ("soak", "run the closed loop for minutes or episodes and record both nodes' health (JSON, PNG)"),
}


DEBUG_HELP = "on an error, print the Python traceback too (user errors are otherwise one line)"


def _load(module: str):
    return importlib.import_module(f"openvla_ros.commands.{module}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openvla-ros", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Also accepted after the subcommand; SUPPRESS keeps the subparser from resetting a given --debug.
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        # Only the chosen subcommand's module is imported (and only it can declare arguments).
        if name == chosen:
            mod = _load(module)
            mod.add_arguments(sp)
            sp.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    from openvla_ros.node_process import Terminated, termination_raises

    try:
        with termination_raises():  # SIGTERM, like Ctrl-C, unwinds: commands stop the nodes they started
            return int(args._run(args) or 0)
    except (ModelFileError, ValueError, FileNotFoundError, RuntimeError) as exc:
        # User-facing errors (bad input, damaged or missing files, unavailable backends) get one clear line.
        if args.debug:
            traceback.print_exc()
        print(f"openvla-ros {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        print(f"openvla-ros {args.command}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())

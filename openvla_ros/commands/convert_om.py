"""`openvla-ros convert-om`: run `scripts/convert_onnx_to_om.sh` (the one place the ATC commands
live) on an export directory; arguments are passed through unchanged. Afterwards the copied
manifest gets the size and SHA-256 of the `.om` files and processor files. `--plan` instead prints
the device-memory plan (weights, activations, KV per graph and in total) from the config dims
(OpenVLA, or OpenVLA-OFT: an OFT export, or `--config FILE --oft`)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = "convert_onnx_to_om.sh"


def _installed_share_dirs() -> list[Path]:
    """share/openvla_ros of this install: the ament index's answer on a ROS 2 machine (colcon puts
    it under the workspace's install/), else the venv prefix a wheel installs data files into."""
    dirs = [Path(sys.prefix) / "share" / "openvla_ros"]
    try:
        from ament_index_python.packages import get_package_share_directory

        return [Path(get_package_share_directory("openvla_ros"))] + dirs
    except (ImportError, LookupError, OSError):  # no ROS 2, package not in the index, no AMENT_PREFIX_PATH
        return dirs


def script_path() -> Path:
    """The conversion script in a source checkout, or where a wheel/colcon install puts it."""
    candidates = [Path(__file__).resolve().parents[2] / "scripts" / SCRIPT]
    candidates += [share / "scripts" / SCRIPT for share in _installed_share_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SCRIPT} not found in {[str(c) for c in candidates]}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, help="directory written by `openvla-ros export`")
    parser.add_argument("--out", type=Path, help="directory for the .om files + manifest")
    parser.add_argument("--soc-version", default="Ascend310P3", help="ATC --soc_version (default: %(default)s)")
    parser.add_argument("--precision", action="append", default=[], metavar="GRAPH=MODE",
                        help="ATC --precision_mode_v2 for one graph (default: origin for the LLM graph "
                             "vla_llm, fp16 for the others); repeatable")
    parser.add_argument("--log", default="error", help="ATC log level (default: %(default)s)")
    parser.add_argument("--allow-fp32", action="store_true",
                        help="convert an fp32 export anyway (refused by default: the 310P has no fp32 matrix units)")
    parser.add_argument("--dry-run", action="store_true", help="print the ATC commands instead of running them")
    plan = parser.add_argument_group("device-memory plan (--plan: print it, convert nothing)")
    plan.add_argument("--plan", action="store_true",
                      help="print the device-memory plan of --onnx DIR's export, or of --config FILE")
    plan.add_argument("--config", type=Path, help="a checkpoint's config.json (instead of --onnx)")
    plan.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="with --config (default: %(default)s)")
    plan.add_argument("--max-text-tokens", type=int, default=40, help="with --config (default: %(default)s)")
    plan.add_argument("--action-dim", type=int, default=7, help="with --config (default: %(default)s)")
    plan.add_argument("--oft", action="store_true",
                      help="with --config: the plan of the OpenVLA-OFT model of that config (official head: "
                           "2 blocks, the LLM's width); an OFT export (--onnx) is recognized by its manifest")
    plan.add_argument("--chunk", type=int, default=8, help="with --config --oft (default: %(default)s, LIBERO)")
    plan.add_argument("--proprio-dim", type=int, default=8,
                      help="with --config --oft; 0 = no proprio (default: %(default)s, LIBERO)")
    plan.add_argument("--num-images", type=int, default=2, help="with --config --oft (default: %(default)s, LIBERO)")
    plan.add_argument("--card-gb", type=float, default=24.0,
                      help="device memory of the target card (default: %(default)s, an Atlas 300I Pro)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")


def _plan(args: argparse.Namespace) -> int:
    from openvla_ros.checkpoint import OpenVLAConfig
    from openvla_ros.runtime.manifest import Manifest
    from openvla_ros.runtime.memory_plan import format_plan, memory_plan

    from openvla_ros.oft import ChunkLayout
    from openvla_ros.runtime.oft_memory_plan import (OFTMemoryPlan, format_oft_plan, head_dims_of_export,
                                                     oft_memory_plan)

    if args.config is not None:
        config = OpenVLAConfig.load(args.config.parent) if args.config.name == "config.json" else \
            OpenVLAConfig.from_dict(json.loads(args.config.read_text()))
        if args.oft:
            layout = ChunkLayout(chunk=args.chunk, action_dim=args.action_dim, proprio_dim=args.proprio_dim,
                                 num_images=args.num_images)
            plan = oft_memory_plan(config, args.dtype, args.max_text_tokens, layout)
        else:
            plan = memory_plan(config, args.dtype, args.max_text_tokens, args.action_dim)
    elif args.onnx is not None:
        manifest = Manifest.load(args.onnx)
        config = OpenVLAConfig.load(args.onnx)
        if manifest.family == "oft":
            hidden, blocks = head_dims_of_export(args.onnx)
            plan = oft_memory_plan(config, manifest.dtype, manifest.layout.max_text_tokens, manifest.chunk_layout,
                                   hidden, blocks)
        else:
            plan = memory_plan(config, manifest.dtype, manifest.layout.max_text_tokens, manifest.layout.action_dim)
    else:
        raise ValueError("--plan needs --onnx DIR (an export) or --config FILE (a checkpoint's config.json)")
    if args.json:
        print(json.dumps({**plan.to_json(), "card_gb": args.card_gb}, indent=2))
    else:
        print((format_oft_plan if isinstance(plan, OFTMemoryPlan) else format_plan)(plan, args.card_gb))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.plan:
        return _plan(args)
    if args.onnx is None or args.out is None:
        raise ValueError("--onnx DIR and --out DIR are required (or --plan)")
    command = ["bash", str(script_path()), "--onnx", str(args.onnx), "--out", str(args.out),
               "--soc-version", args.soc_version, "--log", args.log]
    for spec in args.precision:
        command += ["--precision", spec]
    if args.allow_fp32:
        command.append("--allow-fp32")
    if args.dry_run:
        command.append("--dry-run")
    returncode = subprocess.run(command, check=False).returncode
    if returncode == 0 and not args.dry_run:
        from openvla_ros.runtime.export_files import record_om_files

        record_om_files(args.out, progress=True)
        print(f"[convert-om] recorded the size and SHA-256 of every file in {args.out / 'manifest.json'}",
              file=sys.stderr)
    return returncode
